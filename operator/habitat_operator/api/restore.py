"""Restore: pg_restore of a Backup's artifact into a database, once, or as scheduled restore drills."""

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from habitat_operator.api.artifacts import BackupFormat, BackupStorage, S3Prefix, S3Storage
from habitat_operator.api.common import (
    DNS_SUBDOMAIN_PATTERN,
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
from habitat_operator.api.rabbitmq_definitions import DefinitionsImport, RabbitMQTarget

LATEST_RUN = "latest"
MAX_VERIFICATION_QUERIES = 20
QUERY_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
NAMESPACE_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
LSN_PATTERN = r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$"
# What pg_create_restore_point accepts (under 64 bytes), without the characters a settings file or a
# log line could be cut at.
RESTORE_POINT_PATTERN = r"^[^\x00-\x1f\x7f'\\]{1,63}$"

ObjectName = Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)]


class RestoreReason(StrEnum):
    """Condition and Event reasons of Restore's own; the shared ones are in `Reason`."""

    RESTORING = "Restoring"
    RESTORE_FAILED = "RestoreFailed"
    QUERY_FAILED = "QueryFailed"
    CREATE_DATABASE_FAILED = "CreateDatabaseFailed"
    DROP_DATABASE_FAILED = "DropDatabaseFailed"
    BACKUP_NOT_FOUND = "BackupNotFound"
    BACKUP_NOT_READY = "BackupNotReady"
    BACKUP_FAILED = "BackupFailed"
    TARGET_NOT_EMPTY = "TargetNotEmpty"
    SAFETY_BACKUP = "SafetyBackup"
    SAFETY_BACKUP_FAILED = "SafetyBackupFailed"
    WAITING_FOR_SAFETY_BACKUP = "WaitingForSafetyBackup"
    SCRATCH_DATABASE_DROPPED = "ScratchDatabaseDropped"
    CATALOG_ENTRY_SKIPPED = "CatalogEntrySkipped"
    CORRUPTION_FOUND = "CorruptionFound"
    UNLOCKED_VERSION_IGNORED = "UnlockedVersionIgnored"
    # A point-in-time source.
    SERVER_VERSION_UNSUPPORTED = "ServerVersionUnsupported"
    RECOVERY_FAILED = "RecoveryFailed"
    RECOVERY_TARGET_NOT_REACHED = "RecoveryTargetNotReached"
    WAL_ARCHIVE_NOT_FOUND = "WalArchiveNotFound"


class BackupRef(ApiModel):
    """A Backup in the same namespace whose artifact is restored."""

    name: ObjectName = Field(description="Name of the Backup: a one-shot Backup or a scheduled one.")
    run: ObjectName = Field(
        LATEST_RUN,
        description=(
            'For a scheduled Backup, which run: "latest" (its newest Succeeded child Backup) or the '
            "name of one of its child Backups. Ignored for a one-shot Backup."
        ),
    )


class ArtifactSource(ApiModel):
    """An artifact named by its location, e.g. one whose Backup object has been deleted."""

    cel_rules = (
        CelRule(
            "!has(self.encryptionKeySecretRef) || !has(self.format) || self.format == 'custom'",
            "encryption is supported with format: custom only",
            lambda artifact: (
                artifact.encryption_key_secret_ref is None or artifact.format is BackupFormat.CUSTOM
            ),
        ),
    )

    uri: str = Field(
        pattern=r"^file://",
        max_length=4096,
        description="file:// URI of the artifact under the operator's backup root, as in a Backup's status.",
    )
    sha256: str | None = Field(
        None,
        pattern=SHA256_PATTERN,
        description="Expected SHA-256 (lower-case hex) of the artifact; checked before the restore when set.",
    )
    format: BackupFormat = Field(BackupFormat.CUSTOM, description="pg_dump format: custom or directory.")
    encryption_key_secret_ref: EncryptionKeySecretRef | None = Field(
        None, description="Secret key holding the key the artifact was encrypted with."
    )


