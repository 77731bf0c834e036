"""The one exception the operations layer raises for expected failures."""

import re

_MAX_MESSAGE_CHARS = 500


class OperationError(Exception):
    """An operation failed for a reason a handler can put into status as is.

    `reason` is CamelCase (e.g. "DatabaseUnreachable", "DiskFull"); `retryable` says whether trying
    again later may succeed. The message is a single line and never holds credentials: callers
    redact anything that came from a connection string before building it.
    """

    def __init__(self, reason: str, message: str = "", *, retryable: bool = False) -> None:
        self.reason = reason
        self.retryable = retryable
        self.message = _one_line(message) or reason
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"OperationError({self.reason!r}, {self.message!r}, retryable={self.retryable})"


def _one_line(text: str) -> str:
    line = re.sub(r"\s+", " ", text).strip()
    if len(line) > _MAX_MESSAGE_CHARS:
        line = line[: _MAX_MESSAGE_CHARS - 1] + "…"
    return line
