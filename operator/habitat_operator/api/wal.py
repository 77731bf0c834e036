"""Reasons the WAL archive's engines report (replication probes, pg_receivewal, the uploader, fetch,
base backups, recovery planning).

The WalArchive kind reports them as its condition reasons; they are strings, so a kind's own
enum holding the same values compares equal to them.
"""

from enum import StrEnum


class WalReason(StrEnum):
    REPLICATION_REFUSED = "ReplicationRefused"
    SLOT_MISSING = "SlotMissing"
    SEGMENT_MISSING = "SegmentMissing"
    ARCHIVE_CONFLICT = "ArchiveConflict"
    RECEIVER_FAILED = "ReceiverFailed"
    BASE_BACKUP_FAILED = "BaseBackupFailed"
    TARGET_NOT_RECOVERABLE = "TargetNotRecoverable"
