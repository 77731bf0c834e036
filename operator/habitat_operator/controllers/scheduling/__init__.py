"""Scheduled kinds: cron arithmetic, one child object per run, and retention of finished runs."""
