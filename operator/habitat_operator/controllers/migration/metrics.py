"""Migration's Prometheus metrics. Label values are object names and rule names only."""

from __future__ import annotations

from contextlib import suppress

from prometheus_client import Counter, Gauge, Histogram

from habitat_operator.metrics import LONG_BUCKETS, forget

MIGRATION_CURRENT_VERSION = Gauge(
    "habitat_migration_current_version",
    "Highest version in the database's migration history.",
    ["namespace", "migration"],
)
MIGRATION_PENDING = Gauge(
    "habitat_migration_pending",
    "Migrations still to apply or revert to reach the target version.",
    ["namespace", "migration"],
)
MIGRATION_RUNS = Counter(
    "habitat_migration_runs_total",
    "Runs that applied or reverted migrations, by result (success, failure).",
    ["namespace", "migration", "result"],
)
MIGRATION_DURATION = Histogram(
    "habitat_migration_duration_seconds",
    "Wall time of one run: every migration it applied or reverted.",
    ["namespace", "migration"],
    buckets=LONG_BUCKETS,
)
MIGRATION_LINT_FINDINGS = Gauge(
    "habitat_migration_lint_findings",
    "Linter findings on the last run's migrations, by squawk rule.",
    ["namespace", "migration", "rule"],
)
MIGRATION_DIRTY = Gauge(
    "habitat_migration_dirty",
    "1 while a version failed outside a transaction and waits to be resolved by hand.",
    ["namespace", "migration"],
)

_rules: dict[tuple[str, str], set[str]] = {}


def set_lint_findings(namespace: str, migration: str, counts: dict[str, int]) -> None:
    """Per rule; a rule with no finding any more drops out rather than lingering at its last count."""
    for rule in _rules.get((namespace, migration), set()) - counts.keys():
        with suppress(KeyError):
            MIGRATION_LINT_FINDINGS.remove(namespace, migration, rule)
    for rule, count in counts.items():
        MIGRATION_LINT_FINDINGS.labels(namespace, migration, rule).set(count)
    _rules[(namespace, migration)] = set(counts)


def forget_migration(namespace: str, migration: str) -> None:
    set_lint_findings(namespace, migration, {})
    _rules.pop((namespace, migration), None)
    forget(
        (MIGRATION_CURRENT_VERSION, MIGRATION_PENDING, MIGRATION_RUNS, MIGRATION_DURATION, MIGRATION_DIRTY),
        namespace,
        migration,
    )
