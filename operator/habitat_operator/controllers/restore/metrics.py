"""Restore's Prometheus metrics. Label values are object names only: never a URI, a host or a secret."""

from __future__ import annotations

import datetime as dt

from prometheus_client import Counter, Gauge, Histogram

from habitat_operator.controllers.base import recoverability_metrics
from habitat_operator.metrics import LONG_BUCKETS, forget

RESTORE_RUNS = Counter(
    "habitat_restore_runs_total",
    "Finished restores and drills by result (success, failure); drill runs count under their schedule.",
    ["namespace", "restore", "result"],
)
RESTORE_DURATION = Histogram(
    "habitat_restore_duration_seconds",
    "Wall time of one restore: checksum, pg_restore and verification queries.",
    ["namespace", "restore"],
    buckets=LONG_BUCKETS,
)
RESTORE_DRILL_LAST_SUCCESS = Gauge(
    "habitat_restore_drill_last_success_timestamp_seconds",
    "Unix time of the last successful restore drill.",
    ["namespace", "restore"],
)
RESTORE_VERIFICATION_FAILURES = Counter(
    "habitat_restore_verification_failures_total",
    "Restores whose checksum check or verification queries failed.",
    ["namespace", "restore"],
)

RESTORE_RECOVERY_POINT = Gauge(
    "habitat_restore_recovery_point_timestamp_seconds",
    "Unix time of the last commit that the last point-in-time restore or drill recovered.",
    ["namespace", "restore"],
)
RESTORE_TIME_TO_RECOVER = Gauge(
    "habitat_restore_time_to_recover_seconds",
    "How long the last point-in-time restore or drill took to recover its copy: base backup and WAL read,"
    " replayed, and dumped.",
    ["namespace", "restore"],
)


def record_recovery(
    namespace: str, restore: str, last_commit: dt.datetime | None, seconds: float | None
) -> None:
    if last_commit is not None:
        RESTORE_RECOVERY_POINT.labels(namespace, restore).set(last_commit.timestamp())
    if seconds is not None:
        RESTORE_TIME_TO_RECOVER.labels(namespace, restore).set(seconds)


def forget_restore(namespace: str, restore: str) -> None:
    forget(
        (
            RESTORE_RUNS,
            RESTORE_DURATION,
            RESTORE_DRILL_LAST_SUCCESS,
            RESTORE_VERIFICATION_FAILURES,
            RESTORE_RECOVERY_POINT,
            RESTORE_TIME_TO_RECOVER,
        ),
        namespace,
        restore,
    )
    recoverability_metrics.forget("Restore", namespace, restore)
