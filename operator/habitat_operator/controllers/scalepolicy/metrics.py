"""ScalePolicy's Prometheus metrics: the changing values live here, not in status.

Label values are object and trigger names and fixed words only: never a URI, a host or a secret.
"""

from __future__ import annotations

from contextlib import suppress

from prometheus_client import Counter, Gauge, Histogram

from habitat_operator.metrics import forget

_POLICY = ["namespace", "scalepolicy"]
_TRIGGER = [*_POLICY, "trigger"]

DESIRED = Gauge("habitat_scalepolicy_desired_replicas", "Replicas the policy wants.", _POLICY)
CURRENT = Gauge("habitat_scalepolicy_current_replicas", "The target's spec.replicas.", _POLICY)
MIN = Gauge("habitat_scalepolicy_min_replicas", "The floor now (a schedule window may raise it).", _POLICY)
MAX = Gauge("habitat_scalepolicy_max_replicas", "The ceiling now (a schedule window may move it).", _POLICY)
TRIGGER_VALUE = Gauge(
    "habitat_scalepolicy_trigger_value",
    "A metric trigger's last value (queue depth, query result).",
    _TRIGGER,
)
TRIGGER_ERRORS = Counter(
    "habitat_scalepolicy_trigger_errors_total", "Polls in which a trigger's source failed.", _TRIGGER
)
TRIGGER_DURATION = Histogram(
    "habitat_scalepolicy_trigger_duration_seconds",
    "Time to read one trigger's source, the Secret included.",
    _TRIGGER,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SCALE_EVENTS = Counter(
    "habitat_scalepolicy_scale_events_total",
    "Changes of the target's replicas, by direction (up, down).",
    [*_POLICY, "direction"],
)
FALLBACK_ACTIVE = Gauge(
    "habitat_scalepolicy_fallback_active",
    "1 while a trigger has failed fallback.failureThreshold polls in a row.",
    _POLICY,
)


def forget_policy(namespace: str, name: str, triggers: list[str]) -> None:
    """Drops a deleted policy's series, its triggers' and directions' included."""
    forget((DESIRED, CURRENT, MIN, MAX, FALLBACK_ACTIVE), namespace, name)
    by_third_label = {
        (TRIGGER_VALUE, TRIGGER_ERRORS, TRIGGER_DURATION): triggers,
        (SCALE_EVENTS,): ["up", "down"],
    }
    for metrics, values in by_third_label.items():
        for metric in metrics:
            for value in values:
                with suppress(KeyError):  # never had a value
                    metric.remove(namespace, name, value)
