"""Backup: a pg_dump of a Habitat database, once or on a cron schedule."""

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from habitat_operator.api.artifacts import BackupFormat, BackupStorage, Compression, ObjectLockMode
from habitat_operator.api.common import (
    ApiModel,
    CelRule,
    CronSchedule,
    DatabaseRef,
    Duration,
    EncryptionKeySecretRef,
    KindInfo,
    PrinterColumn,
    RetryPolicy,
    Timestamp,
    exactly_one_of,
    one_shot_spec_rules,
)
from habitat_operator.api.objectives import Objectives, RecoverableScheduleStatus, objectives_rule
from habitat_operator.api.rabbitmq_definitions import ArtifactKind, RabbitMQDefinitionsSource

# pg_dump -n/-t patterns; bounded so the apiserver's CEL cost estimate stays finite.
ObjectPatterns = Annotated[list[Annotated[str, Field(min_length=1, max_length=256)]], Field(max_length=256)]


class BackupReason(StrEnum):
    """Condition and Event reasons of Backup's own; the shared ones are in `Reason`."""

    BACKUP_RUNNING = "BackupRunning"
    DUMP_FAILED = "DumpFailed"
    RETENTION_APPLIED = "RetentionApplied"
    RETENTION_FAILED = "RetentionFailed"
    OBJECT_LOCK_MISSING = "ObjectLockMissing"
    RETAINED_BY_LOCK = "RetainedByLock"


class Verification(StrEnum):
    """Outcome of restoring the artifact's table of contents with pg_restore --list."""

    VERIFIED = "Verified"
    NOT_VERIFIED = "NotVerified"
    VERIFICATION_FAILED = "VerificationFailed"


class RetentionPolicy(ApiModel):
    """Which artifacts of a schedule to keep; an artifact is kept if any rule keeps it."""

    keep_last: int | None = Field(None, ge=0, description="Keep the newest N artifacts.")
    keep_daily: int | None = Field(
        None, ge=0, description="Keep the newest artifact of each of the last N days."
    )
    keep_weekly: int | None = Field(
        None, ge=0, description="Keep the newest artifact of each of the last N weeks."
    )
    keep_monthly: int | None = Field(
        None, ge=0, description="Keep the newest artifact of each of the last N months."
    )
    max_age: Duration | None = Field(None, description="Delete artifacts older than this, e.g. 30d.")


class Encryption(ApiModel):
    """Encrypt the artifact at rest."""

    key_secret_ref: EncryptionKeySecretRef = Field(description="Secret key holding the encryption key.")


class ObjectSelection(ApiModel):
    """Schemas and tables, as pg_dump patterns (wildcards allowed)."""

    schemas: ObjectPatterns = Field(default_factory=list, description="Schema patterns (pg_dump -n / -N).")
    tables: ObjectPatterns = Field(default_factory=list, description="Table patterns (pg_dump -t / -T).")


# The spec fields only a schedule has; each run (a child object) gets the others.
SCHEDULE_FIELDS = ("schedule", "suspend", "retention", "objectives")


class BackupSpec(ApiModel):
    """Desired backup: what to dump, where, how and when."""

    cel_rules = (
        CelRule(
            "!has(self.jobs) || self.jobs <= 1 || (has(self.format) && self.format == 'directory')",
            "jobs > 1 requires format: directory",
            lambda spec: spec.jobs <= 1 or spec.format is BackupFormat.DIRECTORY,
        ),
        CelRule(
            "!has(self.retention) || has(self.schedule)",
            "retention requires a schedule",
            lambda spec: spec.retention is None or spec.schedule is not None,
        ),
        # A bucket takes a directory-format dump as one tar stream, which encrypts and compresses
        # like a custom-format one; a folder on the backup volume is its files as pg_dump wrote them.
        CelRule(
            "!has(self.encryption) || !has(self.format) || self.format == 'custom' || has(self.storage.s3)",
            "encryption is supported with format: custom, or with storage.s3",
            lambda spec: (
                spec.encryption is None or spec.format is BackupFormat.CUSTOM or spec.storage.s3 is not None
            ),
        ),
        CelRule(
            "!has(self.compression) || self.compression == 'gzip' || !has(self.format)"
            " || self.format == 'custom' || has(self.storage.s3)",
            "compression zstd or none is supported with format: custom, or with storage.s3",
            lambda spec: (
                spec.compression is Compression.GZIP
                or spec.format is BackupFormat.CUSTOM
                or spec.storage.s3 is not None
            ),
        ),
        CelRule(
            "!has(self.objectives) || has(self.schedule)",
            "objectives requires a schedule",
            lambda spec: spec.objectives is None or spec.schedule is not None,
        ),
        objectives_rule("Backup", "rpo", "the Restore drill of its artifacts"),
        *one_shot_spec_rules("Backup"),
        exactly_one_of("spec", "database", "rabbitmq"),
        CelRule(
            "!has(self.rabbitmq) || ((!has(self.format) || self.format == 'custom')"
            " && (!has(self.jobs) || self.jobs <= 1) && !has(self.include) && !has(self.exclude))",
            "rabbitmq takes no format, jobs, include or exclude",
            lambda spec: (
                spec.rabbitmq is None
                or (
                    spec.format is BackupFormat.CUSTOM
                    and spec.jobs <= 1
                    and not spec.include
                    and not spec.exclude
                )
            ),
        ),
    )

    database: DatabaseRef | None = Field(None, description="The database to back up.")
    rabbitmq: RabbitMQDefinitionsSource | None = Field(
        None, description="A RabbitMQ broker whose definitions to export, instead of a database."
    )
    storage: BackupStorage = Field(description="Where to write the artifact.")
    format: BackupFormat = Field(BackupFormat.CUSTOM, description="pg_dump format: custom or directory.")
    jobs: int = Field(1, ge=1, le=16, description="Parallel pg_dump jobs; above 1 needs format: directory.")
    compression: Compression = Field(
        Compression.GZIP,
        description=(
            "gzip: pg_dump's own (one thread); zstd: the operator compresses pg_dump's output with "
            "multi-threaded zstd; none. zstd and none need format: custom, or storage.s3."
        ),
    )
    schedule: CronSchedule | None = Field(
        None, description='Cron schedule (e.g. "0 3 * * *" or "@daily"); without it the backup runs once.'
    )
    suspend: bool = Field(False, description="Pause the schedule; runs already started finish.")
    timeout: Duration = Field("1h", description="Give up on a run that takes longer than this.")
    retry: RetryPolicy = Field(RetryPolicy(), description="Retries of a failed run.")
    retention: RetentionPolicy | None = Field(
        None, description="Pruning of the schedule's artifacts; needs a schedule."
    )
    verify: bool = Field(True, description="Check the artifact with pg_restore --list after dumping.")
    encryption: Encryption | None = Field(
        None, description="Encrypt the artifact; needs format: custom, or storage.s3."
    )
    include: ObjectSelection | None = Field(None, description="Dump only these schemas/tables.")
    exclude: ObjectSelection | None = Field(None, description="Leave out these schemas/tables.")
    objectives: Objectives | None = Field(
        None, description="Recovery point objective of the schedule (rpo); needs a schedule."
    )


