"""Backup: one-shot runs and schedules."""
