"""How a one-shot object's step ends, the same way for every kind: done, failed, or look again later."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from habitat_operator import kube
from habitat_operator.conditions import one_line
from habitat_operator.status import StatusReporter

# Something an object needs (a Secret, a Backup) may be applied a moment later (GitOps sync order).
RECHECK_SECONDS = 30.0

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RetryLater:
    """Run this object's step again after `seconds` (waiting for something, or a retry's backoff)."""

    seconds: float


async def recheck_later(reporter: StatusReporter, reason: str, message: str) -> RetryLater:
    """Stalled on something missing, but not failed: it is looked for again every RECHECK_SECONDS."""
    await reporter.write(
        "stalled", "Pending", reason, f"{message}; checking again every {RECHECK_SECONDS:.0f}s"
    )
    return RetryLater(RECHECK_SECONDS)


async def end_failed(
    reporter: StatusReporter, body: kube.JsonDict, reason: str, message: str, **fields: Any
) -> None:
    """Ends a run as Failed: Stalled with the reason in status, an Event and a log line, all one line."""
    message = one_line(message)
    await reporter.write(
        "stalled",
        "Failed",
        reason,
        message,
        completedAt=kube.timestamp(kube.now()),
        message=message,
        **fields,
    )
    kind = body["kind"]
    log.warning(
        f"{kind.lower()} failed",
        kind=kind,
        namespace=reporter.namespace,
        name=reporter.name,
        reason=reason,
        error=message,
    )
    await kube.event(body, "Warning", reason, message)
