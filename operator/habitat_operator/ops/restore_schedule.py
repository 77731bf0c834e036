"""A Restore drill with a schedule: one child Restore per drill (see schedules.py), history kept."""

from __future__ import annotations

import datetime as dt
from functools import partial

from pydantic import ValidationError

from habitat_operator import kube, metrics
from habitat_operator.api.restore import RestoreSpec
from habitat_operator.ops import schedules
from habitat_operator.ops.restore_run import PLURAL
from habitat_operator.status import TERMINAL_PHASES, StatusReporter
from habitat_operator.validation import describe_validation_error

SCHEDULE_FIELDS = ("schedule", "suspend", "historyLimit")


async def tick(body: kube.JsonDict) -> float:
    """One look at a drill schedule; returns how many seconds to wait before the next."""
    try:
        spec = RestoreSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        await StatusReporter(PLURAL, body).write(
            "stalled", "Failed", "InvalidSpec", describe_validation_error(error)
        )
        return schedules.POLL_SECONDS * 6
    assert spec.schedule is not None  # the daemon only runs for schedules
    kind = schedules.ScheduledKind(PLURAL, SCHEDULE_FIELDS, partial(_keep_history, spec.history_limit))
    seen = await schedules.tick(kind, body, spec.schedule, spec.suspend)
    # Until its first success a drill schedule reports its creation, so a drill that never
    # succeeds still trips the drill alerts.
    last = schedules.completed_at(seen.last_success) if seen.last_success else None
    metrics.advance(
        metrics.RESTORE_DRILL_LAST_SUCCESS,
        body["metadata"]["namespace"],
        body["metadata"]["name"],
        (last or seen.created).timestamp(),
    )
    return seen.delay


async def _keep_history(
    limit: int, parent: kube.JsonDict, children: schedules.Children, _: dt.datetime
) -> schedules.Children:
    """Keeps the newest `limit` finished drills (their results are the history); deletes older ones."""
    finished = [c for c in children if schedules.phase(c) in TERMINAL_PHASES]
    expired = {c["metadata"]["name"] for c in finished[limit:]}
    for name in expired:
        await kube.delete(PLURAL, parent["metadata"]["namespace"], name)
    return [c for c in children if c["metadata"]["name"] not in expired]
