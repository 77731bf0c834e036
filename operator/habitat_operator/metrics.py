"""Prometheus metrics. Operator-wide series follow controller-runtime's shape; each kind adds its own.

Label values are object names and fixed words only: never a URI, a host or anything from a Secret.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import kopf
from prometheus_client import Counter, Gauge, Histogram, Info, disable_created_metrics

from habitat_operator import __version__

# The *_created series double every family and no dashboard or alert uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Backups of large databases take minutes to hours; the default buckets stop at 10 s.
LONG_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, float("inf"))

BUILD_INFO = Info("habitat_operator_build", "Version of the running operator.")
RECONCILE_TOTAL = Counter(
    "habitat_operator_reconcile_total",
    "Reconciliations by kind and result (success, error, requeue).",
    ["kind", "result"],
)
RECONCILE_DURATION = Histogram(
    "habitat_operator_reconcile_duration_seconds",
    "Time spent in one reconciliation, by kind.",
    ["kind"],
    buckets=LONG_BUCKETS,
)

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


def record_build_info() -> None:
    BUILD_INFO.info({"version": __version__, "python": platform.python_version()})


@contextmanager
def reconcile_timer(kind: str) -> Iterator[None]:
    """Counts and times one reconciliation; an exception counts as an error (or a requeue, if temporary)."""
    started = time.monotonic()
    result = "success"
    try:
        yield
    except Exception as error:
        result = "requeue" if isinstance(error, kopf.TemporaryError) else "error"
        raise
    finally:
        RECONCILE_TOTAL.labels(kind, result).inc()
        RECONCILE_DURATION.labels(kind).observe(time.monotonic() - started)


_forward_only: dict[tuple[Gauge, str, str], float] = {}


def advance(gauge: Gauge, namespace: str, name: str, when: float) -> bool:
    """Sets a last-success timestamp only if it moves forward: runs of one schedule share a series
    and may be seen out of order (e.g. when status is read back after a restart)."""
    key = (gauge, namespace, name)
    if when < _forward_only.get(key, 0.0):
        return False
    _forward_only[key] = when
    gauge.labels(namespace, name).set(when)
    return True


def note_backup_success(namespace: str, backup: str, when: float, size_bytes: int) -> None:
    if advance(BACKUP_LAST_SUCCESS, namespace, backup, when):
        BACKUP_LAST_SIZE.labels(namespace, backup).set(size_bytes)


def forget_backup(namespace: str, backup: str) -> None:
    """Drops a deleted Backup's series, so alerts do not fire for what no longer exists."""
    _forward_only.pop((BACKUP_LAST_SUCCESS, namespace, backup), None)
    for metric in (BACKUP_LAST_SUCCESS, BACKUP_LAST_SIZE, BACKUP_EXPECTED_INTERVAL):
        with suppress(KeyError):  # never had a value
            metric.remove(namespace, backup)
