"""A Restore drill with a schedule: one child Restore per drill (scheduling/child_runs.py), history kept."""

from __future__ import annotations

import datetime as dt

from habitat_operator.api.restore import RESTORE, SCHEDULE_FIELDS, RestoreSpec
from habitat_operator.controllers.base import kube
from habitat_operator.controllers.base.status import TERMINAL_PHASES
from habitat_operator.controllers.restore import metrics
from habitat_operator.controllers.scheduling import child_runs
from habitat_operator.metrics import advance


def _observe(spec: RestoreSpec, body: kube.JsonDict, seen: child_runs.Tick) -> None:
    # Until its first success a drill schedule reports its creation, so a drill that never
    # succeeds still trips the drill alerts.
    last = child_runs.completed_at(seen.last_success) if seen.last_success else None
    advance(
        metrics.RESTORE_DRILL_LAST_SUCCESS,
        body["metadata"]["namespace"],
        body["metadata"]["name"],
        (last or seen.created).timestamp(),
    )


async def _keep_history(
    spec: RestoreSpec, parent: kube.JsonDict, children: child_runs.Children, _: dt.datetime
) -> child_runs.Children:
    """Keeps the newest `limit` finished drills (their results are the history); deletes older ones."""
    finished = [c for c in children if child_runs.phase(c) in TERMINAL_PHASES]
    expired = {c["metadata"]["name"] for c in finished[spec.history_limit :]}
    for name in expired:
        await kube.delete(RESTORE.plural, parent["metadata"]["namespace"], name)
    return [c for c in children if c["metadata"]["name"] not in expired]


KIND = child_runs.ScheduledKind(RESTORE, SCHEDULE_FIELDS, _keep_history, _observe)
