"""The Kopf handlers every kind that runs once or on a schedule gets, registered in one call.

A kind's module then only says what is its own: how to build one run, its schedule's behaviour,
and how to forget its metrics (handlers/backup.py, handlers/restore.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kopf

from habitat_operator.api import GROUP, VERSION
from habitat_operator.api.common import KindInfo
from habitat_operator.controllers.base import kube
from habitat_operator.controllers.base.lifecycle import OneShotRun
from habitat_operator.controllers.scheduling.child_runs import ScheduledKind, ScheduleRuns
from habitat_operator.handlers import common
from habitat_operator.handlers.driver import Shared, drive, shared


def register_kind(
    info: KindInfo,
    new_run: Callable[[kube.JsonDict, Shared], OneShotRun[Any, Any]],
    scheduled_kind: Callable[[Shared], ScheduledKind[Any]] | None,
    forget: Callable[[str, str], None],
) -> None:
    """Registers, for `info`'s plural: the daemon that runs each unfinished one-shot object, the
    forgetting of a deleted object's metrics series, and, unless `scheduled_kind` is None (a kind
    with no schedule), the index of schedules' runs, the wake-ups of schedule daemons and the
    schedule daemon."""
    plural = info.plural
    index_id = f"{plural}_runs"  # Kopf passes an index to handlers as a keyword of this name

    @kopf.daemon(
        GROUP,
        VERSION,
        plural,
        id="run",
        when=common.is_unfinished_one_shot,
        # Kopf signals the daemon, and cancels it only after the backoff: the step cleans up first.
        cancellation_backoff=30,
        cancellation_timeout=60,
    )
    async def run(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
        state = shared(memo)
        await drive(info.kind, body, stopped, lambda latest: new_run(latest, state))

    @kopf.on.event(GROUP, VERSION, plural, id="forget", when=common.is_gone_with_its_series)
    async def forget_series(body: kopf.Body, **_: Any) -> None:
        forget(body["metadata"]["namespace"], body["metadata"]["name"])

    if scheduled_kind is None:
        return
    with_schedule: Callable[[Shared], ScheduledKind[Any]] = scheduled_kind

    @kopf.index(GROUP, VERSION, plural, id=index_id, when=common.is_run_of_a_schedule)
    async def runs(body: kopf.Body, **_: Any) -> dict[str, kube.JsonDict]:
        """Schedules' runs by schedule uid, kept from the watch: a schedule never LISTs its runs."""
        return common.index_run(body)

    @kopf.on.event(GROUP, VERSION, plural, id="wake_schedules", when=common.wakes_a_daemon)
    async def wake(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        common.wake(body, memo)

    @kopf.daemon(GROUP, VERSION, plural, id="scheduled", when=common.has_schedule, cancellation_timeout=10)
    async def scheduled(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **kwargs: Any) -> None:
        index: kopf.Index[str, kube.JsonDict] = kwargs[index_id]
        uid = body["metadata"]["uid"]
        state = shared(memo)
        schedule_runs = ScheduleRuns(with_schedule(state), lambda: index.get(uid, ()))

        def run_for(latest: kube.JsonDict) -> ScheduleRuns[Any]:
            schedule_runs.observe(latest)
            return schedule_runs

        await drive(info.kind, body, stopped, run_for, state.wakeups)
