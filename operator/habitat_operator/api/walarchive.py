"""WalArchive: streams a PostgreSQL server's WAL off site, with base backups, for point-in-time recovery.

The server is anyone's (a managed service, a VM, a chart) as long as it grants a role REPLICATION:
the operator runs `pg_receivewal` on a physical replication slot, uploads every segment (and the
growing one every `partialUploadInterval`) through the Backup's codec, and takes base backups with
`pg_basebackup`. docs/pitr.md has the server's set-up and the sizing of the slot.
"""

import re
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from habitat_operator.api.artifacts import BackupStorage
from habitat_operator.api.backup import Encryption
from habitat_operator.api.common import (
    ApiModel,
    CelRule,
    CronSchedule,
    DatabaseRef,
    Duration,
    KindInfo,
    PrinterColumn,
    ResourceStatus,
    Timestamp,
    TransitionRule,
)
from habitat_operator.api.objectives import Objectives, Recoverability, objectives_rule

# pg_receivewal's segments: a budget smaller than one cannot hold even the segment being written.
MIN_RETAINED_WAL = 16 << 20
MAX_GAPS_LISTED = 5
SLOT_NAME_PATTERN = r"^[a-z0-9_]{1,63}$"

_UNITS = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
BYTE_SIZE_PATTERN = r"^[0-9]{1,9}(B|KiB|MiB|GiB|TiB)?$"
_BYTE_SIZE = re.compile(BYTE_SIZE_PATTERN)


def parse_byte_size(text: str) -> int:
    """ "4GiB" as bytes; ValueError for anything BYTE_SIZE_PATTERN does not match."""
    match = _BYTE_SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size such as 512MiB or 4GiB: {text!r}")
    return int(text.removesuffix(match[1] or "")) * _UNITS[match[1] or ""]


_DIGITS = "int(self.find('^[0-9]+'))"
# The size in whole MiB, in CEL: no unit overflows int64 with at most nine digits.
_MIB = (
    f"(self.endsWith('TiB') ? {_DIGITS} * 1048576 : self.endsWith('GiB') ? {_DIGITS} * 1024"
    f" : self.endsWith('MiB') ? {_DIGITS} : self.endsWith('KiB') ? {_DIGITS} / 1024 : {_DIGITS} / 1048576)"
)

ByteSize = Annotated[
    str,
    Field(pattern=BYTE_SIZE_PATTERN, max_length=16),
    CelRule(
        f"{_MIB} >= {MIN_RETAINED_WAL >> 20}",
        "maxRetainedWal must be at least 16MiB (one WAL segment)",
        lambda text: parse_byte_size(text) >= MIN_RETAINED_WAL,
    ),
]


class WalArchiveReason(StrEnum):
    """Condition and Event reasons of WalArchive's own; the shared ones are in `Reason`, and those of
    its engines (SlotMissing, ReplicationRefused, BaseBackupFailed, ...) in `api.wal.WalReason`."""

    STREAMING = "Streaming"
    GAP_DETECTED = "GapDetected"
    STORAGE_UNREACHABLE = "StorageUnreachable"
    SLOT_RETENTION_EXCEEDED = "SlotRetentionExceeded"
    SLOT_RETENTION_WITHIN_BUDGET = "SlotRetentionWithinBudget"
    BASE_BACKUP_RUNNING = "BaseBackupRunning"
    BASE_BACKUP_SUCCEEDED = "BaseBackupSucceeded"
    RETENTION_APPLIED = "RetentionApplied"
    RETENTION_FAILED = "RetentionFailed"


class WalArchivePhase(StrEnum):
    """Coarse state shown by `kubectl get`."""

    PENDING = "Pending"  # starting, or streaming without a base backup yet: nothing recoverable
    READY = "Ready"  # streaming, and recoverable from its first base backup on
    SUSPENDED = "Suspended"
    STALLED = "Stalled"


class WalCompression(StrEnum):
    """How each WAL object and base backup is compressed by the operator (pg_receivewal's own is off)."""

    ZSTD = "zstd"
    NONE = "none"


class OnExceeded(StrEnum):
    """What happens when the slot holds back more WAL on the server than `maxRetainedWal`."""

    ALERT = "alert"
    DROP = "drop"


