"""The one-shot policy of the reconcile core (core.py): a Backup's run, a Restore, a ReplayJob.

A step runs until the object is Succeeded or Failed, and may be cut off at any line: every change of
state is written to status before the work it announces, so the next step (after a crash, on the
operator's restart) sees `Running` with nobody running it, records the attempt as interrupted and
retries it or fails it. The kind supplies only its work (`execute`); the core and this policy turn
its outcome into status, Events, logs and metrics:

- `WaitingError`: Pending, Stalled with the reason, looked at again every RECHECK_SECONDS; not an attempt.
  `WaitingOnProgress` (what it needs is on its way) is Reconciling instead: kstatus says InProgress.
- `RetryableError`, or any exception nobody expected: retried under `spec.retry` with a doubling
  backoff, then Failed.
- `PermanentError`, an invalid spec, or retries used up: Failed, with an Event and a log line.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import ClassVar, Protocol, TypeVar

from habitat_operator import timestamps
from habitat_operator.api.common import Phase, Reason, RetryPolicy, RunStatus
from habitat_operator.config import OperatorConfig
from habitat_operator.controllers.base import kube
from habitat_operator.controllers.base.core import RECHECK_SECONDS, RetryLater, Run, backoff_seconds
from habitat_operator.controllers.base.slots import OperationSlots
from habitat_operator.controllers.base.status import TERMINAL_PHASES, Edit
from habitat_operator.errors import OperationError, one_line
from habitat_operator.metrics import OPERATIONS_CANCELLED

__all__ = ["RECHECK_SECONDS", "OneShotRun", "RetryLater", "backoff_seconds"]


class RetryableSpec(Protocol):
    """A one-shot kind's spec: whatever else it holds, it says how to retry."""

    @property
    def retry(self) -> RetryPolicy: ...


SpecT = TypeVar("SpecT", bound=RetryableSpec)
StatusT = TypeVar("StatusT", bound=RunStatus)


class OneShotRun(Run[SpecT, StatusT]):
    """One step of one object of a one-shot kind; create one per step with the object's body."""

    status_model: ClassVar[type[RunStatus]]

    def __init__(self, body: kube.JsonDict, config: OperatorConfig, slots: OperationSlots) -> None:
        super().__init__(body, config, slots)
        self.attempts = self.reporter.status.attempts or 0
        self.resumed = self.reporter.status.phase is Phase.RUNNING
        self._started: float | None = None

    # ---------------------------------------------------------------- what each kind may supply

    async def clean_up_interrupted(self, spec: SpecT) -> None:
        """Undoes what an interrupted attempt may have left behind (e.g. a scratch database)."""

    def record_failure(self, error: OperationError, elapsed: float | None) -> None:
        """The kind's metrics for a failed attempt (elapsed is None when it never started)."""

    def record_outcome(self, succeeded: bool) -> None:
        """The kind's metrics for a run that ended, Succeeded or Failed."""

    def failure_edit(self, error: OperationError) -> Edit[StatusT] | None:
        """Status fields the kind sets when a run fails with `error`."""
        return None

    def explain(self, message: str) -> str:
        """The failure message as the user reads it (e.g. with how to roll back)."""
        return message

    def cancellation_message(self) -> str:
        """What the Event says when the object is deleted while its step runs."""
        return f"deleted while running: attempt {self.attempts} was stopped and its partial work removed"

    # ---------------------------------------------------------------- the policy

    def done(self) -> bool:
        return self.status.phase in TERMINAL_PHASES

    async def begin(self, spec: SpecT) -> RetryLater | None:
        if self.resumed:
            await self.clean_up_interrupted(spec)
            await self._interrupted(spec.retry)
        return None

    async def start(self, reason: StrEnum, message: str, *edits: Edit[StatusT]) -> None:
        """Marks an attempt as running, in status and an Event, before its work begins."""
        self.attempts += 1
        self._started = time.monotonic()
        text = f"attempt {self.attempts}: {message}"
        attempts, started = self.attempts, timestamps.now()

        def running(status: RunStatus) -> None:
            status.attempts, status.started_at = attempts, started
            status.completed_at = status.message = None

        await self.reporter.write("reconciling", Phase.RUNNING, reason, text, running, *edits)
        await kube.event(self.body, "Normal", Reason.STARTED, text)

    @property
    def elapsed(self) -> float:
        return 0.0 if self._started is None else time.monotonic() - self._started

    async def succeed(self, message: str, *edits: Edit[StatusT], event_message: str | None = None) -> None:
        """Ends the run as Succeeded. Metrics first: whoever sees Ready may scrape at once."""
        self.record_outcome(True)
        completed = timestamps.now()

        def succeeded(status: RunStatus) -> None:
            status.completed_at, status.message = completed, None

        await self.reporter.write("ready", Phase.SUCCEEDED, Reason.SUCCEEDED, message, succeeded, *edits)
        self.log.info(f"{self.info.kind.lower()} succeeded", detail=message, seconds=round(self.elapsed, 2))
        await kube.event(self.body, "Normal", Reason.SUCCEEDED, event_message or message)

    async def fail(self, reason: StrEnum, message: str, *edits: Edit[StatusT]) -> None:
        """Ends the run as Failed: Stalled with the reason in status, an Event and a log line."""
        message = one_line(self.explain(message))
        self.record_outcome(False)
        completed = timestamps.now()

        def failed(status: RunStatus) -> None:
            status.completed_at, status.message = completed, message

        await self.stall(Phase.FAILED, reason, message, failed, *edits)

    def retry_edits(self, attempts: int, message: str) -> tuple[Edit[StatusT], ...]:
        def retrying(status: RunStatus) -> None:
            status.attempts, status.message = attempts, message

        return (retrying,)

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

    async def retry_or_fail(self, spec: SpecT, error: OperationError) -> RetryLater | None:
        policy = spec.retry
        elapsed = self.elapsed if self._started is not None else None
        if self._started is None and not isinstance(error, _Exhausted):
            self.attempts += 1  # it failed before it could start: that was an attempt all the same
        self.record_failure(error, elapsed)
        if not error.retryable or self.attempts > policy.limit:
            attempts = self.attempts or None

            def counted(status: RunStatus) -> None:
                status.attempts = attempts

            kind_edit = self.failure_edit(error)
            await self.fail(error.reason, error.message, counted, *([kind_edit] if kind_edit else []))
            return None
        return await self.retry(policy, self.attempts, error)


class _Exhausted(OperationError):
    """An interrupted attempt with no retries left: fails as it is."""
