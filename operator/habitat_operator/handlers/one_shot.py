"""How every one-shot kind's object is driven: a Kopf daemon per unfinished object.

A daemon, not a create handler, because Kopf holds a finalizer on an object while its daemon runs
and tells the daemon when the object is being deleted: deleting a running Backup or Restore then
cancels its work (the client tool is killed, the partial artifact removed, the database lock
released), records the cancellation, and only then lets the object go. A finished object matches
no daemon, so it carries no finalizer and deletes at once, with or without an operator.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import kopf

from habitat_operator.controllers.base.lifecycle import OneShotRun
from habitat_operator.controllers.base.status import TERMINAL_PHASES
from habitat_operator.handlers.common import reconcile_timer


def is_unfinished_one_shot(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
    return not spec.get("schedule") and status.get("phase") not in TERMINAL_PHASES


async def drive(kind: str, new_run: Callable[[], OneShotRun[Any, Any]], stopped: kopf.DaemonStopped) -> None:
    """Steps the object's run until it ends; each step sees the latest body (`new_run` builds it)."""
    while not stopped:
        run = new_run()
        with reconcile_timer(kind):
            step = asyncio.ensure_future(run.reconcile())
            stopping = asyncio.ensure_future(stopped.wait())
            try:
                await asyncio.wait({step, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
            if not step.done():
                await _cancel(step)
                if stopped.reason and stopped.reason & kopf.DaemonStoppingReason.RESOURCE_DELETED:
                    await run.cancelled()
                return  # an operator that exits leaves the run Running: it resumes as Interrupted
            retry = step.result()
        if retry is None:
            return
        await stopped.wait(retry.seconds)


async def _cancel(step: asyncio.Future[Any]) -> None:
    """Cancels the step and waits for its clean-up (the client tool killed, the partial artifact
    removed) to end, even if Kopf cancels the daemon meanwhile: the finalizer must not go first."""
    step.cancel()
    while not step.done():
        with suppress(asyncio.CancelledError):
            await asyncio.wait([step])
    if not step.cancelled():
        step.exception()  # retrieved: the step's own failure no longer matters
