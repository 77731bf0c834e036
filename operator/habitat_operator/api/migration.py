"""Migration: a database kept at a version of a set of versioned SQL migrations, declaratively."""

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from habitat_operator.api.artifacts import BackupStorage
from habitat_operator.api.common import (
    DNS_SUBDOMAIN_PATTERN,
    ApiModel,
    CelRule,
    DatabaseRef,
    Duration,
    KindInfo,
    PrinterColumn,
    ResourceStatus,
    RetryPolicy,
    Timestamp,
    exactly_one_of,
)

MAX_INLINE_MIGRATIONS = 500
MAX_SCRIPT_CHARS = 256 * 1024
MAX_LISTED = 200  # versions and findings shown in status; the rest are counted
HISTORY_SCHEMA = "habitat"
DEFAULT_HISTORY_TABLE = "habitat_schema_migrations"
NO_TRANSACTION_MARKER = "-- habitat:no-transaction"
MIGRATION_NAME_PATTERN = r"^[A-Za-z0-9][-A-Za-z0-9_.]*$"
# A ConfigMap key: <version>_<name>.up.sql or <version>_<name>.down.sql.
MIGRATION_KEY_PATTERN = (
    r"^(?P<version>[0-9]+)_(?P<name>[A-Za-z0-9][-A-Za-z0-9_.]*)\.(?P<direction>up|down)\.sql$"
)


class MigrationReason(StrEnum):
    """Condition and Event reasons of Migration's own; the shared ones are in `Reason`."""

    APPLYING = "Applying"
    ROLLING_BACK = "RollingBack"
    AT_TARGET = "AtTarget"
    PLANNED = "Planned"
    MIGRATION_FAILED = "MigrationFailed"
    INVALID_MIGRATION = "InvalidMigration"
    DIRTY = "Dirty"
    DIRTY_RESOLVED = "DirtyResolved"
    VERSION_MISSING_FROM_SOURCE = "VersionMissingFromSource"
    OUT_OF_ORDER = "OutOfOrder"
    DOWN_SCRIPT_MISSING = "DownScriptMissing"
    LINT_FINDINGS = "LintFindings"
    LINT_REFUSED = "LintRefused"
    CONFIG_MAP_NOT_FOUND = "ConfigMapNotFound"
    WAITING_FOR_BACKUP = "WaitingForBackup"
    BACKUP_FAILED = "BackupFailed"
    RESTORE_POINT_FAILED = "RestorePointFailed"


class LintMode(StrEnum):
    WARN = "warn"
    ENFORCE = "enforce"


class DirtyAction(StrEnum):
    """What the user did by hand to a migration that failed outside a transaction."""

    MARK_APPLIED = "markApplied"
    MARK_REVERTED = "markReverted"


Version = Annotated[int, Field(ge=1, json_schema_extra={"format": "int64"})]


class InlineMigration(ApiModel):
    """One migration written in the object itself."""

    version: Version = Field(description="Positive integer; migrations run in numeric order.")
    name: str = Field(
        pattern=MIGRATION_NAME_PATTERN, max_length=200, description="Short name, e.g. add_users."
    )
    up: str = Field(min_length=1, max_length=MAX_SCRIPT_CHARS, description="SQL that applies the migration.")
    down: str | None = Field(
        None, max_length=MAX_SCRIPT_CHARS, description="SQL that reverts it; needed to roll back past it."
    )


InlineMigrations = Annotated[
    list[InlineMigration],
    Field(max_length=MAX_INLINE_MIGRATIONS),
    CelRule(
        "self.all(m, self.exists_one(n, n.version == m.version))",
        "inline migration versions must be unique",
        lambda migrations: len({m.version for m in migrations}) == len(migrations),
    ),
]


class ConfigMapRef(ApiModel):
    """A ConfigMap in the Migration's namespace whose keys are migration files."""

    name: str = Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="Name of the ConfigMap.")


class MigrationSource(ApiModel):
    """Where the migrations are: exactly one of configMapRefs or inline."""

    cel_rules = (exactly_one_of("source", "configMapRefs", "inline"),)

    config_map_refs: list[ConfigMapRef] | None = Field(
        None,
        min_length=1,
        max_length=32,
        description=(
            "ConfigMaps read in order, with keys <version>_<name>.up.sql and optional "
            "<version>_<name>.down.sql; several lift the 1 MiB limit of one."
        ),
    )
    inline: InlineMigrations | None = Field(None, description="Migrations written in the object.")


class BackupBefore(ApiModel):
    """Back the database up with a Backup object before any migration runs."""

    storage: BackupStorage = Field(description="Where the Backup's artifact goes.")


class LintPolicy(ApiModel):
    """How squawk's findings on pending migrations are treated."""

    mode: LintMode = Field(
        LintMode.WARN, description="warn: report findings; enforce: findings refuse the run."
    )
    skip: list[Annotated[str, Field(pattern=r"^[a-z0-9-]+$", max_length=100)]] = Field(
        default_factory=list, max_length=100, description="Rule names not to check, e.g. prefer-robust-stmts."
    )


class ResolveDirty(ApiModel):
    """Clears the dirty flag of a migration that failed outside a transaction, once repaired by hand."""

    version: Version = Field(description="The dirty version this resolves.")
    action: DirtyAction = Field(
        description=(
            "markApplied: its changes are now fully in place; markReverted: they are fully undone "
            "and the migration runs again."
        )
    )


