"""Backup operations: pg_dump/pg_restore, artifacts, encryption, retention and schedules.

Plain async Python with no Kopf or Kubernetes imports; handlers call these functions and turn
their results and `errors.OperationError`s into status.
"""
