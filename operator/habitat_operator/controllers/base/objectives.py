"""Recovery objectives against what was measured: the ObjectivesMet condition, the recoverability
status and when time alone turns the verdict. Pure.

Messages name no live figure (the RPO grows every second), so an unchanged verdict writes nothing;
the figures go in `status.recoverability` and, exact at every scrape, in the metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from habitat_operator import timestamps
from habitat_operator.api.objectives import (
    DRILL_HISTORY,
    OBJECTIVES_MET,
    DrillRun,
    ObjectivesReason,
    Recoverability,
)
from habitat_operator.controllers.base.conditions import Flag
from habitat_operator.durations import format_duration, parse_duration

# The live RPO in status is refreshed this often at most while the verdict holds (the metric is exact).
RPO_REFRESH_SECONDS = 300.0


@dataclass(frozen=True)
class Drill:
    """A successful drill as its Restore's status records it."""

    run: str
    completed_at: datetime
    seconds: float
    size_bytes: int | None


@dataclass(frozen=True)
class Verdict:
    """The condition, the status and when to look again for time alone to matter (None: never)."""

    flag: Flag
    recoverability: Recoverability
    recheck_seconds: float | None

    @property
    def met(self) -> bool:
        return self.flag.on


def rpo_verdict(
    objective: str,
    point: datetime | None,
    since: datetime,
    now: datetime,
    previous: Recoverability | None = None,
) -> Verdict:
    """The live RPO is `now - point`, the newest recoverable point; with none yet it counts from
    `since` (the object's creation), so a schedule that never succeeded misses its objective too.
    The figure `previous` wrote is kept while it is under RPO_REFRESH_SECONDS old and nothing else
    changed, so that a look at the object does not write its status for a figure alone."""
    limit = parse_duration(objective).total_seconds()
    age = max(0.0, (now - (point or since)).total_seconds())
    met = age <= limit
    recoverability = Recoverability(
        recovery_point=point, rpo=format_duration(age), rpo_seconds=int(age), objectives_met=met
    )
    if (
        previous is not None
        and previous.rpo_seconds is not None
        and (previous.recovery_point, previous.objectives_met) == (point, met)
        and 0 <= age - previous.rpo_seconds < RPO_REFRESH_SECONDS
    ):
        recoverability = previous.model_copy()
    if met:
        message = f"the newest recoverable point is within the RPO objective {objective}"
        flag = Flag(OBJECTIVES_MET, True, ObjectivesReason.OBJECTIVES_MET, message)
        return Verdict(flag, recoverability, limit - age)
    if point is None:
        message = f"nothing is recoverable yet, {objective} after creation (the RPO objective)"
    else:
        newest = timestamps.rfc3339(point)
        message = f"the newest recoverable point, {newest}, is older than the RPO objective {objective}"
    return Verdict(Flag(OBJECTIVES_MET, False, ObjectivesReason.RPO_EXCEEDED, message), recoverability, None)


def drill_verdict(
    objective: str | None, drills: Sequence[Drill], max_age: timedelta, now: datetime
) -> Verdict:
    """The measured RTO is the newest successful drill's wall time (`drills` newest first). A drill
    over the objective verified the data all the same: only the objective is missed."""
    history = [
        DrillRun(
            run=d.run,
            completed_at=d.completed_at,
            duration_seconds=round(d.seconds, 3),
            size_bytes=d.size_bytes,
        )
        for d in drills[:DRILL_HISTORY]
    ]
    if not drills:
        flag = Flag(OBJECTIVES_MET, False, ObjectivesReason.NO_DRILL, "no drill has succeeded yet")
        return Verdict(flag, Recoverability(objectives_met=False), None)
    newest = drills[0]
    took = f"drill {newest.run} took {newest.seconds:.1f}s"
    age = (now - newest.completed_at).total_seconds()
    recheck: float | None = None
    if objective is not None and newest.seconds > parse_duration(objective).total_seconds():
        reason, message = ObjectivesReason.RTO_EXCEEDED, f"{took}, over the RTO objective {objective}"
    elif age > max_age.total_seconds():
        reason = ObjectivesReason.NO_RECENT_DRILL
        limit = format_duration(max_age.total_seconds())
        message = f"the newest successful drill, {newest.run}, is older than {limit}"
    else:
        reason = ObjectivesReason.OBJECTIVES_MET
        message = f"{took}, within the RTO objective {objective}" if objective else f"{took}"
        recheck = max_age.total_seconds() - age
    met = reason is ObjectivesReason.OBJECTIVES_MET
    recoverability = Recoverability(
        measured_rto=format_duration(newest.seconds),
        measured_rto_seconds=round(newest.seconds),
        restored_size_bytes=newest.size_bytes,
        last_drill_at=newest.completed_at,
        objectives_met=met,
        drills=history,
    )
    return Verdict(Flag(OBJECTIVES_MET, met, reason, message), recoverability, recheck)
