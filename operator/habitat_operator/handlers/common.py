"""What every kind's Kopf glue shares: one-shot versus scheduled objects, and how each is driven.

A schedule costs nothing at rest. Its daemon sleeps until the next cron time (at most an hour) and
is woken early only by what the watch delivers: a change to one of its runs (found through the
kind's runs index, not a LIST) or a new generation of its own spec. Kopf fills every index from
its initial listing before it starts any daemon, so a daemon's first tick after a restart sees all
the schedule's runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import kopf

from habitat_operator import metrics
from habitat_operator.controllers.base import kube
from habitat_operator.controllers.scheduling import child_runs


def has_schedule(spec: kopf.Spec, **_: Any) -> bool:
    return bool(spec.get("schedule"))


def is_one_shot(spec: kopf.Spec, **_: Any) -> bool:
    return not spec.get("schedule")


def is_run_of_a_schedule(body: kopf.Body, **_: Any) -> bool:
    return child_runs.schedule_uid(body) is not None


def index_run(body: kopf.Body) -> dict[str, kube.JsonDict]:
    """A kind's runs index: each run under its schedule's uid (a Kopf index function's result)."""
    uid = child_runs.schedule_uid(body)
    assert uid is not None  # the index is filtered with is_run_of_a_schedule
    return {uid: child_runs.run_record(body)}


class Wakeup:
    """One schedule daemon's alarm: set when its inputs change; the generation it last looked at."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.generation: int | None = None

    async def sleep(self, seconds: float) -> None:
        """Until woken or `seconds` have passed. A stopping daemon is cancelled by Kopf (the daemons'
        `cancellation_timeout`), as Kopf recommends for async daemons: no task waits on the stopper."""
        with suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.event.wait()


class ScheduleWakeups:
    """The running schedule daemons' alarms by schedule uid; lives in the operator's memo (runtime.py)."""

    def __init__(self) -> None:
        self._alarms: dict[str, Wakeup] = {}

    def register(self, uid: str) -> Wakeup:
        self._alarms[uid] = wakeup = Wakeup()
        return wakeup

    def unregister(self, uid: str, wakeup: Wakeup) -> None:
        if self._alarms.get(uid) is wakeup:
            del self._alarms[uid]

    def wake(self, uid: str) -> None:
        """Wakes the daemon of the object with this uid, if it runs here (an input of it changed)."""
        if (wakeup := self._alarms.get(uid)) is not None:
            wakeup.event.set()

    def to_wake(self, body: kopf.Body) -> list[Wakeup]:
        """Whom a watch event concerns: the schedule of a run, or the schedule itself when its spec
        changed (a status write of its own is no reason to look again)."""
        found = []
        if (parent := child_runs.schedule_uid(body)) and (wakeup := self._alarms.get(parent)):
            found.append(wakeup)
        own = self._alarms.get(body["metadata"]["uid"])
        if own is not None and body["metadata"].get("generation") != own.generation:
            found.append(own)
        return found

    def observe(self, body: kopf.Body) -> None:
        for wakeup in self.to_wake(body):
            wakeup.event.set()


def wakes_a_schedule(body: kopf.Body, memo: kopf.Memo, **_: Any) -> bool:
    """The filter of the wake-up handlers, so Kopf invokes (and logs) them only when one is due."""
    wakeups: ScheduleWakeups = memo.schedule_wakeups
    return bool(wakeups.to_wake(body))


async def run_schedule(
    kind: str,
    body: kopf.Body,
    wakeups: ScheduleWakeups,
    tick: Callable[[kube.JsonDict], Awaitable[float]],
    stopped: kopf.DaemonStopped,
) -> None:
    """A schedule's daemon: tick on the latest body, then sleep until woken or as long as the tick says."""
    wakeup = wakeups.register(body["metadata"]["uid"])
    try:
        while not stopped:
            wakeup.event.clear()
            wakeup.generation = body["metadata"].get("generation")
            with reconcile_timer(kind):
                delay = await tick(dict(body))  # Kopf's daemon body is a live view of the latest object
            await wakeup.sleep(delay)
    finally:
        wakeups.unregister(body["metadata"]["uid"], wakeup)


@contextmanager
def reconcile_timer(kind: str) -> Iterator[None]:
    """Counts and times one reconciliation; an exception counts as an error (or a requeue, if temporary)."""
    started = time.monotonic()
    result = "success"
    try:
        yield
    except Exception as error:
        result = "requeue" if isinstance(error, kopf.TemporaryError) else "error"
        raise
    finally:
        metrics.RECONCILE_TOTAL.labels(kind, result).inc()
        metrics.RECONCILE_DURATION.labels(kind).observe(time.monotonic() - started)


def is_gone_with_its_series(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> bool:
    """The object was deleted, and the metrics series under its name are its own (a schedule's run
    counts under the schedule, whose series stay). A watch event, not a delete handler: those run
    only for objects that hold a finalizer, and a finished one-shot object holds none."""
    return event.get("type") == "DELETED" and child_runs.series_name(dict(body)) == body["metadata"]["name"]
