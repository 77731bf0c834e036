"""One ScalePolicy's poll: check the spec, the claim on the target and the target, read the
triggers, decide, write the target's replicas, then the status (only when it changed).

A ScalePolicy is a convergent kind (controllers/base/convergent.py): Ready while it scales its
target, Stalled with the reason (and an Event when that starts) when it cannot: an invalid spec,
another policy's claim, RBAC that refuses the target's /scale, or any error nobody expected; it
looks again every RECHECK_SECONDS. Any line may be cut off by a crash: the replicas are written
before the status that reports them, and the next poll of a restarted operator reads the target
again, so it neither repeats nor loses a change. A restart forgets the stabilization history and
the cooldown's start, which can only delay a scale-down.

Besides the three kstatus conditions its status carries Active, ScalingLimited, Fallback and
Paused. Messages name triggers, never their values, so a queue that fills and drains without
changing the decision causes no write.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import structlog

from habitat_operator import timestamps
from habitat_operator.api.scalepolicy import (
    SCALE_POLICY,
    Decision,
    ScalePhase,
    ScalePolicyReason,
    ScalePolicySpec,
    ScalePolicyStatus,
)
from habitat_operator.config import OperatorConfig
from habitat_operator.controllers.base import kube
from habitat_operator.controllers.base.conditions import Flag
from habitat_operator.controllers.base.convergent import ConvergentRun
from habitat_operator.controllers.base.core import Recheck, RetryLater
from habitat_operator.controllers.base.slots import OperationSlots
from habitat_operator.controllers.scalepolicy import metrics
from habitat_operator.controllers.scalepolicy.conflicts import Autoscaler, standoff
from habitat_operator.controllers.scalepolicy.decision import (
    Outcome,
    PolicyState,
    Reading,
    decide,
    formula_of,
)
from habitat_operator.controllers.scalepolicy.sources import Sources, check_endpoints
from habitat_operator.errors import PermanentError

log = structlog.get_logger(__name__)

# A policy that cannot poll (invalid, in conflict, its target missing) looks again this often.
RECHECK_SECONDS = 10.0

ACTIVE = "Active"
SCALING_LIMITED = "ScalingLimited"
FALLBACK = "Fallback"
PAUSED = "Paused"


class ScaleTarget(Protocol):
    """The target's /scale subresource (controllers/base/kube.py, or a test's stand-in)."""

    async def read_scale(self, kind: str, namespace: str, name: str) -> kube.JsonDict | None: ...
    async def apply_replicas(self, kind: str, namespace: str, name: str, replicas: int) -> None: ...


class TriggerSources(Protocol):
    """Where the triggers' values come from (sources.py: RabbitMQ, Prometheus)."""

    async def read_all(self, spec: ScalePolicySpec) -> dict[str, Reading]: ...
    def forget_secrets(self) -> None: ...
    def close(self) -> None: ...


class _KubeScale:
    async def read_scale(self, kind: str, namespace: str, name: str) -> kube.JsonDict | None:
        return await kube.read_scale(kind, namespace, name)

    async def apply_replicas(self, kind: str, namespace: str, name: str, replicas: int) -> None:
        await kube.apply_replicas(kind, namespace, name, replicas)


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


