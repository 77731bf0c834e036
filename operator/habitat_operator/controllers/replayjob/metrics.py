"""ReplayJob's Prometheus metrics. Label values are object names and fixed words: never a URI or a secret."""

from __future__ import annotations

import time
from contextlib import suppress

from prometheus_client import Counter, Gauge, Histogram

from habitat_operator.metrics import LONG_BUCKETS, forget

REPLAY_EVENTS = Counter(
    "habitat_replay_events_total",
    "Replayed events settled, by result (published; failed: nacked, returned, or not encodable).",
    ["namespace", "replayjob", "result"],
)
REPLAY_PROGRESS = Gauge(
    "habitat_replay_progress_ratio",
    "Share of a replay's selection that is settled (0 to 1).",
    ["namespace", "replayjob"],
)
REPLAY_RATE = Gauge(
    "habitat_replay_rate_events_per_second",
    "A running replay's recent rate; 0 when it is not publishing.",
    ["namespace", "replayjob"],
)
REPLAY_LAST_PROGRESS = Gauge(
    "habitat_replay_last_progress_timestamp_seconds",
    "Unix time a replay started or last had messages settled; absent while suspended or finished.",
    ["namespace", "replayjob"],
)
REPLAY_DURATION = Histogram(
    "habitat_replay_duration_seconds",
    "Wall time of one replay attempt, from its start to success, failure or suspension.",
    ["namespace", "replayjob"],
    buckets=LONG_BUCKETS,
)
REPLAY_RUNS = Counter(
    "habitat_replay_runs_total",
    "Finished replays by result (success, failure); dry runs included.",
    ["result"],
)


_progressing: set[tuple[str, str]] = set()
# What habitat_replay_events_total holds per series: the totals of status, counted once each.
_counted: dict[tuple[str, str, str], int] = {}


def settled(namespace: str, name: str, published: int, failed: int) -> bool:
    """Raises the event counters to status's totals (counted after status has them, so they never run
    ahead of it, and a restarted operator that restores them from status continues each series with
    no reset); True when some were new."""
    new = False
    for result, total in (("published", published), ("failed", failed)):
        key = (namespace, name, result)
        if total > _counted.get(key, 0):
            REPLAY_EVENTS.labels(namespace, name, result).inc(total - _counted.get(key, 0))
            _counted[key] = total
            new = True
    return new


def progressed(namespace: str, name: str) -> None:
    _progressing.add((namespace, name))
    REPLAY_LAST_PROGRESS.labels(namespace, name).set(time.time())


def started(namespace: str, name: str) -> None:
    """An attempt starts: the stall clock starts unless it runs already (retries do not reset it)."""
    if (namespace, name) not in _progressing:
        progressed(namespace, name)


def stopped(namespace: str, name: str) -> None:
    """A replay that no longer publishes (suspended, finished): nothing is stuck."""
    REPLAY_RATE.labels(namespace, name).set(0)
    _progressing.discard((namespace, name))
    with suppress(KeyError):
        REPLAY_LAST_PROGRESS.remove(namespace, name)


def forget_replayjob(namespace: str, name: str) -> None:
    _progressing.discard((namespace, name))
    for result in ("published", "failed"):
        _counted.pop((namespace, name, result), None)
        with suppress(KeyError):
            REPLAY_EVENTS.remove(namespace, name, result)
    forget((REPLAY_PROGRESS, REPLAY_RATE, REPLAY_LAST_PROGRESS, REPLAY_DURATION), namespace, name)
