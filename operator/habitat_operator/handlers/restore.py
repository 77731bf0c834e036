"""Restore: restores once (a Job-like object); with `drill` and `schedule`, drills on a schedule."""

from __future__ import annotations

from typing import Any

import kopf

from habitat_operator.api import GROUP, VERSION
from habitat_operator.handlers.common import has_schedule, is_one_shot, run_once, run_schedule
from habitat_operator.ops import restore_run, restore_schedule
from habitat_operator.status import record_ignored_change

KIND = "Restore"
PLURAL = restore_run.PLURAL


@kopf.on.create(GROUP, VERSION, PLURAL, when=is_one_shot)
async def run(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await run_once(KIND, restore_run.run_restore_object(dict(body), memo.config))


@kopf.on.update(GROUP, VERSION, PLURAL, when=is_one_shot, field="spec")
async def ignore_spec_change(body: kopf.Body, **_: Any) -> None:
    await record_ignored_change(PLURAL, dict(body))


@kopf.daemon(GROUP, VERSION, PLURAL, when=has_schedule, cancellation_timeout=10)
async def drills(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
    await run_schedule(KIND, lambda: restore_schedule.tick(dict(body)), stopped)
