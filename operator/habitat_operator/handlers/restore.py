"""Restore: restores once (a Job-like object); with `drill` and `schedule`, drills on a schedule."""

from __future__ import annotations

from typing import Any

import kopf

from habitat_operator.api import GROUP, VERSION
from habitat_operator.api.restore import RESTORE
from habitat_operator.controllers.base import kube
from habitat_operator.controllers.restore import metrics, schedule
from habitat_operator.controllers.restore.run import RestoreRun
from habitat_operator.controllers.scheduling.child_runs import ScheduleRuns
from habitat_operator.handlers import one_shot
from habitat_operator.handlers.common import (
    has_schedule,
    index_run,
    is_gone_with_its_series,
    is_run_of_a_schedule,
    run_schedule,
    wakes_a_schedule,
)
from habitat_operator.handlers.one_shot import is_unfinished_one_shot

KIND, PLURAL = RESTORE.kind, RESTORE.plural


@kopf.daemon(GROUP, VERSION, PLURAL, when=is_unfinished_one_shot, cancellation_timeout=60)
async def run(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
    await one_shot.drive(KIND, lambda: RestoreRun(dict(body), memo.config, memo.slots), stopped)


@kopf.index(GROUP, VERSION, PLURAL, when=is_run_of_a_schedule)
async def restore_runs(body: kopf.Body, **_: Any) -> dict[str, kube.JsonDict]:
    """Drill schedules' runs by schedule uid, kept from the watch: a schedule never LISTs its runs."""
    return index_run(body)


@kopf.on.event(GROUP, VERSION, PLURAL, when=wakes_a_schedule)
async def wake_drills(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.schedule_wakeups.observe(body)


@kopf.daemon(GROUP, VERSION, PLURAL, when=has_schedule, cancellation_timeout=10)
async def drills(
    body: kopf.Body,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    restore_runs: kopf.Index[str, kube.JsonDict] | None = None,  # the index above: Kopf passes it by name
    **_: Any,
) -> None:
    assert restore_runs is not None
    uid = body["metadata"]["uid"]
    runs = ScheduleRuns(schedule.KIND, lambda: restore_runs.get(uid, ()))
    await run_schedule(KIND, body, memo.schedule_wakeups, runs.tick, stopped)


@kopf.on.event(GROUP, VERSION, PLURAL, when=is_gone_with_its_series)
async def forget(body: kopf.Body, **_: Any) -> None:
    metrics.forget_restore(body["metadata"]["namespace"], body["metadata"]["name"])