class SlotSpec(ApiModel):
    """The physical replication slot that keeps the server's WAL until it is archived."""

    name: str | None = Field(
        None,
        pattern=SLOT_NAME_PATTERN,
        description="Name of the slot; by default habitat_<namespace>_<name> ([a-z0-9_], 63 bytes at most).",
    )
    max_retained_wal: ByteSize = Field(
        "4GiB",
        description=(
            "WAL the slot may hold back on the server (pg_current_wal_lsn() - restart_lsn) before an "
            "Event and the HabitatWalSlotRetentionOverBudget alert, e.g. 4GiB; at least 16MiB."
        ),
    )
    on_exceeded: OnExceeded = Field(
        OnExceeded.ALERT,
        description=(
            "alert: report and keep the slot; drop: drop the slot (a gap in the archive, then a new "
            "base backup) rather than fill the server's disk."
        ),
    )


class BaseBackupRetention(ApiModel):
    """What the archive keeps: the base backups and WAL that the recovery window needs."""

    recovery_window: Duration = Field(
        "7d", description="How far back a point in time stays recoverable, e.g. 7d."
    )


class BaseBackupSpec(ApiModel):
    """When base backups are taken (`pg_basebackup -Ft -X none`), and how long they are kept."""

    schedule: CronSchedule = Field(
        "0 2 * * *", description='Cron schedule (UTC) of base backups after the first, e.g. "0 2 * * *".'
    )
    retention: BaseBackupRetention = Field(
        BaseBackupRetention(), description="The recovery window the archive keeps."
    )


def _slot_name_of(spec: "WalArchiveSpec") -> str | None:
    return spec.slot.name


class WalArchiveSpec(ApiModel):
    """Desired archive: which server, where its WAL and base backups go, and how."""

    # A renamed slot would leave the old one holding the server's WAL for ever.
    cel_rules = (
        TransitionRule(
            "(has(self.slot) && has(self.slot.name) ? self.slot.name : '') =="
            " (has(oldSelf.slot) && has(oldSelf.slot.name) ? oldSelf.slot.name : '')",
            "slot.name cannot be changed; delete the WalArchive (which drops its slot) and create a new one",
            lambda old, new: _slot_name_of(old) == _slot_name_of(new),
        ),
        objectives_rule("WalArchive", "rpo", "a Restore drill of the archive"),
        # Its catalog and segments are rewritten as the archive grows: not append-only yet.
        CelRule(
            "!has(self.storage.s3) || !has(self.storage.s3.objectLock)",
            "storage.s3.objectLock is supported by Backup, not yet by WalArchive",
            lambda spec: spec.storage.s3 is None or spec.storage.s3.object_lock is None,
        ),
    )

    database: DatabaseRef = Field(
        description=(
            "Secret key holding a libpq URI of a role with LOGIN and REPLICATION; its database is where "
            "the SQL probes (the slot's state) connect."
        )
    )
    storage: BackupStorage = Field(description="Where WAL and base backups go: s3 (off site) or filesystem.")
    compression: WalCompression = Field(WalCompression.ZSTD, description="zstd (the default) or none.")
    encryption: Encryption | None = Field(None, description="Encrypt WAL and base backups at rest.")
    slot: SlotSpec = Field(
        default_factory=SlotSpec, description="The replication slot and its budget on the server."
    )
    base_backup: BaseBackupSpec = Field(BaseBackupSpec(), description="Base backups' schedule and retention.")
    partial_upload_interval: Duration = Field(
        "5s",
        description=(
            "How often the segment being written is uploaded as <segment>.partial: the off-site RPO. "
            "Between 1s and 1h."
        ),
    )
    synchronous: bool = Field(
        False,
        description=(
            "pg_receivewal --synchronous: flush and confirm each write, so that a server listing the "
            "archiver in synchronous_standby_names has RPO 0 (docs/pitr.md: cost and risk)."
        ),
    )
    suspend: bool = Field(
        False, description="Stop streaming; the slot stays and keeps WAL on the server until resumed."
    )
    objectives: Objectives | None = Field(None, description="Recovery point objective of the archive (rpo).")


class RecoveryWindow(ApiModel):
    """The times a Restore can recover to."""

    from_: Timestamp | None = Field(
        None, alias="from", description="Oldest recoverable time: the end of the oldest usable base backup."
    )
    to: Timestamp | None = Field(None, description="Newest archived commit time.")