class LatestOf(ApiModel):
    """Pick the newest verified artifact of a database from the bucket's catalog, among the entries
    that Backups of one namespace wrote (the Restore's own unless `namespace` names another)."""

    database: str = Field(
        min_length=1, max_length=63, description="Name of the database that was backed up (not host:port)."
    )
    namespace: str | None = Field(
        None,
        pattern=NAMESPACE_PATTERN,
        max_length=63,
        description=(
            "Namespace whose Backups wrote the artifact; by default the Restore's own. Set it to recover "
            "into a namespace of another name."
        ),
    )
    server: str | None = Field(
        None,
        pattern=r"^[^\s/]+$",
        max_length=261,
        description="Only artifacts of the database on this server (host:port, as the catalog records it).",
    )


class StorageSource(ApiModel):
    """An artifact found in a bucket alone, with no Backup object: the disaster-recovery source."""

    cel_rules = (exactly_one_of("storage source", "latestOf", "key"),)

    s3: S3Storage = Field(description="The bucket, as a Backup's storage.s3 names it.")
    latest_of: LatestOf | None = Field(
        None, description="The newest verified artifact of this database under the prefix, by its catalog."
    )
    key: Annotated[S3Prefix, Field(min_length=1)] | None = Field(
        None, description="Key of the artifact in the bucket, e.g. habitat/prod/default/nightly.dump."
    )
    encryption_key_secret_ref: EncryptionKeySecretRef | None = Field(
        None, description="Secret key holding the key the artifact was encrypted with."
    )


class WalArchiveRef(ApiModel):
    """A WalArchive in the same namespace."""

    name: ObjectName = Field(description="Name of the WalArchive.")


class ArchiveInStorage(ApiModel):
    """A WalArchive's archive found in a bucket alone, with no WalArchive object: disaster recovery."""

    s3: S3Storage = Field(description="The bucket, as the WalArchive's storage.s3 named it.")
    archive: ObjectName = Field(description="Name of the WalArchive that wrote the archive.")
    namespace: str | None = Field(
        None,
        pattern=NAMESPACE_PATTERN,
        max_length=63,
        description="Namespace of the WalArchive that wrote the archive; by default the Restore's own.",
    )
    encryption_key_secret_ref: EncryptionKeySecretRef | None = Field(
        None, description="Secret key holding the key the archive was encrypted with."
    )


class PointInTimeTarget(ApiModel):
    """Where recovery stops: exactly one of time, lsn, restorePoint or latest."""

    cel_rules = (
        exactly_one_of("target", "time", "lsn", "restorePoint", "latest"),
        CelRule(
            "!has(self.latest) || self.latest",
            "latest can only be true",
            lambda target: target.latest is None or target.latest,
        ),
    )

    time: Timestamp | None = Field(
        None,
        description="Recover every transaction committed up to this time (RFC 3339), none after.",
        json_schema_extra={"format": "date-time"},
    )
    lsn: str | None = Field(
        None,
        pattern=LSN_PATTERN,
        max_length=17,
        description="Recover up to this WAL position, e.g. 16/B374D848.",
    )
    restore_point: str | None = Field(
        None,
        pattern=RESTORE_POINT_PATTERN,
        max_length=63,
        description=(
            "Recover up to this named restore point (pg_create_restore_point); a Migration's status"
            " names the one it made before applying."
        ),
    )
    latest: bool | None = Field(None, description="Recover everything the archive holds.")
    inclusive: bool = Field(
        True, description="With time or lsn: stop just after the target (true) or just before it (false)."
    )


class PointInTimeSource(ApiModel):
    """A database as it was at a point in time, recovered from a WalArchive's base backups and WAL."""

    cel_rules = (exactly_one_of("pointInTime", "walArchiveRef", "storage"),)

    wal_archive_ref: WalArchiveRef | None = Field(None, description="Recover from a WalArchive's archive.")
    storage: ArchiveInStorage | None = Field(
        None, description="Recover from an archive in a bucket alone (disaster recovery)."
    )
    target: PointInTimeTarget = Field(description="Where recovery stops.")
    database: str | None = Field(
        None,
        min_length=1,
        max_length=63,
        description="Database of the recovered server to restore; by default the target's database name.",
    )


