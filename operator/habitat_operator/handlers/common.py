"""What every kind's Kopf glue shares: one-shot versus scheduled objects, and how each is driven."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import kopf

from habitat_operator import metrics
from habitat_operator.ops.lifecycle import RetryLater


def has_schedule(spec: kopf.Spec, **_: Any) -> bool:
    return bool(spec.get("schedule"))


def is_one_shot(spec: kopf.Spec, **_: Any) -> bool:
    return not spec.get("schedule")


async def run_once(kind: str, attempt: Awaitable[RetryLater | None]) -> None:
    """One step of a one-shot object; Kopf calls again after the delay it asks for.

    No Kopf retry limit: each kind counts its own attempts and ends Failed by itself.
    """
    with metrics.reconcile_timer(kind):
        retry = await attempt
    if retry:
        raise kopf.TemporaryError(f"{kind} not finished yet", delay=retry.seconds)


async def run_schedule(kind: str, tick: Callable[[], Awaitable[float]], stopped: kopf.DaemonStopped) -> None:
    """A schedule's daemon: tick, then sleep as long as the tick says (or until the object goes)."""
    while not stopped:
        with metrics.reconcile_timer(kind):
            delay = await tick()
        await stopped.wait(delay)