class LastBaseBackup(ApiModel):
    """The newest base backup that completed and was verified."""

    name: str | None = Field(None, description="Its id (its UTC start time, e.g. 20261207T171500Z).")
    started_at: Timestamp | None = Field(None, description="When pg_basebackup started.")
    completed_at: Timestamp | None = Field(None, description="When it was verified and listed.")
    size: str | None = Field(None, description='Its stored size for humans, e.g. "1.2 GiB".')
    size_bytes: int | None = Field(
        None, ge=0, description="Its stored size in bytes.", json_schema_extra={"format": "int64"}
    )


class GapReason(StrEnum):
    SLOT_MISSING = "SlotMissing"
    SYSTEM_IDENTIFIER_CHANGED = "SystemIdentifierChanged"
    SEGMENT_MISSING = "SegmentMissing"
    SLOT_DROPPED = "SlotDropped"


class Gap(ApiModel):
    """WAL that never reached the archive: no point in time inside it can be recovered."""

    detected_at: Timestamp = Field(description="When the operator found it.")
    reason: GapReason = Field(
        description="SlotMissing, SystemIdentifierChanged, SegmentMissing or SlotDropped."
    )
    from_lsn: str | None = Field(None, max_length=17, description="First WAL position missing (X/Y).")
    to_lsn: str | None = Field(
        None, max_length=17, description="First WAL position archived again, if known."
    )
    timeline: int | None = Field(None, ge=1, description="Timeline of the missing WAL.")
    message: str | None = Field(None, max_length=1024, description="What happened, one line.")


class WalArchiveStatus(ResourceStatus):
    """Observed state: how far WAL is received and archived, and what can be recovered."""

    phase: WalArchivePhase | None = Field(None, description="Pending, Ready, Suspended or Stalled.")  # type: ignore[assignment]
    slot: str | None = Field(None, description="Name of the replication slot on the server.")
    received_lsn: str | None = Field(
        None,
        max_length=17,
        description="WAL position received and flushed into the spool (the slot's restart_lsn).",
    )
    archived_lsn: str | None = Field(None, max_length=17, description="WAL position uploaded to storage.")
    lag_bytes: int | None = Field(
        None,
        ge=0,
        description="WAL written by the server but not yet archived (current LSN - archived LSN).",
        json_schema_extra={"format": "int64"},
    )
    slot_retained_bytes: int | None = Field(
        None,
        ge=0,
        description="WAL the slot holds back on the server (pg_current_wal_lsn() - restart_lsn).",
        json_schema_extra={"format": "int64"},
    )
    timeline: int | None = Field(None, ge=1, description="The server's timeline.")
    recovery_window: RecoveryWindow | None = Field(None, description="The times a Restore can recover to.")
    last_base_backup: LastBaseBackup | None = Field(None, description="The newest verified base backup.")
    gaps: list[Gap] | None = Field(
        None, max_length=MAX_GAPS_LISTED, description="The last few gaps, newest last (all are in storage)."
    )
    recoverability: Recoverability | None = Field(None, description="Live RPO against spec.objectives.")


WAL_ARCHIVE = KindInfo(
    kind="WalArchive",
    plural="walarchives",
    singular="walarchive",
    short_names=("hwal",),
    printer_columns=(
        PrinterColumn("Window-From", ".status.recoveryWindow.from", type="date"),
        PrinterColumn("Window-To", ".status.recoveryWindow.to", type="date"),
        PrinterColumn("Lag", ".status.lagBytes", type="integer"),
        PrinterColumn("RPO", ".status.recoverability.rpo"),
        PrinterColumn("Phase", ".status.phase"),
        PrinterColumn("Slot", ".status.slot", priority=1),
        PrinterColumn("Last-Base-Backup", ".status.lastBaseBackup.completedAt", type="date", priority=1),
        PrinterColumn("Age", ".metadata.creationTimestamp", type="date"),
    ),
    spec_model=WalArchiveSpec,
    status_model=WalArchiveStatus,
    description=(
        "WalArchive streams a PostgreSQL server's WAL to storage with pg_receivewal on a replication "
        "slot and takes base backups, so that a Restore can recover to any point in time."
    ),
)
