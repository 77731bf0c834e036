"""Backup: a one-shot run (no schedule) or a schedule that creates one child Backup per run."""

from __future__ import annotations

from typing import Any

import kopf

from habitat_operator import metrics
from habitat_operator.api import GROUP, VERSION
from habitat_operator.handlers.common import has_schedule, is_one_shot, run_once, run_schedule
from habitat_operator.ops import backup_run, backup_schedule
from habitat_operator.status import record_ignored_change

KIND = "Backup"
PLURAL = backup_run.PLURAL


@kopf.on.create(GROUP, VERSION, PLURAL, when=is_one_shot)
async def run(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await run_once(KIND, backup_run.run_backup_object(dict(body), memo.config))


@kopf.on.update(GROUP, VERSION, PLURAL, when=is_one_shot, field="spec")
async def ignore_spec_change(body: kopf.Body, **_: Any) -> None:
    await record_ignored_change(PLURAL, dict(body))


@kopf.daemon(GROUP, VERSION, PLURAL, when=has_schedule, cancellation_timeout=10)
async def schedule(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
    await run_schedule(KIND, lambda: backup_schedule.tick(dict(body), memo.config), stopped)


@kopf.on.resume(GROUP, VERSION, PLURAL, when=is_one_shot)
async def restore_metrics(body: kopf.Body, **_: Any) -> None:
    backup_run.restore_metrics(dict(body))


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
async def forget(body: kopf.Body, **_: Any) -> None:
    """A deleted Backup's artifact stays (deleting data is retention's job); its series go."""
    metrics.forget_backup(body["metadata"]["namespace"], body["metadata"]["name"])
