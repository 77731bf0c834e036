"""Reasons of the WAL archive's engines, for the errors they raise (the kind's own enum shares the values)."""

from enum import StrEnum


class ArchiveReason(StrEnum):
    BASE_BACKUP_FAILED = "BaseBackupFailed"
    TARGET_NOT_RECOVERABLE = "TargetNotRecoverable"
    REPLICATION_REFUSED = "ReplicationRefused"
