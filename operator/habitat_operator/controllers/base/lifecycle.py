"""One lifecycle for every one-shot kind (a Backup, a Restore; a Migration, a ReplayJob next).

A step runs until the object is Succeeded or Failed, and may be cut off at any line: every change of
state is written to status before the work it announces, so the next step (after a crash, on the
operator's restart) sees `Running` with nobody running it, records the attempt as interrupted and
retries it or fails it. The kind supplies only its work (`execute`); the lifecycle turns its
outcome into status, Events, logs and metrics:

- `WaitingError`: Pending, Stalled with the reason, looked at again every RECHECK_SECONDS; not an attempt.
  `WaitingOnProgress` (what it needs is on its way) is Reconciling instead: kstatus says InProgress.
- `RetryableError`, or any exception nobody expected: retried under `spec.retry` with a doubling
  backoff, then Failed.
- `PermanentError`, an invalid spec, or retries used up: Failed, with an Event and a log line.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import structlog
from pydantic import ValidationError

from habitat_operator import timestamps
from habitat_operator.api.common import ApiModel, KindInfo, Phase, Reason, RetryPolicy, RunStatus
from habitat_operator.config import OperatorConfig
from habitat_operator.controllers.base import kube
from habitat_operator.controllers.base.slots import OperationSlots
from habitat_operator.controllers.base.status import TERMINAL_PHASES, StatusReporter
from habitat_operator.controllers.base.validation import describe_validation_error
from habitat_operator.durations import parse_duration
from habitat_operator.errors import OperationError, RetryableError, WaitingError, WaitingOnProgress, one_line
from habitat_operator.metrics import OPERATIONS_CANCELLED

# Something an object needs (a Secret, a Backup) may be applied a moment later (GitOps sync order).
RECHECK_SECONDS = 30.0
MAX_BACKOFF_SECONDS = 3600.0

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RetryLater:
    """Run this object's step again after `seconds` (waiting for something, or a retry's backoff)."""

    seconds: float


class RetryableSpec(Protocol):
    """A one-shot kind's spec: whatever else it holds, it says how to retry."""

    @property
    def retry(self) -> RetryPolicy: ...


SpecT = TypeVar("SpecT", bound=RetryableSpec)
StatusT = TypeVar("StatusT", bound=RunStatus)


def backoff_seconds(policy: RetryPolicy, attempts: int) -> float:
    """The wait before retry number `attempts`: `backoff`, doubling with each retry, capped."""
    first = parse_duration(policy.backoff).total_seconds()
    return float(min(first * 2 ** (attempts - 1), MAX_BACKOFF_SECONDS))


def unexpected(error: Exception) -> RetryableError:
    """An exception no step expected, as a retryable failure with a readable one-line reason."""
    detail = str(error) or "no detail"
    return RetryableError(Reason.UNEXPECTED_ERROR, f"unexpected {type(error).__name__}: {detail}")


