"""The one daemon driver of every kind: step the object's run, sleep as long as the step says or
until an input wakes it, count each step in `habitat_operator_reconcile_*`.

A daemon, not a create handler, because Kopf holds a finalizer on an object while its daemon runs
and tells the daemon when the object is being deleted: deleting an object mid-step cancels the step
(a client tool killed, a partial artifact removed, a transaction rolled back, a lock released), lets
the run say so (`cancelled`), and only then lets the object go.

A daemon costs nothing at rest. It sleeps until its run's next look (at most what the step said) and
is woken early only by what the watch delivers: a new generation of its own spec, a change of one
of its inputs (a schedule's runs, a Migration's ConfigMaps), found through an index, never a LIST.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

import kopf
import structlog

from habitat_operator import metrics
from habitat_operator.config import OperatorConfig
from habitat_operator.controllers.base import kube
from habitat_operator.controllers.base.core import Recheck, RetryLater
from habitat_operator.controllers.base.slots import OperationSlots
from habitat_operator.controllers.walarchive.streams import Streams

# A step that raised (its status could not be written): the daemon lives on and tries again.
ERROR_RETRY_SECONDS = 10.0

log = structlog.get_logger(__name__)


class Stepped(Protocol):
    """What the driver steps: a kind's run (controllers/base/core.py), or a schedule's."""

    async def reconcile(self) -> RetryLater | None: ...
    async def cancelled(self) -> None: ...


class Wakeup:
    """One daemon's alarm: set when its inputs change; the generation it last looked at."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.generation: int | None = None

    async def sleep(self, seconds: float, stopped: kopf.DaemonStopped) -> None:
        """Until woken, stopped, or `seconds` have passed."""
        woken = asyncio.ensure_future(self.event.wait())
        stopping = asyncio.ensure_future(stopped.wait())
        try:
            await asyncio.wait({woken, stopping}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            stopping.cancel()


class Wakeups:
    """The running daemons' alarms by object uid; shared by all objects through the memo."""

    def __init__(self) -> None:
        self._alarms: dict[str, Wakeup] = {}

    def register(self, uid: str) -> Wakeup:
        self._alarms[uid] = wakeup = Wakeup()
        return wakeup

    def unregister(self, uid: str, wakeup: Wakeup) -> None:
        if self._alarms.get(uid) is wakeup:
            del self._alarms[uid]

    def get(self, uid: str) -> Wakeup | None:
        return self._alarms.get(uid)

    def wake(self, uid: str) -> None:
        """Wakes the daemon of the object with this uid, if it runs here (an input of it changed)."""
        if (wakeup := self._alarms.get(uid)) is not None:
            wakeup.event.set()


@dataclass(frozen=True)
class Shared:
    """What every handler shares, kept in Kopf's memo (which Kopf copies shallowly per object)."""

    config: OperatorConfig
    slots: OperationSlots
    wakeups: Wakeups
    streams: Streams = field(default_factory=Streams)  # WalArchives' receivers, by uid


def shared(memo: kopf.Memo) -> Shared:
    found = memo.shared
    assert isinstance(found, Shared), "runtime.py puts a Shared in the memo"
    return found


def result_of(step: RetryLater | None) -> str:
    """`requeue` when the step asks to run again soon (waiting, a retry's backoff); `success` when
    it is done, for good or until its period ends."""
    return "requeue" if step is not None and not isinstance(step, Recheck) else "success"


class _Count:
    result: str | None = "success"


@contextmanager
def reconcile_timer(kind: str) -> Iterator[_Count]:
    """Counts and times one step: the caller sets its result; an exception counts as an error, a
    cancelled step (its object deleted, the operator stopping) is timed but not counted."""
    started = time.monotonic()
    count = _Count()
    try:
        yield count
    except Exception:
        count.result = "error"
        raise
    except BaseException:
        count.result = None
        raise
    finally:
        if count.result is not None:
            metrics.RECONCILE_TOTAL.labels(kind, count.result).inc()
        metrics.RECONCILE_DURATION.labels(kind).observe(time.monotonic() - started)


async def drive(
    kind: str,
    body: kopf.Body,
    stopped: kopf.DaemonStopped,
    run_for: Callable[[kube.JsonDict], Stepped],
    wakeups: Wakeups | None = None,
) -> None:
    """Steps the object until its run has nothing left to do or the daemon stops; each step sees
    the latest body (Kopf's daemon body is a live view). With `wakeups`, an input's change wakes it."""
    uid = body["metadata"]["uid"]
    wakeup = wakeups.register(uid) if wakeups is not None else Wakeup()
    try:
        while not stopped:
            wakeup.event.clear()
            wakeup.generation = body["metadata"].get("generation")
            run = run_for(dict(body))
            started = time.monotonic()
            try:
                next_step = await _step(kind, run, stopped)
            except asyncio.CancelledError:
                raise
            except Exception:  # the daemon lives on, with its memory; the next step tries again
                log.exception(
                    "step failed",
                    kind=kind,
                    namespace=body["metadata"]["namespace"],
                    name=body["metadata"]["name"],
                )
                next_step = RetryLater(ERROR_RETRY_SECONDS)
            if next_step is None or stopped:
                return
            # A period counts from the step's start (a policy polls every pollingInterval seconds);
            # a wait or a backoff from its end.
            spent = time.monotonic() - started if isinstance(next_step, Recheck) else 0.0
            await wakeup.sleep(max(0.0, next_step.seconds - spent), stopped)
    finally:
        if wakeups is not None:
            wakeups.unregister(uid, wakeup)


async def _step(kind: str, run: Stepped, stopped: kopf.DaemonStopped) -> RetryLater | None:
    with reconcile_timer(kind) as count:
        step = asyncio.ensure_future(run.reconcile())
        stopping = asyncio.ensure_future(stopped.wait())
        try:
            await asyncio.wait({step, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not step.done() and _only_finished(stopped):
            await step  # its own status write ended the daemon: its tail (the Event) still runs
        if not step.done():
            count.result = None
            await _cancel(step)
            if stopped.reason and stopped.reason & kopf.DaemonStoppingReason.RESOURCE_DELETED:
                await run.cancelled()
            return None  # an operator that exits leaves a one-shot run Running: it resumes as Interrupted
        next_step = step.result()
        count.result = result_of(next_step)
        return next_step


def _only_finished(stopped: kopf.DaemonStopped) -> bool:
    """Stopped only because the object no longer needs a daemon (a one-shot run that ended, its
    phase written): not deleted, not the operator stopping."""
    return stopped.reason == kopf.DaemonStoppingReason.FILTERS_MISMATCH


async def _cancel(step: asyncio.Future[Any]) -> None:
    """Cancels the step and waits for its clean-up (the client tool killed, the partial artifact
    removed) to end, even if Kopf cancels the daemon meanwhile: the finalizer must not go first."""
    step.cancel()
    while not step.done():
        with suppress(asyncio.CancelledError):
            await asyncio.wait([step])
    if not step.cancelled():
        step.exception()  # retrieved: the step's own failure no longer matters
