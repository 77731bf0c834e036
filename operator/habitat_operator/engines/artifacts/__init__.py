"""Artifacts: all-or-nothing files and directories under a root, and their encryption."""