class ScalePolicyRun(ConvergentRun[ScalePolicySpec, ScalePolicyStatus]):
    """A policy for as long as its daemon runs: its status, sources and the HPA's memory; each
    poll is a `reconcile` on the latest body (`observe`)."""

    info = SCALE_POLICY
    spec_model = ScalePolicySpec
    status_model = ScalePolicyStatus
    pending_phase = ScalePhase.PENDING
    failed_phase = ScalePhase.STALLED
    retries_failed = True
    recheck_seconds = RECHECK_SECONDS

    def __init__(
        self,
        body: kube.JsonDict,
        config: OperatorConfig,
        slots: OperationSlots,
        claims: Callable[[], Iterable[Claim]],
        autoscalers: Callable[[], Iterable[Autoscaler]],
        target: ScaleTarget | None = None,
        sources: TriggerSources | None = None,
    ) -> None:
        super().__init__(body, config, slots)
        self.claims, self.autoscalers = claims, autoscalers
        self.target = target or _KubeScale()
        self.sources = sources or Sources(self.namespace, self.name, config.allowed_metrics_endpoints)
        self.state = PolicyState()
        self.triggers: list[str] = []

    def check_spec(self, spec: ScalePolicySpec) -> None:
        formula_of(spec)
        check_endpoints(spec, self.config.allowed_metrics_endpoints)

    async def execute(self, spec: ScalePolicySpec) -> RetryLater:
        self.triggers = [t.name for t in spec.triggers]
        target = f"{spec.target.kind} {spec.target.name}"
        first = min(self.claims(), key=lambda c: (c.created, c.name), default=None)
        if first is not None and first.name != self.name:
            raise PermanentError(
                ScalePolicyReason.CONFLICT, f"ScalePolicy {first.name} already scales {target}"
            )
        if hpa := standoff(self.autoscalers(), spec.target, self.body["metadata"]["uid"]):
            raise PermanentError(hpa.reason, hpa.message)
        try:
            scale = await self.target.read_scale(spec.target.kind, self.namespace, spec.target.name)
        except kube.Forbidden:
            raise PermanentError(
                ScalePolicyReason.TARGET_FORBIDDEN,
                f"the operator is not allowed to read {target}/scale (check its RBAC)",
            ) from None
        if scale is None:
            message = f"{target} not found in namespace {self.namespace}; looking again in 10s"
            await self.stall(ScalePhase.PENDING, ScalePolicyReason.TARGET_NOT_FOUND, message)
            return RetryLater(RECHECK_SECONDS)
        current = int(scale.get("spec", {}).get("replicas") or 0)
        metrics.CURRENT.labels(self.namespace, self.name).set(current)
        if spec.paused:

            def paused(status: ScalePolicyStatus) -> None:
                status.current_replicas = current

            await self.reporter.write(
                "ready",
                ScalePhase.PAUSED,
                ScalePolicyReason.PAUSED,
                "paused: the triggers are not polled and the target is left alone",
                paused,
                flags=(Flag(PAUSED, True, ScalePolicyReason.PAUSED, "spec.paused is true"),),
            )
            return Recheck(float(spec.polling_interval))
        readings = await self.sources.read_all(spec)
        if any(r.value is None for r in readings.values()):
            self.sources.forget_secrets()
        outcome = decide(spec, readings, current, self.state, time.monotonic(), timestamps.now())
        await self._apply(spec, current, outcome)
        return Recheck(float(spec.polling_interval))

    async def _apply(self, spec: ScalePolicySpec, current: int, outcome: Outcome) -> None:
        labels = (self.namespace, self.name)
        metrics.DESIRED.labels(*labels).set(outcome.replicas)
        metrics.MIN.labels(*labels).set(outcome.floor)
        metrics.MAX.labels(*labels).set(outcome.ceiling)
        metrics.FALLBACK_ACTIVE.labels(*labels).set(1 if outcome.falling_back else 0)
        previous = self.status.last_decision or Decision()
        # A new count or a new deciding trigger is a new decision; a new value alone is not.
        decided = (outcome.replicas, outcome.trigger) != (previous.replicas, previous.trigger)
        replicas, scaled_at = current, None
        if outcome.replicas != current and not spec.dry_run:
            await self._scale(spec, outcome.replicas)
            self.state.memory.changes.append((time.monotonic(), outcome.replicas - current))
            direction = "up" if outcome.replicas > current else "down"
            metrics.SCALE_EVENTS.labels(*labels, direction).inc()
            metrics.CURRENT.labels(*labels).set(outcome.replicas)
            replicas, scaled_at = outcome.replicas, timestamps.now()
            target = f"{spec.target.kind} {spec.target.name}"
            message = f"{target} scaled from {current} to {outcome.replicas}: {outcome.reason}"
            log.info(
                "scaled",
                namespace=labels[0],
                scalepolicy=labels[1],
                replicas=outcome.replicas,
                reason=outcome.reason,
            )
            await kube.event(self.body, "Normal", ScalePolicyReason.SCALED, message)

        def scaled(status: ScalePolicyStatus) -> None:
            status.desired_replicas, status.current_replicas = outcome.replicas, replicas
            if scaled_at is not None:
                status.last_scale_time = scaled_at
            if decided:
                status.last_decision = Decision(
                    replicas=outcome.replicas,
                    trigger=outcome.trigger,
                    value=outcome.value,
                    reason=outcome.reason,
                )

        summary = f"scaling {spec.target.kind} {spec.target.name}"
        if spec.dry_run:
            summary = f"dry run: deciding for {spec.target.kind} {spec.target.name} without changing it"
        was = (self.reporter.condition(FALLBACK), self.reporter.condition_reason(FALLBACK))
        flags = self._flags(spec, outcome)
        await self.reporter.write(
            "ready",
            ScalePhase.READY,
            ScalePolicyReason.DRY_RUN if spec.dry_run else ScalePolicyReason.TARGET_FOUND,
            summary,
            scaled,
            flags=flags,
        )
        failing = flags[2]
        if failing.reason == ScalePolicyReason.TRIGGER_FAILING and was != (failing.on, failing.reason):
            # a trigger starts failing, or the fallback starts
            await kube.event(self.body, "Warning", ScalePolicyReason.TRIGGER_FAILING, failing.message)

    async def _scale(self, spec: ScalePolicySpec, replicas: int) -> None:
        """Writes the target's replicas; RBAC that refuses it stalls the policy, naming the permission."""
        kind, name = spec.target.kind, spec.target.name
        try:
            await self.target.apply_replicas(kind, self.namespace, name, replicas)
        except kube.Forbidden:
            resource = kube.scale_resource(kind)
            raise PermanentError(
                ScalePolicyReason.TARGET_FORBIDDEN,
                f"the operator is not allowed to patch {resource} (apps) in namespace {self.namespace}:"
                f" grant it the verb patch on {resource}; {kind} {name} was not scaled",
            ) from None

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

    def forget(self) -> None:
        """The daemon ends: close the sources' connections and drop the policy's series."""
        self.sources.close()
        metrics.forget_policy(self.namespace, self.name, self.triggers)
