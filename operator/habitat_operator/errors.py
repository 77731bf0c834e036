"""The failures an operation expects, as classes that say what the caller should do about them.

- `PermanentError`: trying again will not help; the run ends Failed with the reason.
- `RetryableError`: trying again later may succeed; the run is retried under its retry policy.
- `WaitingError`: something the run needs is not there yet (a Secret, a Backup); it is looked for
  again, without counting as an attempt.

Each carries a reason, a CamelCase `StrEnum` member from `habitat_operator.api`, and a message of
one line that never holds credentials: callers redact anything that came from a connection string.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

MESSAGE_LIMIT = 500


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """Collapses whitespace (newlines included) and caps the length: status messages, Events, logs."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    return flat[: limit - 1].rstrip() + "…"


class OperationError(Exception):
    """An expected failure of an operation; catch this to handle all three kinds."""

    retryable: ClassVar[bool] = False

    def __init__(self, reason: StrEnum, message: str = "") -> None:
        self.reason = reason
        self.message = one_line(message) or str(reason)
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason.value!r}, {self.message!r})"


class PermanentError(OperationError):
    """Fails the run: the spec, the data or the environment must change first."""


class RetryableError(OperationError):
    """A transient failure (a server down, a lock held): the run is tried again after a backoff."""

    retryable = True


class WaitingError(OperationError):
    """Something the run needs does not exist yet, or is not ready: look again later."""


class WaitingOnProgress(WaitingError):
    """Something the run needs is on its way (a Backup still running): it is working, not stuck."""