class MigrationSpec(ApiModel):
    """Desired state: this database at this version of these migrations."""

    cel_rules = (
        CelRule(
            "!has(self.targetVersion) || !has(self.source.inline)"
            " || self.source.inline.exists(m, m.version == self.targetVersion)",
            "targetVersion must be one of the inline migrations' versions",
            lambda spec: (
                spec.target_version is None
                or spec.source.inline is None
                or any(m.version == spec.target_version for m in spec.source.inline)
            ),
        ),
    )

    database: DatabaseRef = Field(description="The database to migrate.")
    source: MigrationSource = Field(description="The migrations.")
    target_version: Version | None = Field(
        None, description="Version to be at; the latest by default. Lower than the current one rolls back."
    )
    plan: bool = Field(False, description="Compute, lint and report what would run; apply nothing.")
    backup_before: BackupBefore | None = Field(
        None, description="Take a Backup of the database, and wait for it, before migrating."
    )
    lock_timeout: Duration | None = Field(
        None, description="PostgreSQL lock_timeout for every migration, unless its file sets its own."
    )
    statement_timeout: Duration | None = Field(
        None, description="PostgreSQL statement_timeout for every migration, unless its file sets its own."
    )
    retry: RetryPolicy = Field(RetryPolicy(), description="Retries of a migration that hit its lock_timeout.")
    history_table: str = Field(
        DEFAULT_HISTORY_TABLE,
        pattern=r"^[a-z_][a-z0-9_]*$",
        max_length=63,
        description=f'History table, in schema "{HISTORY_SCHEMA}".',
    )
    baseline_version: Version | None = Field(
        None,
        description="Adopt an existing database: versions up to this are recorded as baselined, not run.",
    )
    lint: LintPolicy = Field(LintPolicy(), description="Linting of pending migrations with squawk.")
    resolve_dirty: ResolveDirty | None = Field(
        None, description="How a dirty version (failed outside a transaction) was repaired by hand."
    )


class AppliedMigration(ApiModel):
    """One migration this run applied or reverted."""

    version: int = Field(description="Version of the migration.", json_schema_extra={"format": "int64"})
    name: str = Field(description="Name of the migration.")
    direction: str = Field(description="up or down.")
    duration_ms: int = Field(ge=0, description="How long it ran.", json_schema_extra={"format": "int64"})
    checksum: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="sha256 (hex) of the script that ran; an up script's is in its history row too.",
    )


class LintFinding(ApiModel):
    """One linter finding on a pending migration."""

    rule: str = Field(description="squawk's rule name, e.g. require-concurrent-index-creation.")
    version: int = Field(description="The migration's version.", json_schema_extra={"format": "int64"})
    line: int = Field(ge=1, description="Line in the migration's file.")
    message: str = Field(description="What the rule found.")


class MigrationStatus(ResourceStatus):
    """Observed state of the database's migrations."""

    database: str | None = Field(None, description="host:port/dbname (no credentials).")
    current_version: int | None = Field(
        None,
        ge=0,
        description="Highest version recorded in the history that is not dirty.",
        json_schema_extra={"format": "int64"},
    )
    target_version: int | None = Field(
        None, ge=0, description="Version the spec asks for.", json_schema_extra={"format": "int64"}
    )
    pending: list[int] | None = Field(
        None, max_length=MAX_LISTED, description="Versions still to apply (or revert), in run order."
    )
    pending_count: int | None = Field(None, ge=0, description="How many versions are pending.")
    applied: list[AppliedMigration] | None = Field(
        None, max_length=MAX_LISTED, description="Migrations the last run applied or reverted."
    )
    lint_findings: list[LintFinding] | None = Field(
        None, max_length=MAX_LISTED, description="Findings of the linter on the last run's migrations."
    )
    backup: str | None = Field(None, description="Name of the Backup taken before the last run.")
    restore_point: str | None = Field(
        None,
        description=(
            "Restore point (pg_create_restore_point) made before the last run applied anything: a"
            " Restore's source.pointInTime.target.restorePoint brings the data back to that moment."
        ),
    )
    last_applied_at: Timestamp | None = Field(None, description="When a migration last ran.")
    waiting_for: str | None = Field(None, description="Who holds the database's lock while this waits.")
    dirty_version: int | None = Field(
        None,
        description="A version that failed outside a transaction.",
        json_schema_extra={"format": "int64"},
    )
    message: str | None = Field(None, description="Last failure, one line.")
    attempts: int | None = Field(None, ge=0, description="Lock-timeout retries of the current run so far.")
    source_digest: str | None = Field(
        None, description="Digest of the source last acted on; a failed run is not repeated on the same one."
    )
    applied_source_digest: str | None = Field(
        None,
        description=(
            "Digest of the source as read when the last run that applied anything started: differs from "
            "sourceDigest when the source changed since (e.g. a ConfigMap edited during that run)."
        ),
    )


MIGRATION = KindInfo(
    kind="Migration",
    plural="migrations",
    singular="migration",
    short_names=("hmig", "hmigration"),
    printer_columns=(
        PrinterColumn("Phase", ".status.phase"),
        PrinterColumn("Current", ".status.currentVersion", type="integer"),
        PrinterColumn("Target", ".status.targetVersion", type="integer"),
        PrinterColumn("Pending", ".status.pendingCount", type="integer"),
        PrinterColumn("Database", ".status.database", priority=1),
        PrinterColumn("Age", ".metadata.creationTimestamp", type="date"),
    ),
    spec_model=MigrationSpec,
    status_model=MigrationStatus,
    description=(
        "Migration keeps a PostgreSQL database at a version of versioned SQL migrations from ConfigMaps "
        "or inline: locked, checksummed, linted with squawk, with plans, rollbacks and a history table."
    ),
)
