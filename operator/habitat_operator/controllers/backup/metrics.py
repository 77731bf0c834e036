"""Backup's Prometheus metrics. Label values are object names only: never a URI, a host or a secret."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from habitat_operator.controllers.base import recoverability_metrics
from habitat_operator.metrics import LONG_BUCKETS, advance, forget

BACKUP_RUNS = Counter(
    "habitat_backup_runs_total",
    "Finished backup runs by result (success, failure). Runs of a schedule count under the schedule's name.",
    ["namespace", "backup", "result"],
)
BACKUP_DURATION = Histogram(
    "habitat_backup_duration_seconds",
    "Wall time of one backup run, dump and verification included.",
    ["namespace", "backup"],
    buckets=LONG_BUCKETS,
)
BACKUP_LAST_SUCCESS = Gauge(
    "habitat_backup_last_success_timestamp_seconds",
    "Unix time of the last successful backup (for a schedule that never succeeded: its creation time).",
    ["namespace", "backup"],
)
BACKUP_LAST_SIZE = Gauge(
    "habitat_backup_last_size_bytes",
    "Size of the last successful backup's artifact.",
    ["namespace", "backup"],
)
BACKUP_EXPECTED_INTERVAL = Gauge(
    "habitat_backup_schedule_expected_interval_seconds",
    "Seconds between two runs of a backup schedule; alert when the last success is older than two.",
    ["namespace", "backup"],
)
BACKUP_VERIFICATION_FAILURES = Counter(
    "habitat_backup_verification_failures_total",
    "Backups whose artifact failed verification (checksum re-read or pg_restore --list).",
    ["namespace", "backup"],
)


def note_backup_success(namespace: str, backup: str, when: float, size_bytes: int) -> None:
    if advance(BACKUP_LAST_SUCCESS, namespace, backup, when):
        BACKUP_LAST_SIZE.labels(namespace, backup).set(size_bytes)


def forget_backup(namespace: str, backup: str) -> None:
    forget(
        (
            BACKUP_RUNS,
            BACKUP_DURATION,
            BACKUP_LAST_SUCCESS,
            BACKUP_LAST_SIZE,
            BACKUP_EXPECTED_INTERVAL,
            BACKUP_VERIFICATION_FAILURES,
        ),
        namespace,
        backup,
    )
    recoverability_metrics.forget("Backup", namespace, backup)