class RestoreSource(ApiModel):
    """What to restore: exactly one of backupRef, artifact, storage or pointInTime."""

    cel_rules = (exactly_one_of("source", "backupRef", "artifact", "storage", "pointInTime"),)

    backup_ref: BackupRef | None = Field(None, description="Restore the artifact of a Backup.")
    artifact: ArtifactSource | None = Field(None, description="Restore an artifact given by its URI.")
    storage: StorageSource | None = Field(
        None, description="Restore from a bucket alone, found through its catalog (disaster recovery)."
    )
    point_in_time: PointInTimeSource | None = Field(
        None, description="Restore a database as it was at a point in time, from a WalArchive's archive."
    )


class RestoreTarget(ApiModel):
    """Where to restore: exactly one of database or rabbitmq."""

    cel_rules = (exactly_one_of("target", "database", "rabbitmq"),)

    database: DatabaseRef | None = Field(None, description="The database to restore into.")
    rabbitmq: RabbitMQTarget | None = Field(
        None, description="A RabbitMQ broker to import a Backup's definitions into."
    )


class RestoreMode(ApiModel):
    """How to treat the target database."""

    create_database: bool = Field(False, description="Create the target database when it does not exist.")
    clean: bool = Field(
        False, description="Drop the artifact's objects from the target before recreating them."
    )
    force: bool = Field(
        False, description="Restore into a target that is not empty; without it such a target is refused."
    )


class VerificationExpectation(ApiModel):
    """What the query's single value must be; every bound given must hold."""

    cel_rules = (
        CelRule(
            "has(self.min) || has(self.max) || has(self.equals)",
            "expect needs at least one of min, max or equals",
            lambda expect: expect.min is not None or expect.max is not None or expect.equals is not None,
        ),
        CelRule(
            "!has(self.min) || !has(self.max) || self.min <= self.max",
            "expect.min must not be greater than expect.max",
            lambda expect: expect.min is None or expect.max is None or expect.min <= expect.max,
        ),
    )

    min: int | None = Field(
        None,
        description="The value, read as a number, must be at least this.",
        json_schema_extra={"format": "int64"},
    )
    max: int | None = Field(
        None,
        description="The value, read as a number, must be at most this.",
        json_schema_extra={"format": "int64"},
    )
    equals: str | None = Field(
        None, max_length=1024, description="The value, as PostgreSQL prints it, must be exactly this text."
    )


class VerificationQuery(ApiModel):
    """A read-only query run against the restored database, with what its result must be."""

    name: str = Field(
        pattern=QUERY_NAME_PATTERN, max_length=63, description="Name of the check, shown in status."
    )
    sql: str = Field(
        min_length=1,
        max_length=4096,
        description="One SQL statement returning one row with one column; runs in a read-only transaction.",
    )
    expect: VerificationExpectation = Field(description="What the returned value must be.")


VerificationQueries = Annotated[
    list[VerificationQuery],
    Field(max_length=MAX_VERIFICATION_QUERIES),
    CelRule(
        "self.all(q, self.exists_one(p, p.name == q.name))",
        "verification query names must be unique",
        lambda queries: len({query.name for query in queries}) == len(queries),
    ),
]


class RestoreVerification(ApiModel):
    """Checks before and after the restore."""

    checksum: bool = Field(
        True, description="Check the artifact's SHA-256 (and readability) before the target is touched."
    )
    queries: VerificationQueries = Field(
        default_factory=list, description="Queries run against the restored database; all must pass."
    )
    amcheck: bool = Field(
        False,
        description=(
            "Check the drill's scratch database with pg_amcheck (heap and B-tree indexes); any "
            "corruption found fails the drill. Needs drill: true."
        ),
    )


# The spec fields only a schedule has; each run (a child object) gets the others.
SCHEDULE_FIELDS = ("schedule", "suspend", "historyLimit", "objectives")