class OneShotRun(ABC, Generic[SpecT, StatusT]):
    """One step of one object of a one-shot kind; create one per step with the object's body."""

    info: ClassVar[KindInfo]
    spec_model: ClassVar[type[ApiModel]]
    status_model: ClassVar[type[RunStatus]]

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
        self.attempts = self.reporter.status.attempts or 0
        self.resumed = self.reporter.status.phase is Phase.RUNNING
        self._started: float | None = None
        self.log = log.bind(kind=self.info.kind, namespace=self.namespace, name=self.name)

    @property
    def status(self) -> StatusT:
        return self.reporter.status

    # ---------------------------------------------------------------- what each kind supplies

    @abstractmethod
    async def execute(self, spec: SpecT) -> RetryLater | None:
        """The work: calls `start` before touching anything, and `succeed` at the end. Raises
        OperationErrors; may return RetryLater to wait for something without an error."""

    async def clean_up_interrupted(self, spec: SpecT) -> None:
        """Undoes what an interrupted attempt may have left behind (e.g. a scratch database)."""

    def record_failure(self, error: OperationError, elapsed: float | None) -> None:
        """The kind's metrics for a failed attempt (elapsed is None when it never started)."""

    def record_outcome(self, succeeded: bool) -> None:
        """The kind's metrics for a run that ended, Succeeded or Failed."""

    def failure_fields(self, error: OperationError) -> dict[str, Any]:
        """Status fields the kind sets when a run fails with `error`."""
        return {}

    def explain(self, message: str) -> str:
        """The failure message as the user reads it (e.g. with how to roll back)."""
        return message

    def cancellation_message(self) -> str:
        """What the Event says when the object is deleted while its step runs."""
        return f"deleted while running: attempt {self.attempts} was stopped and its partial work removed"

    # ---------------------------------------------------------------- the lifecycle

    async def reconcile(self) -> RetryLater | None:
        """Brings the object one step closer to a terminal phase; RetryLater asks to be called again."""
        if self.status.phase in TERMINAL_PHASES:
            return None
        try:
            spec: SpecT = self.spec_model.model_validate(self.body.get("spec") or {})  # type: ignore[assignment]
        except ValidationError as error:
            await self.fail(Reason.INVALID_SPEC, describe_validation_error(error))
            return None
        policy = spec.retry
        try:
            if self.resumed:
                await self.clean_up_interrupted(spec)
                await self._interrupted(policy)
            return await self.execute(spec)
        except WaitingError as error:
            return await self.wait(error.reason, error.message, isinstance(error, WaitingOnProgress))
        except OperationError as error:
            return await self._retry_or_fail(policy, error)
        except Exception as error:  # a step that failed in a way nobody planned for still ends in status
            self.log.exception("unexpected error")
            return await self._retry_or_fail(policy, unexpected(error))

    def slot(self, database: str) -> AbstractAsyncContextManager[None]:
        """One of the operator's operation slots and one of `database`'s, held for the block; the
        object says Queued while it waits for them."""

        async def queued(why: str) -> None:
            await self.reporter.write("reconciling", Phase.PENDING, Reason.QUEUED, f"queued: {why}")

        return self.slots.hold(database, queued)

    async def start(self, reason: StrEnum, message: str, **fields: Any) -> None:
        """Marks an attempt as running, in status and an Event, before its work begins."""
        self.attempts += 1
        self._started = time.monotonic()
        text = f"attempt {self.attempts}: {message}"
        await self.reporter.write(
            "reconciling",
            Phase.RUNNING,
            reason,
            text,
            attempts=self.attempts,
            started_at=timestamps.now(),
            completed_at=None,
            message=None,
            **fields,
        )
        await kube.event(self.body, "Normal", Reason.STARTED, text)

    @property
    def elapsed(self) -> float:
        return 0.0 if self._started is None else time.monotonic() - self._started

    async def succeed(self, message: str, event_message: str | None = None, **fields: Any) -> None:
        """Ends the run as Succeeded. Metrics first: whoever sees Ready may scrape at once."""
        self.record_outcome(True)
        await self.reporter.write(
            "ready",
            Phase.SUCCEEDED,
            Reason.SUCCEEDED,
            message,
            completed_at=timestamps.now(),
            message=None,
            **fields,
        )
        self.log.info(f"{self.info.kind.lower()} succeeded", detail=message, seconds=round(self.elapsed, 2))
        await kube.event(self.body, "Normal", Reason.SUCCEEDED, event_message or message)

    async def wait(self, reason: StrEnum, message: str, progressing: bool = False) -> RetryLater:
        """Stalled on something missing (Reconciling on something on its way), but not failed: it is
        looked for again every RECHECK_SECONDS."""
        await self.reporter.write(
            "reconciling" if progressing else "stalled",
            Phase.PENDING,
            reason,
            f"{message}; checking again every {RECHECK_SECONDS:.0f}s",
        )
        return RetryLater(RECHECK_SECONDS)

    async def fail(self, reason: StrEnum, message: str, **fields: Any) -> None:
        """Ends the run as Failed: Stalled with the reason in status, an Event and a log line."""
        message = one_line(self.explain(message))
        self.record_outcome(False)
        await self.reporter.write(
            "stalled",
            Phase.FAILED,
            reason,
            message,
            completed_at=timestamps.now(),
            message=message,
            **fields,
        )
        self.log.warning(f"{self.info.kind.lower()} failed", reason=reason.value, error=message)
        await kube.event(self.body, "Warning", reason, message)

    async def cancelled(self) -> None:
        """The object was deleted while its step ran, and the step was cancelled (its client tool
        killed, partial files removed, locks released): says so before the object goes."""
        message = self.cancellation_message()
        # Operator-wide: the object's own series go with it.
        OPERATIONS_CANCELLED.labels(self.info.kind).inc()
        self.log.warning(f"{self.info.kind.lower()} cancelled", attempt=self.attempts)
        await kube.event(self.body, "Warning", Reason.CANCELLED, message)

    async def _interrupted(self, policy: RetryPolicy) -> None:
        """Running with nobody running it: the operator stopped mid-run, and that attempt is over."""
        self.log.warning("previous attempt was interrupted", attempt=self.attempts)
        message = f"attempt {self.attempts} was interrupted; the operator restarted"
        await kube.event(self.body, "Warning", Reason.INTERRUPTED, message)
        if self.attempts > policy.limit:
            raise _Exhausted(Reason.INTERRUPTED, f"{message} and no retries are left")

    async def _retry_or_fail(self, policy: RetryPolicy, error: OperationError) -> RetryLater | None:
        elapsed = self.elapsed if self._started is not None else None
        if self._started is None and not isinstance(error, _Exhausted):
            self.attempts += 1  # it failed before it could start: that was an attempt all the same
        self.record_failure(error, elapsed)
        if not error.retryable or self.attempts > policy.limit:
            await self.fail(
                error.reason, error.message, attempts=self.attempts or None, **self.failure_fields(error)
            )
            return None
        delay = backoff_seconds(policy, self.attempts)
        message = f"{error.message}; retry {self.attempts}/{policy.limit} in {delay:.0f}s"
        self.log.warning("attempt failed", reason=error.reason.value, error=error.message, retry_in=delay)
        await self.reporter.write(
            "reconciling", Phase.PENDING, error.reason, message, attempts=self.attempts, message=message
        )
        await kube.event(self.body, "Warning", error.reason, message)
        return RetryLater(delay)


class _Exhausted(OperationError):
    """An interrupted attempt with no retries left: fails as it is."""
