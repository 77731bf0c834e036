"""The convergent policy of the reconcile core (core.py): Migration, ScalePolicy, the next continuous kind.

A convergent object never ends: it is Ready while what its spec asks holds, and its daemon looks
again when an input changes (its spec, a ConfigMap it reads) or when its period ends. Outcomes:

- success: Ready, and `Recheck(period)`: done for now.
- `WaitingError`: as the core says (Stalled or Reconciling, looked at again every `recheck_seconds`).
- `RetryableError`, or an exception nobody expected: retried under the spec's retry policy with a
  doubling backoff, then failed; a kind with no retry policy (ScalePolicy) fails at once.
- `PermanentError`, an invalid spec, or retries used up: `failed_phase` with Stalled, an Event and a
  log line once (not on every look that finds the same). A kind that `retries_failed` looks again
  every `recheck_seconds` (ScalePolicy: RBAC may be granted, the target created); one that does
  not waits for a change of its inputs, which wakes it (Migration: running the same spec on the
  same source again would fail the same way).
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, TypeVar

from habitat_operator.api.common import Phase, ResourceStatus, RetryPolicy
from habitat_operator.controllers.base.core import Recheck, RetryLater, Run
from habitat_operator.controllers.base.status import Edit
from habitat_operator.errors import OperationError

# A failed object that waits for a change of its inputs: this only bounds its daemon's sleep.
STOPPED_SECONDS = 86400.0

SpecT = TypeVar("SpecT")
StatusT = TypeVar("StatusT", bound=ResourceStatus)


class ConvergentRun(Run[SpecT, StatusT]):
    """One look at one object of a convergent kind."""

    failed_phase: ClassVar[StrEnum] = Phase.FAILED
    retries_failed: ClassVar[bool] = False

    # ---------------------------------------------------------------- what each kind may supply

    def retry_policy(self, spec: SpecT) -> RetryPolicy | None:
        """How a retryable failure is retried; None: it fails at once."""
        return None

    def attempts(self) -> int:
        """Retries of the current run so far, as status records them."""
        return 0

    def record_failure(self, error: OperationError, final: bool) -> None:
        """The kind's metrics for a failed look (final: no retry follows)."""

    # ---------------------------------------------------------------- the policy

    async def fail(self, reason: StrEnum, message: str, *edits: Edit[StatusT]) -> RetryLater:
        await self.stall(self.failed_phase, reason, message, *edits)
        if self.retries_failed:
            return RetryLater(self.recheck_seconds)
        return Recheck(STOPPED_SECONDS)

    async def retry_or_fail(self, spec: SpecT, error: OperationError) -> RetryLater | None:
        policy = self.retry_policy(spec)
        if policy is None or not error.retryable:
            self.record_failure(error, final=True)
            return await self.fail(error.reason, error.message)
        attempts = self.attempts() + 1
        if attempts > policy.limit:
            self.record_failure(error, final=True)
            return await self.fail(error.reason, f"{error.message}; no retries left")
        self.record_failure(error, final=False)
        return await self.retry(policy, attempts, error)
