"""A Restore drill with a schedule: one child Restore per drill (scheduling/child_runs.py), history kept,
and its drills measured against spec.objectives.rto."""

from __future__ import annotations

import datetime as dt
from datetime import timedelta

from habitat_operator.api.restore import RESTORE, SCHEDULE_FIELDS, RestoreSpec, RestoreStatus
from habitat_operator.controllers.base import kube, recoverability_metrics
from habitat_operator.controllers.base.objectives import Drill, Verdict, drill_verdict
from habitat_operator.controllers.base.status import TERMINAL_PHASES, read_status
from habitat_operator.controllers.restore import metrics
from habitat_operator.controllers.scheduling import child_runs, cron
from habitat_operator.durations import parse_duration
from habitat_operator.metrics import advance

# A drill older than this many of its schedule's intervals no longer proves the RTO.
DRILL_MAX_AGE_INTERVALS = 2


def _observe(spec: RestoreSpec, body: kube.JsonDict, seen: child_runs.Tick) -> None:
    # Until its first success a drill schedule reports its creation, so a drill that never
    # succeeds still trips the drill alerts.
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    last = child_runs.completed_at(seen.last_success) if seen.last_success else None
    advance(metrics.RESTORE_DRILL_LAST_SUCCESS, namespace, name, (last or seen.created).timestamp())
    series = None
    if seen.verdict is not None and spec.objectives is not None and spec.schedule is not None:
        measured = seen.verdict.recoverability
        rto = spec.objectives.rto
        series = recoverability_metrics.DrillSeries(
            last_drill=(measured.last_drill_at or seen.created).timestamp(),
            interval=cron.expected_interval_seconds(spec.schedule),
            rto=measured.drills[0].duration_seconds if measured.drills else None,
            objective=parse_duration(rto).total_seconds() if rto else None,
        )
    recoverability_metrics.set_drills(RESTORE.kind, namespace, name, series)


def drill_of(run: kube.JsonDict) -> Drill | None:
    """A succeeded drill's wall time, start to verified, and the size it restored."""
    status = read_status(RestoreStatus, run)
    if status.completed_at is None:
        return None
    seconds = status.duration_seconds
    if seconds is None and status.started_at is not None:
        seconds = (status.completed_at - status.started_at).total_seconds()
    size = status.restored_from.size_bytes if status.restored_from else None
    return Drill(run["metadata"]["name"], status.completed_at, seconds or 0.0, size)


def _assess(
    spec: RestoreSpec, body: kube.JsonDict, succeeded: child_runs.Children, now: dt.datetime
) -> Verdict | None:
    if spec.objectives is None or spec.schedule is None:
        return None
    drills = [drill for run in succeeded if (drill := drill_of(run)) is not None]
    max_age = timedelta(seconds=DRILL_MAX_AGE_INTERVALS * cron.expected_interval_seconds(spec.schedule))
    return drill_verdict(spec.objectives.rto, drills, max_age, now)


async def _keep_history(
    spec: RestoreSpec, parent: kube.JsonDict, children: child_runs.Children, _: dt.datetime
) -> child_runs.Children:
    """Keeps the newest `limit` finished drills (their results are the history); deletes older ones."""
    finished = [c for c in children if child_runs.phase(c) in TERMINAL_PHASES]
    expired = {c["metadata"]["name"] for c in finished[spec.history_limit :]}
    for name in expired:
        await kube.delete(RESTORE.plural, parent["metadata"]["namespace"], name)
    return [c for c in children if c["metadata"]["name"] not in expired]


KIND = child_runs.ScheduledKind(RESTORE, SCHEDULE_FIELDS, _keep_history, _observe, _assess)
