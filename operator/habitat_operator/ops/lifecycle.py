"""What a one-shot object's step tells its handler: done, or look again later."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetryLater:
    """Run this object's step again after `seconds` (waiting for something, or a retry's backoff)."""

    seconds: float
