"""Restore: restores once (a Job-like object); with `drill` and `schedule`, drills on a schedule."""

from __future__ import annotations

from typing import Any

import kopf

from habitat_operator import metrics
from habitat_operator.api import GROUP, VERSION
from habitat_operator.ops import restore_run, restore_schedule

KIND = "Restore"
PLURAL = restore_run.PLURAL


def _is_schedule(spec: kopf.Spec, **_: Any) -> bool:
    return bool(spec.get("schedule"))


def _is_one_shot(spec: kopf.Spec, **_: Any) -> bool:
    return not spec.get("schedule")


@kopf.on.create(GROUP, VERSION, PLURAL, when=_is_one_shot)
async def run_once(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    with metrics.reconcile_timer(KIND):
        retry = await restore_run.run_restore_object(dict(body), memo.config)
    if retry:
        raise kopf.TemporaryError("restore not finished yet", delay=retry.seconds)


@kopf.on.update(GROUP, VERSION, PLURAL, when=_is_one_shot, field="spec")
async def ignore_spec_change(body: kopf.Body, **_: Any) -> None:
    await restore_run.record_ignored_change(dict(body))


@kopf.daemon(GROUP, VERSION, PLURAL, when=_is_schedule, cancellation_timeout=10)
async def run_drills(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
    while not stopped:
        with metrics.reconcile_timer(KIND):
            delay = await restore_schedule.tick(dict(body))
        await stopped.wait(delay)
