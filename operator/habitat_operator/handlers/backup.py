"""Backup: a one-shot run (no schedule) or a schedule that creates one child Backup per run."""

from __future__ import annotations

from typing import Any

import kopf

from habitat_operator.api import GROUP, VERSION
from habitat_operator.api.backup import BACKUP
from habitat_operator.controllers.backup import metrics, schedule
from habitat_operator.controllers.backup.run import BackupRun, restore_metrics
from habitat_operator.controllers.base import kube
from habitat_operator.controllers.scheduling.child_runs import ScheduleRuns
from habitat_operator.handlers import one_shot
from habitat_operator.handlers.common import (
    has_schedule,
    index_run,
    is_gone_with_its_series,
    is_one_shot,
    is_run_of_a_schedule,
    run_schedule,
    wakes_a_schedule,
)
from habitat_operator.handlers.one_shot import is_unfinished_one_shot

KIND, PLURAL = BACKUP.kind, BACKUP.plural


@kopf.daemon(GROUP, VERSION, PLURAL, when=is_unfinished_one_shot, cancellation_timeout=60)
async def run(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
    await one_shot.drive(KIND, lambda: BackupRun(dict(body), memo.config, memo.slots), stopped)


@kopf.index(GROUP, VERSION, PLURAL, when=is_run_of_a_schedule)
async def backup_runs(body: kopf.Body, **_: Any) -> dict[str, kube.JsonDict]:
    """Scheduled Backups' runs by schedule uid, kept from the watch: a schedule never LISTs its runs."""
    return index_run(body)


@kopf.on.event(GROUP, VERSION, PLURAL, when=wakes_a_schedule)
async def wake_schedules(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.schedule_wakeups.observe(body)


@kopf.daemon(GROUP, VERSION, PLURAL, when=has_schedule, cancellation_timeout=10)
async def scheduled(
    body: kopf.Body,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    backup_runs: kopf.Index[str, kube.JsonDict] | None = None,  # the index above: Kopf passes it by name
    **_: Any,
) -> None:
    assert backup_runs is not None
    uid = body["metadata"]["uid"]
    runs = ScheduleRuns(schedule.kind(memo.config), lambda: backup_runs.get(uid, ()))
    await run_schedule(KIND, body, memo.schedule_wakeups, runs.tick, stopped)


@kopf.on.resume(GROUP, VERSION, PLURAL, when=is_one_shot)
async def resume_metrics(body: kopf.Body, **_: Any) -> None:
    restore_metrics(dict(body))


@kopf.on.event(GROUP, VERSION, PLURAL, when=is_gone_with_its_series)
async def forget(body: kopf.Body, **_: Any) -> None:
    """A deleted Backup's artifact stays (deleting data is retention's job); its series go."""
    metrics.forget_backup(body["metadata"]["namespace"], body["metadata"]["name"])
