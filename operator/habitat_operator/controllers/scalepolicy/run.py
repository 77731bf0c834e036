"""One ScalePolicy's poll: check the spec, the claim on the target and the target, read the
triggers, decide, write the target's replicas, then the status (only when it changed).

Any line may be cut off by a crash: the replicas are written before the status that reports them,
and the next poll of a restarted operator reads the target again, so it neither repeats nor loses
a change. A restart forgets the stabilization history and the cooldown's start, which can only
delay a scale-down.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog
from pydantic import ValidationError

from habitat_operator import timestamps
from habitat_operator.api.common import Reason
from habitat_operator.api.scalepolicy import ScalePhase, ScalePolicyReason, ScalePolicySpec
from habitat_operator.controllers.base import kube
from habitat_operator.controllers.base.validation import describe_validation_error
from habitat_operator.controllers.scalepolicy import metrics
from habitat_operator.controllers.scalepolicy.conflicts import standoff
from habitat_operator.controllers.scalepolicy.decision import Outcome, PolicyState, decide, formula_of
from habitat_operator.controllers.scalepolicy.sources import Sources, check_endpoints
from habitat_operator.controllers.scalepolicy.status import (
    ACTIVE,
    FALLBACK,
    PAUSED,
    SCALING_LIMITED,
    Flag,
    PolicyStatus,
)

log = structlog.get_logger(__name__)

# A policy that cannot poll (invalid, in conflict, its target missing) looks again this often.
RECHECK_SECONDS = 10.0  # the target-missing message says so


@dataclass(frozen=True)
class Claim:
    """A policy's claim on a target, from the operator's index of policies by target."""

    name: str
    created: str

    @staticmethod
    def of(body: kube.JsonDict) -> Claim:
        return Claim(body["metadata"]["name"], body["metadata"].get("creationTimestamp", ""))


def target_key(namespace: str, spec: kube.JsonDict) -> tuple[str, str, str]:
    target = spec.get("target") or {}
    return namespace, str(target.get("kind")), str(target.get("name"))


class ScalePolicyLoop:
    """A policy's daemon state across polls: its status, sources and the HPA's memory."""

    def __init__(
        self,
        body: kube.JsonDict,
        claims: Callable[[], Iterable[Claim]],
        allowed_endpoints: tuple[str, ...] = (),
    ) -> None:
        self.allowed_endpoints = allowed_endpoints
        self.status = PolicyStatus(body)
        self.sources = Sources(self.status.namespace, self.status.name, allowed_endpoints)
        self.state = PolicyState()
        self.claims = claims
        self.triggers: list[str] = []

    async def poll(self, body: kube.JsonDict) -> float:
        """One poll on the latest body; returns the seconds until the next."""
        self.status.generation = body["metadata"].get("generation")
        try:
            spec = ScalePolicySpec.model_validate(body.get("spec") or {})
            formula_of(spec)
            check_endpoints(spec, self.allowed_endpoints)
        except (ValidationError, ValueError) as error:
            detail = describe_validation_error(error) if isinstance(error, ValidationError) else str(error)
            await self._stall(body, Reason.INVALID_SPEC, f"invalid spec: {detail}", ScalePhase.STALLED)
            return RECHECK_SECONDS
        self.triggers = [t.name for t in spec.triggers]
        first = min(self.claims(), key=lambda c: (c.created, c.name), default=None)
        if first is not None and first.name != self.status.name:
            message = f"ScalePolicy {first.name} already scales {spec.target.kind} {spec.target.name}"
            await self._stall(body, ScalePolicyReason.CONFLICT, message, ScalePhase.STALLED)
            return RECHECK_SECONDS
        if hpa := await standoff(self.status.namespace, spec.target, body["metadata"]["uid"]):
            await self._stall(body, hpa.reason, hpa.message, ScalePhase.STALLED)
            return RECHECK_SECONDS
        scale = await self._read_target(body, spec)
        if scale is None:
            return RECHECK_SECONDS
        current = int(scale.get("spec", {}).get("replicas") or 0)
        metrics.CURRENT.labels(self.status.namespace, self.status.name).set(current)
        if spec.paused:
            await self.status.write(
                "ready",
                ScalePhase.PAUSED,
                ScalePolicyReason.PAUSED,
                "paused: the triggers are not polled and the target is left alone",
                (Flag(PAUSED, True, ScalePolicyReason.PAUSED, "spec.paused is true"),),
                current_replicas=current,
            )
            return float(spec.polling_interval)
        readings = await self.sources.read_all(spec)
        if any(r.value is None for r in readings.values()):
            self.sources.forget_secrets()
        outcome = decide(spec, readings, current, self.state, time.monotonic(), timestamps.now())
        await self._apply(body, spec, current, outcome)
        return float(spec.polling_interval)

    async def _read_target(self, body: kube.JsonDict, spec: ScalePolicySpec) -> kube.JsonDict | None:
        target = f"{spec.target.kind} {spec.target.name}"
        try:
            scale = await kube.read_scale(spec.target.kind, self.status.namespace, spec.target.name)
        except kube.Forbidden:
            message = f"the operator is not allowed to read {target}/scale (check its RBAC)"
            await self._stall(body, ScalePolicyReason.TARGET_FORBIDDEN, message, ScalePhase.STALLED)
            return None
        if scale is None:
            message = f"{target} not found in namespace {self.status.namespace}; looking again in 10s"
            await self._stall(body, ScalePolicyReason.TARGET_NOT_FOUND, message, ScalePhase.PENDING)
        return scale

    async def _apply(
        self, body: kube.JsonDict, spec: ScalePolicySpec, current: int, outcome: Outcome
    ) -> None:
        labels = (self.status.namespace, self.status.name)
        metrics.DESIRED.labels(*labels).set(outcome.replicas)
        metrics.MIN.labels(*labels).set(outcome.floor)
        metrics.MAX.labels(*labels).set(outcome.ceiling)
        metrics.FALLBACK_ACTIVE.labels(*labels).set(1 if outcome.falling_back else 0)
        previous = self.status.wire.get("lastDecision") or {}
        fields: dict[str, object] = {"desired_replicas": outcome.replicas, "current_replicas": current}
        # A new count or a new deciding trigger is a new decision; a new value alone is not.
        if (outcome.replicas, outcome.trigger) != (previous.get("replicas"), previous.get("trigger")):
            fields["last_decision"] = {
                "replicas": outcome.replicas,
                "trigger": outcome.trigger,
                "value": outcome.value,
                "reason": outcome.reason,
            }
        if outcome.replicas != current and not spec.dry_run:
            await kube.apply_replicas(
                spec.target.kind, self.status.namespace, spec.target.name, outcome.replicas
            )
            self.state.memory.changes.append((time.monotonic(), outcome.replicas - current))
            direction = "up" if outcome.replicas > current else "down"
            metrics.SCALE_EVENTS.labels(*labels, direction).inc()
            metrics.CURRENT.labels(*labels).set(outcome.replicas)
            fields["current_replicas"] = outcome.replicas
            fields["last_scale_time"] = timestamps.now()
            target = f"{spec.target.kind} {spec.target.name}"
            message = f"{target} scaled from {current} to {outcome.replicas}: {outcome.reason}"
            log.info(
                "scaled",
                namespace=labels[0],
                scalepolicy=labels[1],
                replicas=outcome.replicas,
                reason=outcome.reason,
            )
            await kube.event(body, "Normal", ScalePolicyReason.SCALED, message)
        summary = f"scaling {spec.target.kind} {spec.target.name}"
        if spec.dry_run:
            summary = f"dry run: deciding for {spec.target.kind} {spec.target.name} without changing it"
        was = self.status.condition(FALLBACK) or {}
        await self.status.write(
            "ready",
            ScalePhase.READY,
            ScalePolicyReason.DRY_RUN if spec.dry_run else ScalePolicyReason.TARGET_FOUND,
            summary,
            self._flags(spec, outcome),
            **fields,
        )
        failing = self._flags(spec, outcome)[2]
        changed = (was.get("reason"), was.get("status")) != (failing.reason, str(failing.on))
        if failing.reason == ScalePolicyReason.TRIGGER_FAILING and changed:  # failing starts, or the fallback
            await kube.event(body, "Warning", ScalePolicyReason.TRIGGER_FAILING, failing.message)

    def _flags(self, spec: ScalePolicySpec, outcome: Outcome) -> tuple[Flag, ...]:
        if outcome.active or outcome.windows:
            reason = ScalePolicyReason.TRIGGER_ACTIVE if outcome.active else ScalePolicyReason.WINDOW_OPEN
            active = Flag(ACTIVE, True, reason, f"active: {', '.join(outcome.active + outcome.windows)}")
        else:
            active = Flag(
                ACTIVE,
                False,
                ScalePolicyReason.NO_TRIGGER_ACTIVE,
                "no trigger is above its activation threshold",
            )
        if outcome.at_maximum:
            limited = Flag(
                SCALING_LIMITED, True, ScalePolicyReason.AT_MAXIMUM, "the triggers want more than the maximum"
            )
        elif outcome.rate_limited:
            limited = Flag(
                SCALING_LIMITED, True, ScalePolicyReason.RATE_LIMITED, "a behavior policy limits the change"
            )
        else:
            limited = Flag(
                SCALING_LIMITED,
                False,
                ScalePolicyReason.WITHIN_LIMITS,
                "the desired count is within the limits",
            )
        if outcome.falling_back and spec.fallback:
            failing = ", ".join(outcome.falling_back)
            fallback = Flag(
                FALLBACK,
                True,
                ScalePolicyReason.TRIGGER_FAILING,
                f"{failing} failed {spec.fallback.failure_threshold} or more polls in a row; "
                f"holding at least {spec.fallback.replicas} replicas and never scaling down "
                f"({'; '.join(outcome.failures)})",
            )
        elif outcome.failures:
            fallback = Flag(
                FALLBACK,
                False,
                ScalePolicyReason.TRIGGER_FAILING,
                f"{'; '.join(outcome.failures)}; never scaling down while it fails",
            )
        else:
            fallback = Flag(
                FALLBACK, False, ScalePolicyReason.METRICS_AVAILABLE, "every trigger's source answers"
            )
        paused = Flag(PAUSED, False, ScalePolicyReason.NOT_PAUSED, "spec.paused is false")
        return active, limited, fallback, paused

    async def _stall(self, body: kube.JsonDict, reason: str, message: str, phase: ScalePhase) -> None:
        """Stalled (invalid spec, conflict, target missing): one Event when it starts, not every poll."""
        was = self.status.condition("Stalled") or {}
        await self.status.write("stalled", phase, reason, message)
        if was.get("status") != "True" or was.get("reason") != reason:
            await kube.event(body, "Warning", reason, message)
            log.warning(
                "scalepolicy stalled",
                namespace=self.status.namespace,
                scalepolicy=self.status.name,
                reason=reason,
                message=message,
            )

    def forget(self) -> None:
        """The daemon ends: close the sources' connections and drop the policy's series."""
        self.sources.close()
        metrics.forget_policy(self.status.namespace, self.status.name, self.triggers)