class Artifact(ApiModel):
    """The artifact a successful run produced."""

    uri: str | None = Field(None, description="Where the artifact is, e.g. file:///backups/app/2024-...dump.")
    size_bytes: int | None = Field(
        None, ge=0, description="Artifact size in bytes.", json_schema_extra={"format": "int64"}
    )
    size: str | None = Field(None, description='Artifact size for humans, e.g. "12.3 MiB".')
    sha256: str | None = Field(None, description="SHA-256 of the artifact (hex).")
    format: BackupFormat | None = Field(None, description="pg_dump format of the artifact.")
    encrypted: bool | None = Field(None, description="Whether the artifact is encrypted.")
    compression: Compression | None = Field(None, description="How the artifact is compressed.")
    pg_version: str | None = Field(None, description="Server version of the dumped database.")
    kind: ArtifactKind | None = Field(
        None, description="What the artifact holds: database (a pg_dump; when unset) or rabbitmqDefinitions."
    )
    version_id: str | None = Field(
        None, description="The object's version id, where the bucket keeps versions."
    )
    catalog_version_id: str | None = Field(None, description="The version id of its catalog entry.")
    lock_mode: ObjectLockMode | None = Field(None, description="The Object Lock mode it was written under.")
    retain_until: Timestamp | None = Field(None, description="Until when Object Lock keeps it.")


class RetainedByLock(ApiModel):
    """Expired runs whose objects Object Lock still keeps: pruned on a pass after the date."""

    count: int = Field(ge=0, description="How many expired runs are kept.")
    until: Timestamp | None = Field(None, description="When the last of their locks expires.")


class BackupStatus(RecoverableScheduleStatus):
    """Observed state of a backup or of a backup schedule."""

    database: str | None = Field(None, description="host:port/dbname that was backed up (no credentials).")
    broker: str | None = Field(
        None, description="host:port (and vhost) whose RabbitMQ definitions were exported (no credentials)."
    )
    artifact: Artifact | None = Field(None, description="The artifact of the last successful run.")
    verification: Verification | None = Field(None, description="Result of verifying the artifact.")
    retained_by_lock: RetainedByLock | None = Field(
        None, description="A schedule's expired runs that Object Lock keeps for now."
    )


BACKUP = KindInfo(
    kind="Backup",
    plural="backups",
    singular="backup",
    short_names=("hbk", "hbackup"),
    printer_columns=(
        PrinterColumn("Phase", ".status.phase"),
        PrinterColumn("Database", ".status.database"),
        PrinterColumn("Size", ".status.artifact.size"),
        PrinterColumn("Verified", ".status.verification", priority=1),
        PrinterColumn("Duration", ".status.duration", priority=1),
        PrinterColumn("Schedule", ".spec.schedule"),
        PrinterColumn("RPO", ".status.recoverability.rpo"),
        PrinterColumn("Last-Success", ".status.lastSuccessfulTime", type="date", priority=1),
        PrinterColumn("Age", ".metadata.creationTimestamp", type="date"),
    ),
    spec_model=BackupSpec,
    status_model=BackupStatus,
    description=(
        "Backup dumps a Habitat PostgreSQL database with pg_dump into the operator's backup storage, "
        "once or on a cron schedule, with retries, retention and verification."
    ),
)
