"""The operator-wide Prometheus metrics (controller-runtime's shape); each kind's live with its controller.

Label values are object names and fixed words only: never a URI, a host or anything from a Secret.
"""

from __future__ import annotations

import platform
from contextlib import suppress

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

OPERATIONS_RUNNING = Gauge(
    "habitat_operator_operations_running",
    "Operations (backups, restores) running now, each holding one of --max-concurrent-operations.",
)
OPERATIONS_CANCELLED = Counter(
    "habitat_operator_operations_cancelled_total",
    "Operations stopped because their object was deleted while they ran, by kind.",
    ["kind"],
)
OPERATIONS_QUEUED = Gauge(
    "habitat_operator_operations_queued",
    "Operations waiting for a slot (their objects say Queued).",
)


def record_build_info() -> None:
    BUILD_INFO.info({"version": __version__, "python": platform.python_version()})


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


RESULTS = ("success", "failure")


def forget(series: tuple[Gauge | Counter | Histogram, ...], namespace: str, name: str) -> None:
    """Drops a deleted object's series (a runs counter's for every result), so that neither alerts
    nor dashboards follow what no longer exists."""
    for metric in series:
        _forward_only.pop((metric, namespace, name), None)  # type: ignore[arg-type]
        with_result = "result" in metric._labelnames
        for labels in [(namespace, name, r) for r in RESULTS] if with_result else [(namespace, name)]:
            with suppress(KeyError):  # never had a value
                metric.remove(*labels)
