"""The reconcile core every kind shares: one step of one object, from its body to its status.

A step validates the spec (an invalid one is Stalled with `InvalidSpec` naming the field), runs the
kind's work (`execute`), and turns every outcome into status, an Event, a log line and a metric the
same way for every kind:

- `WaitingError`: Stalled with the reason (Reconciling for `WaitingOnProgress`: what it needs is on
  its way), looked at again every `recheck_seconds`; not an attempt.
- `RetryableError`, or any exception nobody expected: `retry_or_fail`, the policy's answer.
- `PermanentError`: `fail`, the policy's terminal or stalled state.

Two policies build on it: `OneShotRun` (lifecycle.py; ends Succeeded or Failed: a Backup's run, a
Restore, a ReplayJob) and `ConvergentRun` (convergent.py; stays Ready and looks again when its input
changes or its period ends: Migration, ScalePolicy). A step returns when to run again: `RetryLater`
when it asks to be run again (waiting, a retry's backoff), `Recheck` when it is done for now (a
convergent kind's period), None when there is nothing left to do.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Generic, TypeVar

import structlog
from pydantic import ValidationError

from habitat_operator.api.common import ApiModel, KindInfo, Phase, Reason, ResourceStatus, RetryPolicy
from habitat_operator.config import OperatorConfig
from habitat_operator.controllers.base import kube
from habitat_operator.controllers.base.conditions import STALLED, Flag
from habitat_operator.controllers.base.slots import OperationSlots
from habitat_operator.controllers.base.status import Edit, StatusReporter
from habitat_operator.controllers.base.validation import describe_validation_error
from habitat_operator.durations import parse_duration
from habitat_operator.errors import (
    OperationError,
    RetryableError,
    WaitingError,
    WaitingOnProgress,
    one_line,
)

# Something an object needs (a Secret, a Backup) may be applied a moment later (GitOps sync order).
RECHECK_SECONDS = 30.0
MAX_BACKOFF_SECONDS = 3600.0

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RetryLater:
    """Run this object's step again after `seconds` (waiting for something, or a retry's backoff)."""

    seconds: float


@dataclass(frozen=True)
class Recheck(RetryLater):
    """Done for now: look again after `seconds` (a convergent kind's period), or when woken."""


SpecT = TypeVar("SpecT")
StatusT = TypeVar("StatusT", bound=ResourceStatus)


def backoff_seconds(policy: RetryPolicy, attempts: int) -> float:
    """The wait before retry number `attempts`: `backoff`, doubling with each retry, capped."""
    first = parse_duration(policy.backoff).total_seconds()
    return float(min(first * 2 ** (attempts - 1), MAX_BACKOFF_SECONDS))


def unexpected(error: Exception) -> RetryableError:
    """An exception no step expected, as a retryable failure with a readable one-line reason."""
    detail = str(error) or "no detail"
    return RetryableError(Reason.UNEXPECTED_ERROR, f"unexpected {type(error).__name__}: {detail}")


class Run(ABC, Generic[SpecT, StatusT]):
    """One object of a kind, stepped by `reconcile`; a policy subclass decides what failures mean."""

    info: ClassVar[KindInfo]
    spec_model: ClassVar[type[ApiModel]]
    status_model: ClassVar[type[ResourceStatus]]
    pending_phase: ClassVar[StrEnum] = Phase.PENDING
    recheck_seconds: ClassVar[float] = RECHECK_SECONDS

    def __init__(self, body: kube.JsonDict, config: OperatorConfig, slots: OperationSlots) -> None:
        self.body = body
        self.config = config
        self.slots = slots
        self.namespace: str = body["metadata"]["namespace"]
        self.name: str = body["metadata"]["name"]
        self.reporter: StatusReporter[StatusT] = StatusReporter(
            self.info.plural,
            body,
            self.status_model,  # type: ignore[arg-type]  # the subclass pairs it with StatusT
        )
        self.log = log.bind(kind=self.info.kind, namespace=self.namespace, name=self.name)

    @property
    def status(self) -> StatusT:
        return self.reporter.status

    # ---------------------------------------------------------------- what each kind supplies

    @abstractmethod
    async def execute(self, spec: SpecT) -> RetryLater | None:
        """The work. Raises OperationErrors; returns when to run again (None: nothing left to do)."""

    def check_spec(self, spec: SpecT) -> None:
        """Checks the schema cannot make (raise ValueError): an invalid spec, like a schema error."""

    # ---------------------------------------------------------------- what each policy supplies

    @abstractmethod
    async def retry_or_fail(self, spec: SpecT, error: OperationError) -> RetryLater | None:
        """A failed step: retried, or failed for good."""

    @abstractmethod
    async def fail(self, reason: StrEnum, message: str, *edits: Edit[StatusT]) -> RetryLater | None:
        """Stalled, with the reason in status, an Event and a log line."""

    def observe(self, body: kube.JsonDict) -> None:
        """The object's latest body, for a run that lives across steps (its daemon's memory)."""
        self.body = body
        self.reporter.observe(body)

    async def cancelled(self) -> None:
        """The object was deleted while its step ran, and the step was cancelled."""

    async def begin(self, spec: SpecT) -> RetryLater | None:
        """What the policy does before the work; a RetryLater (or None, when `done`) ends the step."""
        return None

    def done(self) -> bool:
        """Nothing left to do for this object (a one-shot run that ended)."""
        return False

    # ---------------------------------------------------------------- the step

    async def reconcile(self) -> RetryLater | None:
        """One step: brings the object closer to what its spec asks; says when to run it again."""
        if self.done():
            return None
        try:
            spec: SpecT = self.spec_model.model_validate(self.body.get("spec") or {})  # type: ignore[assignment]
            self.check_spec(spec)
        except ValidationError as error:
            return await self.fail(Reason.INVALID_SPEC, describe_validation_error(error))
        except ValueError as error:
            return await self.fail(Reason.INVALID_SPEC, f"invalid spec: {one_line(str(error))}")
        try:
            return await self.begin(spec) or await self.execute(spec)
        except WaitingError as error:
            return await self.wait(error.reason, error.message, isinstance(error, WaitingOnProgress))
        except OperationError as error:
            return await self.retry_or_fail(spec, error)
        except Exception as error:  # a step that failed in a way nobody planned for still ends in status
            self.log.exception("unexpected error")
            return await self.retry_or_fail(spec, unexpected(error))

    # ---------------------------------------------------------------- shared outcomes

    def slot(self, database: str) -> AbstractAsyncContextManager[None]:
        """One of the operator's operation slots and one of `database`'s, held for the block; the
        object says Queued while it waits for them."""

        async def queued(why: str) -> None:
            await self.reporter.write("reconciling", self.pending_phase, Reason.QUEUED, f"queued: {why}")

        return self.slots.hold(database, queued)

    async def wait(self, reason: StrEnum, message: str, progressing: bool = False) -> RetryLater:
        """Stalled on something missing (Reconciling on something on its way), but not failed: it is
        looked for again every `recheck_seconds`."""
        await self.reporter.write(
            "reconciling" if progressing else "stalled",
            self.pending_phase,
            reason,
            f"{message}; checking again every {self.recheck_seconds:.0f}s",
        )
        return RetryLater(self.recheck_seconds)

    async def retry(
        self, policy: RetryPolicy, attempts: int, error: OperationError, *edits: Edit[StatusT]
    ) -> RetryLater:
        """Attempt `attempts` failed and may be retried: Reconciling with the reason and when."""
        delay = backoff_seconds(policy, attempts)
        message = f"{error.message}; retry {attempts}/{policy.limit} in {delay:.0f}s"
        self.log.warning("attempt failed", reason=error.reason.value, error=error.message, retry_in=delay)
        await self.reporter.write(
            "reconciling",
            self.pending_phase,
            error.reason,
            message,
            *edits,
            *self.retry_edits(attempts, message),
        )
        await kube.event(self.body, "Warning", error.reason, message)
        return RetryLater(delay)

    def retry_edits(self, attempts: int, message: str) -> tuple[Edit[StatusT], ...]:
        """How a retry shows in the kind's status beyond its conditions (attempts, message)."""
        return ()

    async def stall(
        self,
        phase: StrEnum,
        reason: StrEnum,
        message: str,
        *edits: Edit[StatusT],
        flags: tuple[Flag, ...] = (),
        drop: tuple[str, ...] = (),
    ) -> None:
        """Stalled in `phase`, with an Event and a log line when the stall is news (not again on each
        step that finds the same reason for the same generation)."""
        message = one_line(message)
        news = not (
            self.status.phase == phase
            and self.reporter.condition(STALLED)
            and self.reporter.condition_reason(STALLED) == reason
            and self.status.observed_generation == self.reporter.generation
        )
        await self.reporter.write("stalled", phase, reason, message, *edits, flags=flags, drop=drop)
        if news:
            self.log.warning(f"{self.info.kind.lower()} {phase.lower()}", reason=reason.value, error=message)
            await kube.event(self.body, "Warning", reason, message)
