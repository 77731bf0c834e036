"""The HPA v2 `behavior` algorithm, pure: stabilization windows, then the rate-limit policies.

Stabilization: a scale-up takes the smallest recommendation of its window, a scale-down the largest
of its window, so one noisy poll never moves the target. Policies: at most N pods or P percent of
change per period, counted from the replicas at the start of the period (the operator's own
changes within it are remembered); `selectPolicy` Max takes the policy allowing the most change.
After a restart the memory is empty and starts with the target's current replicas, which can only
delay a scale-down, never cause one.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from habitat_operator.api.scalepolicy import (
    Behavior,
    PolicyType,
    ScalingPolicy,
    ScalingRules,
    SelectPolicy,
)

# The HPA's defaults.
DEFAULT_UP = ScalingRules(
    stabilization_window_seconds=0,
    policies=[
        ScalingPolicy(type=PolicyType.PERCENT, value=100, period_seconds=15),
        ScalingPolicy(type=PolicyType.PODS, value=4, period_seconds=15),
    ],
)
DEFAULT_DOWN = ScalingRules(
    stabilization_window_seconds=300,
    policies=[ScalingPolicy(type=PolicyType.PERCENT, value=100, period_seconds=15)],
)
_KEEP_SECONDS = 3600  # longer than any window or period the schema allows


@dataclass
class Memory:
    """What the HPA keeps between polls: recent recommendations and the changes it made."""

    recommendations: deque[tuple[float, int]] = field(default_factory=deque)
    changes: deque[tuple[float, int]] = field(default_factory=deque)  # (when, replicas added; < 0 removed)

    def forget_before(self, cutoff: float) -> None:
        for history in (self.recommendations, self.changes):
            while history and history[0][0] < cutoff:
                history.popleft()


@dataclass(frozen=True)
class Limited:
    replicas: int
    rate_limited: bool  # a policy, not the stabilization window, cut the change


def rules(behavior: Behavior | None) -> tuple[ScalingRules, ScalingRules]:
    """The effective (up, down) rules: the spec's, with the HPA's defaults for what it leaves out."""
    up = behavior.scale_up if behavior and behavior.scale_up else DEFAULT_UP
    down = behavior.scale_down if behavior and behavior.scale_down else DEFAULT_DOWN
    return _with_defaults(up, DEFAULT_UP), _with_defaults(down, DEFAULT_DOWN)


def _with_defaults(given: ScalingRules, default: ScalingRules) -> ScalingRules:
    return ScalingRules(
        stabilization_window_seconds=(
            given.stabilization_window_seconds
            if given.stabilization_window_seconds is not None
            else default.stabilization_window_seconds
        ),
        select_policy=given.select_policy,
        policies=given.policies if given.policies is not None else default.policies,
    )


def stabilize(
    memory: Memory, recommendation: int, current: int, now: float, up: ScalingRules, down: ScalingRules
) -> int:
    """The HPA's stabilized recommendation; records `recommendation`."""
    memory.forget_before(now - _KEEP_SECONDS)
    up_cutoff = now - (up.stabilization_window_seconds or 0)
    down_cutoff = now - (down.stabilization_window_seconds or 0)
    up_value = down_value = recommendation
    for when, value in memory.recommendations:
        if when > up_cutoff:
            up_value = min(up_value, value)
        if when > down_cutoff:
            down_value = max(down_value, value)
    memory.recommendations.append((now, recommendation))
    return min(max(current, up_value), down_value)


def rate_limit(
    memory: Memory, wanted: int, current: int, now: float, up: ScalingRules, down: ScalingRules
) -> Limited:
    """`wanted` cut to what the direction's policies allow from `current`."""
    if wanted == current:
        return Limited(wanted, False)
    rule = up if wanted > current else down
    if rule.select_policy is SelectPolicy.DISABLED:
        return Limited(current, True)
    limits = [_limit(memory, policy, current, now, wanted > current) for policy in rule.policies or []]
    if not limits:
        return Limited(wanted, False)
    if wanted > current:
        limit = max(limits) if rule.select_policy is SelectPolicy.MAX else min(limits)
        limit = max(limit, 1)  # from zero, a percentage allows nothing; one replica is always allowed
        return Limited(min(wanted, limit), wanted > limit)
    limit = min(limits) if rule.select_policy is SelectPolicy.MAX else max(limits)
    return Limited(max(wanted, limit), wanted < limit)


def _limit(memory: Memory, policy: ScalingPolicy, current: int, now: float, scaling_up: bool) -> int:
    cutoff = now - policy.period_seconds
    if scaling_up:
        start = current - sum(delta for when, delta in memory.changes if when > cutoff and delta > 0)
        if policy.type is PolicyType.PODS:
            return start + policy.value
        return math.ceil(start * (1 + policy.value / 100))
    start = current - sum(delta for when, delta in memory.changes if when > cutoff and delta < 0)
    if policy.type is PolicyType.PODS:
        return start - policy.value
    return math.ceil(start * (1 - policy.value / 100))


def record_change(memory: Memory, before: int, after: int, now: float) -> None:
    memory.changes.append((now, after - before))