class RestoreSpec(ApiModel):
    """Desired restore: what to restore, where, how, and for drills when."""

    cel_rules = (
        CelRule(
            "!has(self.schedule) || self.drill",
            "schedule requires drill: true",
            lambda spec: spec.schedule is None or spec.drill,
        ),
        CelRule(
            "!self.drill || (!self.mode.clean && !self.mode.force)",
            "a drill restores into a scratch database; mode does not apply",
            lambda spec: not spec.drill or not (spec.mode.clean or spec.mode.force),
        ),
        CelRule(
            "!has(self.schedule) || !has(self.source.pointInTime)"
            " || has(self.source.pointInTime.target.latest)",
            "a scheduled drill of a point-in-time source recovers to target.latest",
            lambda spec: (
                spec.schedule is None
                or spec.source.point_in_time is None
                or spec.source.point_in_time.target.latest is not None
            ),
        ),
        CelRule(
            "!self.verify.amcheck || self.drill",
            "verify.amcheck checks a drill's scratch database; it needs drill: true",
            lambda spec: not spec.verify.amcheck or spec.drill,
        ),
        CelRule(
            "!has(self.objectives) || has(self.schedule)",
            "objectives requires a drill schedule",
            lambda spec: spec.objectives is None or spec.schedule is not None,
        ),
        objectives_rule("Restore drill", "rto", "the scheduled Backup or the WalArchive it restores"),
        *one_shot_spec_rules("Restore"),
        CelRule(
            "!has(self.target.rabbitmq) || (!self.drill && !has(self.schedule) && !self.mode.clean"
            " && !self.mode.createDatabase && !has(self.preRestoreBackup) && self.jobs <= 1"
            " && (!has(self.verify.queries) || size(self.verify.queries) == 0)"
            " && !has(self.source.pointInTime)"
            " && (!has(self.source.storage) || has(self.source.storage.key)))",
            "target.rabbitmq imports a definitions artifact once (source backupRef, artifact or"
            " storage.key): drill, schedule, mode.clean, mode.createDatabase, preRestoreBackup, jobs and"
            " verify.queries do not apply",
            lambda spec: (
                spec.target.rabbitmq is None
                or (
                    not spec.drill
                    and spec.schedule is None
                    and not spec.mode.clean
                    and not spec.mode.create_database
                    and spec.pre_restore_backup is None
                    and spec.jobs <= 1
                    and not spec.verify.queries
                    and spec.source.point_in_time is None
                    and (spec.source.storage is None or spec.source.storage.key is not None)
                )
            ),
        ),
        CelRule(
            "!self.dryRun || has(self.target.rabbitmq)",
            "dryRun is supported with target.rabbitmq",
            lambda spec: not spec.dry_run or spec.target.rabbitmq is not None,
        ),
    )

    source: RestoreSource = Field(description="The artifact to restore: a Backup's, or one given by URI.")
    target: RestoreTarget = Field(description="Where to restore the artifact.")
    mode: RestoreMode = Field(RestoreMode(), description="How to treat the target database.")
    pre_restore_backup: bool | None = Field(
        None,
        description=(
            "Back up the target before restoring over it. Unset means: when the target is not empty."
        ),
    )
    safety_backup_storage: BackupStorage | None = Field(
        None,
        description=(
            "Where the pre-restore Backup goes; by default the source Backup's storage, "
            'or "safety" for an artifact source.'
        ),
    )
    jobs: int = Field(1, ge=1, le=16, description="Parallel pg_restore jobs; 1 restores in one transaction.")
    verify: RestoreVerification = Field(
        RestoreVerification(), description="Checksum check before, and queries after, the restore."
    )
    timeout: Duration = Field("1h", description="Give up on a restore that takes longer than this.")
    retry: RetryPolicy = Field(
        RetryPolicy(), description="Retries after a transient failure (the database unreachable, a timeout)."
    )
    lock_timeout: Duration = Field(
        "1m",
        description=(
            "How long pg_restore waits for a lock another session holds on the target before the "
            "attempt fails as LockTimeout and is retried (PostgreSQL's lock_timeout)."
        ),
    )
    drill: bool = Field(
        False,
        description=(
            "Restore into a scratch database on the target's server, verify it, then drop it; "
            "the target database itself is never touched."
        ),
    )
    schedule: CronSchedule | None = Field(
        None, description='Cron schedule of drills (e.g. "0 4 * * 0"); needs drill: true.'
    )
    suspend: bool = Field(False, description="Pause the drill schedule; a drill already started finishes.")
    history_limit: int = Field(10, ge=1, le=100, description="How many scheduled drill runs to keep.")
    dry_run: bool = Field(
        False,
        description=(
            "With target.rabbitmq: show in status and an Event what the import would create and update, "
            "without changing anything."
        ),
    )
    objectives: Objectives | None = Field(
        None, description="Recovery time objective the drills prove (rto); needs a schedule."
    )


