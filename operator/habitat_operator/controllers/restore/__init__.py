"""Restore: one-shot restores and scheduled drills."""
