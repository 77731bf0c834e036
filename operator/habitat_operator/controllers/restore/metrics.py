"""Restore's Prometheus metrics. Label values are object names only: never a URI, a host or a secret."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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


def forget_restore(namespace: str, restore: str) -> None:
    forget(
        (RESTORE_RUNS, RESTORE_DURATION, RESTORE_DRILL_LAST_SUCCESS, RESTORE_VERIFICATION_FAILURES),
        namespace,
        restore,
    )
