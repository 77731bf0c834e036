"""One poll's decision, pure: from the triggers' readings to the replicas to write, and why.

The order protects the workload: the metric count (the largest over the triggers, or the formula's)
is never allowed below the current replicas while a metric is missing (a source that failed, or a
value that gives no finite replica count: +Inf, NaN, an overflow), then the fallback floor,
then scale-to-zero (only after `cooldownPeriod` without an active trigger), then the HPA's
stabilization and rate limits, and last the bounds, which a schedule window may move.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

from habitat_operator.api.scalepolicy import ScalePolicySpec, Trigger, TriggerType
from habitat_operator.controllers.scalepolicy import behavior, windows
from habitat_operator.controllers.scalepolicy.formula import Formula

FORMULA = "formula"


@dataclass(frozen=True)
class Reading:
    """A metric trigger's value this poll, or None when its source failed."""

    value: float | None
    error: str | None = None


@dataclass
class PolicyState:
    """What a policy's daemon keeps between polls (lost on restart, which only delays scale-downs)."""

    memory: behavior.Memory = field(default_factory=behavior.Memory)
    failures: dict[str, int] = field(default_factory=dict)  # consecutive failed polls by trigger
    last_active: float | None = None  # monotonic time a trigger was last active


@dataclass(frozen=True)
class Outcome:
    replicas: int
    trigger: str | None  # what decided: a trigger, "formula", or None for the bounds
    value: float | None
    reason: str
    active: tuple[str, ...]  # metric triggers above their activation threshold (or failing: unknown)
    windows: tuple[str, ...]  # schedule triggers whose window is open
    falling_back: tuple[str, ...]  # triggers failing for fallback.failureThreshold polls or more
    at_maximum: bool
    rate_limited: bool
    floor: int  # the bounds of this poll, as open windows moved them
    ceiling: int
    failures: tuple[str, ...] = ()  # "<trigger or formula>: why", for each one that failed this poll


@dataclass(frozen=True)
class _Candidate:
    name: str
    value: float
    per_replica: float
    activation: float

    @property
    def replicas(self) -> int:
        return math.ceil(self.value / self.per_replica)

    @property
    def active(self) -> bool:
        return self.value > self.activation


def metric_triggers(spec: ScalePolicySpec) -> list[Trigger]:
    return [t for t in spec.triggers if t.type is not TriggerType.SCHEDULE]


def formula_of(spec: ScalePolicySpec) -> Formula | None:
    """The parsed formula; raises ValueError for one the apiserver could not refuse."""
    if spec.formula is None:
        return None
    return Formula(spec.formula.expression, {t.name for t in metric_triggers(spec)})


def _candidates(
    spec: ScalePolicySpec, readings: dict[str, Reading]
) -> tuple[list[_Candidate], dict[str, str]]:
    """The candidates with a finite replica count, and why each other one has none."""
    found = _all_candidates(spec, readings)
    finite = [c for c in found if math.isfinite(c.value / c.per_replica)]
    invalid = {
        c.name: f"{c.value:g} / {c.per_replica:g} per replica is not a finite number of replicas"
        for c in found
        if c not in finite
    }
    return finite, invalid


def _all_candidates(spec: ScalePolicySpec, readings: dict[str, Reading]) -> list[_Candidate]:
    known = {name: r.value for name, r in readings.items() if r.value is not None}
    formula = formula_of(spec)
    if formula is not None and spec.formula is not None:
        if not formula.names <= known.keys():
            return []
        value = max(formula.evaluate(known), 0.0)  # NaN stays NaN
        return [_Candidate(FORMULA, value, spec.formula.target, spec.formula.activation_threshold)]
    found = []
    for trigger in metric_triggers(spec):
        if trigger.name not in known:
            continue
        if trigger.rabbitmq:
            per, activation = (
                float(trigger.rabbitmq.target_per_replica),
                float(trigger.rabbitmq.activation_threshold),
            )
        else:
            assert trigger.prometheus is not None
            per, activation = trigger.prometheus.target_value, trigger.prometheus.activation_threshold
        found.append(_Candidate(trigger.name, known[trigger.name], per, activation))
    return found


def decide(
    spec: ScalePolicySpec,
    readings: dict[str, Reading],
    current: int,
    state: PolicyState,
    now: float,
    wall: dt.datetime,
) -> Outcome:
    """The replicas for this poll; updates `state` (failures, activity, the HPA's memory)."""
    candidates, invalid = _candidates(spec, readings)
    errors = {n: r.error or "no value" for n, r in readings.items() if r.value is None} | invalid
    for name in [*readings, *([FORMULA] if spec.formula else [])]:
        state.failures[name] = state.failures.get(name, 0) + 1 if name in errors else 0
    threshold = spec.fallback.failure_threshold if spec.fallback else None
    falling_back = tuple(n for n, count in state.failures.items() if threshold and count >= threshold)
    failing = list(errors)
    failures = tuple(f"{name}: {error}" for name, error in errors.items())

    open_windows = [t for t in spec.triggers if t.schedule and windows.is_open(t.schedule, wall)]
    floor = max([spec.min_replicas, *(t.schedule.min_replicas for t in open_windows if t.schedule)])
    window_max = [t.schedule.max_replicas for t in open_windows if t.schedule and t.schedule.max_replicas]
    ceiling = max(max(window_max, default=spec.max_replicas), floor)

    best = max(candidates, key=lambda c: c.replicas, default=None)
    wanted = best.replicas if best else 0
    trigger, value = (best.name, best.value) if best else (None, None)
    reason = f"{best.name}: {best.value:g} / {best.per_replica:g} per replica" if best else "no metric"
    if failing and wanted < current:  # never scale down because a metric is missing
        first = failing[0]
        wanted, reason = current, f"holding {current}: {first} failed: {errors[first]}"
    if spec.fallback and falling_back and wanted < spec.fallback.replicas:
        wanted, trigger, value = spec.fallback.replicas, falling_back[0], None
        reason = f"fallback: {falling_back[0]} failed {state.failures[falling_back[0]]} polls in a row"

    active = tuple([c.name for c in candidates if c.active] + failing)
    opened = tuple(t.name for t in open_windows)
    if active or opened or state.last_active is None:
        state.last_active = now  # a restart counts as activity: the cooldown starts again
    bounds = {"floor": floor, "ceiling": ceiling}
    if floor == 0 and not (active or opened):
        idle_for = now - state.last_active
        if current == 0 or idle_for >= spec.cooldown_period:
            return Outcome(
                0,
                None,
                None,
                "no trigger active: scaled to zero",
                (),
                (),
                falling_back,
                False,
                False,
                **bounds,
                failures=failures,
            )
    if floor == 0:
        floor = 1

    up, down = behavior.rules(spec.behavior)
    stabilized = behavior.stabilize(state.memory, wanted, current, now, up, down)
    limited = behavior.rate_limit(state.memory, stabilized, current, now, up, down)
    replicas = min(max(limited.replicas, floor), ceiling)
    if replicas == ceiling and wanted > ceiling:
        reason += f", capped at the maximum {ceiling}"
    elif replicas == floor and wanted < floor:
        reason += f", raised to the minimum {floor}"
    elif replicas != wanted:
        reason += f", held at {replicas} by the behavior"
    return Outcome(
        replicas,
        trigger,
        value,
        reason,
        active,
        opened,
        falling_back,
        wanted > ceiling,
        limited.rate_limited,
        **bounds,
        failures=failures,
    )