class RestoredFrom(ApiModel):
    """The artifact a restore used."""

    backup: str | None = Field(None, description="Name of the Backup whose artifact was restored, if any.")
    uri: str | None = Field(None, description="URI of the restored artifact.")
    sha256: str | None = Field(None, description="SHA-256 of the restored artifact (hex).")
    archive: str | None = Field(None, description="The archive recovered from, for a point-in-time source.")
    size_bytes: int | None = Field(
        None, ge=0, description="Size of the restored artifact.", json_schema_extra={"format": "int64"}
    )


class RecoveredTo(ApiModel):
    """Where a point-in-time recovery ended: what the restored database holds."""

    target: str = Field(description='The target asked for, e.g. "time 2026-12-07T17:14:59Z".')
    lsn: str | None = Field(None, description="The last WAL position replayed.")
    last_commit_time: Timestamp | None = Field(
        None, description="Commit time of the last transaction replayed: the achieved recovery point."
    )
    base_backup: str | None = Field(None, description="Id of the base backup recovery started from.")
    recovery_seconds: float | None = Field(
        None, ge=0, description="Time to recover: base backup and WAL read, replayed, and dumped."
    )


class QueryResult(ApiModel):
    """Outcome of one verification query."""

    name: str = Field(description="Name of the verification query.")
    passed: bool = Field(description="Whether the query's value met its expectation.")
    value: str | None = Field(None, description="The value the query returned (shortened if long).")
    message: str | None = Field(None, description="Why the check failed, one line.")


class RestoreStatus(RecoverableScheduleStatus):
    """Observed state of a restore, or of a drill schedule."""

    target: str | None = Field(None, description="host:port/dbname restored into (no credentials).")
    restored_from: RestoredFrom | None = Field(None, description="The artifact restored.")
    recovered_to: RecoveredTo | None = Field(
        None, description="For a point-in-time source: the point recovered to and how long it took."
    )
    safety_backup: str | None = Field(None, description="Name of the Backup taken of the target first.")
    scratch_database: str | None = Field(None, description="Name of the drill's scratch database.")
    duration_seconds: float | None = Field(None, ge=0, description="How long the last restore took.")
    verification: list[QueryResult] | None = Field(
        None, max_length=MAX_VERIFICATION_QUERIES, description="Outcome of each verification query."
    )
    verification_summary: str | None = Field(
        None, description='Verification at a glance, e.g. "3/3 passed" or "checksum only".'
    )
    definitions: DefinitionsImport | None = Field(
        None, description="For target.rabbitmq: what the import changed, or in a dry run would change."
    )
    waiting_for: str | None = Field(
        None,
        description=(
            "The operation holding the target database's lock (another Restore, a Migration), which "
            "must finish first."
        ),
    )


RESTORE = KindInfo(
    kind="Restore",
    plural="restores",
    singular="restore",
    short_names=("hrs", "hrestore"),
    printer_columns=(
        PrinterColumn("Phase", ".status.phase"),
        PrinterColumn("Source", ".status.restoredFrom.backup"),
        PrinterColumn("Target", ".status.target"),
        PrinterColumn("Verified", ".status.verificationSummary"),
        PrinterColumn("Duration", ".status.duration", priority=1),
        PrinterColumn("RTO", ".status.recoverability.measuredRto"),
        PrinterColumn("Schedule", ".spec.schedule", priority=1),
        PrinterColumn("Age", ".metadata.creationTimestamp", type="date"),
    ),
    spec_model=RestoreSpec,
    status_model=RestoreStatus,
    description=(
        "Restore loads a Backup's artifact into a PostgreSQL database with pg_restore after checking "
        "its checksum, optionally backing the target up first and verifying the result with queries; "
        "as a drill it restores into a scratch database, once or on a cron schedule."
    ),
)
