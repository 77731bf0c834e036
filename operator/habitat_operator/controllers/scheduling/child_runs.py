"""Any kind with a `schedule`: one child object per run, CronJob-style, for Backups and Restore drills.

Each tick re-derives everything from the schedule's status and its children, so an operator restart
loses nothing: runs missed while it was down are counted and only the latest is started; a run is
never started while another is active; child names are derived from the scheduled time, so a tick
cut off after creating a child cannot create it twice. Children are found by their controller owner
reference (the schedule's uid), never by name, so a schedule of any name length works and a
re-created schedule of the same name does not adopt old runs.

A tick makes no API call unless something happened: the children come from what the watch already
delivered (the caller passes them in, see `run_record`), and the status is written only when it
changed. The only thing remembered between ticks is `Progress`, the pair a tick wrote, because the
watch may not have delivered that write yet when the next tick reads the schedule.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from pydantic import ValidationError

from habitat_operator import names, timestamps
from habitat_operator.api.children import SCHEDULE_NAME_ANNOTATION, child_body, child_name
from habitat_operator.api.common import (
    SCHEDULE_LABEL,
    KindInfo,
    Phase,
    Reason,
    ScheduledStatus,
)
from habitat_operator.api.objectives import OBJECTIVES_MET, RecoverableScheduleStatus
from habitat_operator.controllers.base import kube
from habitat_operator.controllers.base.core import Recheck
from habitat_operator.controllers.base.objectives import Verdict
from habitat_operator.controllers.base.status import TERMINAL_PHASES, StatusReporter, read_status
from habitat_operator.controllers.base.validation import describe_validation_error
from habitat_operator.controllers.scheduling import cron

# A schedule is looked at when a run is due, a child changes or its spec changes; with none of these
# it still looks this often, as a safety net (the clock jumped, an event was lost), never as a poll.
IDLE_RECHECK_SECONDS = 3600.0
# Cron times are whole seconds; waking a little after one makes sure it is due when looked at.
DUE_MARGIN_SECONDS = 0.05
RECENT_RUNS = 10

Children = list[kube.JsonDict]


class ScheduledSpec(Protocol):
    """A scheduled kind's spec: whatever else it holds, it has a cron schedule and a suspend switch."""

    @property
    def schedule(self) -> str | None: ...

    @property
    def suspend(self) -> bool: ...


SpecT = TypeVar("SpecT", bound=ScheduledSpec)


@dataclass(frozen=True)
class Progress:
    """What a tick recorded in the status that the next tick must not go back on.

    The two change together, and only forward: a later last_schedule_time is newer.
    """

    last_schedule_time: dt.datetime | None
    missed_runs: int

    def newer_of(self, other: Progress | None) -> Progress:
        if other is None or other.last_schedule_time is None:
            return self
        if self.last_schedule_time is None or other.last_schedule_time > self.last_schedule_time:
            return other
        return self


@dataclass(frozen=True)
class Tick:
    """What one tick saw, for the kind's metrics and for the next tick."""

    created: dt.datetime
    last_success: kube.JsonDict | None
    delay: float
    progress: Progress
    verdict: Verdict | None = None


@dataclass(frozen=True)
class ScheduledKind(Generic[SpecT]):
    """What differs between kinds: the API, the spec fields only a schedule has, pruning, metrics."""

    info: KindInfo
    schedule_fields: tuple[str, ...]
    # Deletes runs that are no longer wanted; returns the children that remain.
    prune: Callable[[SpecT, kube.JsonDict, Children, dt.datetime], Awaitable[Children]]
    # The kind's metrics after a tick.
    observe: Callable[[SpecT, kube.JsonDict, Tick], None]
    # The verdict on spec.objectives from the schedule (its status holds the figures last written),
    # its succeeded runs (newest first) and the time; None for a schedule without objectives.
    assess: Callable[[SpecT, kube.JsonDict, Children, dt.datetime], Verdict | None] = lambda *_: None
    # When pruning may have more to do (e.g. a run's Object Lock expires), if before the next run.
    wake: Callable[[Children, dt.datetime], dt.datetime | None] | None = None


def series_name(body: kube.JsonDict) -> str:
    """The metrics' name label: a schedule's runs count under the schedule, so alerts see one series."""
    annotations = body["metadata"].get("annotations") or {}
    return str(annotations.get(SCHEDULE_NAME_ANNOTATION) or body["metadata"]["name"])


def phase(obj: kube.JsonDict) -> str | None:
    return (obj.get("status") or {}).get("phase")


def completed_at(obj: kube.JsonDict) -> dt.datetime | None:
    stamp = (obj.get("status") or {}).get("completedAt")
    return timestamps.parse(stamp) if stamp else None


def created_at(obj: kube.JsonDict) -> dt.datetime:
    return timestamps.parse(obj["metadata"]["creationTimestamp"])


def schedule_uid(obj: Mapping[str, Any]) -> str | None:
    """The uid of the schedule that `obj` is a run of: its controller owner, if it has the schedule label."""
    meta = obj["metadata"]
    if SCHEDULE_LABEL not in (meta.get("labels") or {}):
        return None
    refs = meta.get("ownerReferences") or []
    return next((str(ref["uid"]) for ref in refs if ref.get("controller") and ref.get("uid")), None)


def run_record(obj: Mapping[str, Any]) -> kube.JsonDict:
    """What a tick reads of a child, copied: identity, labels, annotations and status.

    Kept in memory for every run of every schedule, so no spec and no managedFields.
    """
    meta = obj["metadata"]
    return {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": copy.deepcopy({k: v for k, v in meta.items() if k != "managedFields"}),
        "status": copy.deepcopy(obj.get("status") or {}),
    }


def newest_first(children: Iterable[kube.JsonDict]) -> Children:
    """Children in the order ticks use: newest first (names carry the scheduled time)."""
    return sorted(children, key=lambda child: child["metadata"]["name"], reverse=True)


async def list_children(plural: str, parent: kube.JsonDict) -> Children:
    """The parent's children from the API, newest first, for callers that have no watch of them
    (a schedule's daemon is handed its children instead: see `run_record`)."""
    meta = parent["metadata"]
    listed = await kube.list_objects(
        plural, meta["namespace"], f"{SCHEDULE_LABEL}={names.fit(meta['name'], 63)}"
    )
    return newest_first(c for c in listed if schedule_uid(c) == meta["uid"])


async def look(
    kind: ScheduledKind[SpecT],
    body: kube.JsonDict,
    children: Iterable[kube.JsonDict],
    recorded: Progress | None = None,
) -> Tick | None:
    """One look at a schedule of `kind`, with its children as the watch delivered them. None when
    the spec is invalid: that is reported, and there is nothing to run."""
    try:
        spec: SpecT = kind.info.spec_model.model_validate(body.get("spec") or {})  # type: ignore[assignment]
    except ValidationError as error:
        await StatusReporter(kind.info.plural, body, kind.info.status_model).write(
            "stalled", Phase.FAILED, Reason.INVALID_SPEC, describe_validation_error(error)
        )
        return None
    seen = await tick(kind, spec, body, newest_first(children), recorded)
    kind.observe(spec, body, seen)
    return seen


class ScheduleRuns(Generic[SpecT]):
    """One schedule's ticks for as long as its daemon runs. It keeps nothing but the last `Progress`,
    so a new daemon (after a restart) starts from the schedule's status and children alone."""

    def __init__(self, kind: ScheduledKind[SpecT], children: Callable[[], Iterable[kube.JsonDict]]) -> None:
        self.kind = kind
        self.children = children  # the schedule's children as the watch last delivered them
        self.progress: Progress | None = None
        self.body: kube.JsonDict = {}

    def observe(self, body: kube.JsonDict) -> None:
        """The schedule's latest body, for the next step."""
        self.body = body

    async def reconcile(self) -> Recheck:
        """One look at the schedule; says how long to wait before the next at the latest."""
        seen = await look(self.kind, self.body, self.children(), self.progress)
        if seen is None:
            return Recheck(IDLE_RECHECK_SECONDS)
        self.progress = seen.progress
        return Recheck(seen.delay)

    async def cancelled(self) -> None:
        """Deleted mid-tick: its runs are its children, which go with it."""


async def tick(
    kind: ScheduledKind[SpecT],
    spec: SpecT,
    body: kube.JsonDict,
    children: Children,
    recorded: Progress | None = None,
) -> Tick:
    """Start the due run, prune, write status; says when to look again.

    `children` are the schedule's, newest first; `recorded` is what the previous tick wrote, in case
    `body` does not show it yet.
    """
    expression, suspend = spec.schedule, spec.suspend
    assert expression is not None  # the daemon runs only for objects with a schedule
    status = read_status(ScheduledStatus, body)
    now = timestamps.now()
    created = created_at(body)
    children = list(children)
    active = [c for c in children if phase(c) not in TERMINAL_PHASES]
    progress = Progress(status.last_schedule_time, status.missed_runs or 0).newer_of(recorded)
    last_schedule, missed = progress.last_schedule_time, progress.missed_runs

    if not suspend:
        due, skipped = cron.due_runs(expression, last_schedule, created, now)
        # A child of the due time was created by a tick cut off before it wrote status: that is
        # the due run itself, not a rival to skip for.
        if due is not None and not any(
            c["metadata"]["name"] == child_name(body["metadata"]["name"], due) for c in children
        ):
            if active:
                children = await _refresh_active(kind, children, active)
                active = [c for c in children if phase(c) not in TERMINAL_PHASES]
            if active:
                missed += 1
                busy = active[0]["metadata"]["name"]
                await kube.event(
                    body,
                    "Warning",
                    Reason.RUN_SKIPPED,
                    f"run for {timestamps.rfc3339(due)} skipped: {busy} is still active",
                )
            else:
                child = await _create_child(kind, body, due)
                children.insert(0, child)
                active = [child]
                await kube.event(
                    body, "Normal", Reason.RUN_CREATED, f"created {body['kind']} {child['metadata']['name']}"
                )
        if due is not None:
            missed += skipped
            last_schedule = due

    children = await kind.prune(spec, body, children, now)
    active_names = {c["metadata"]["name"] for c in active}
    finished = [c for c in children if c["metadata"]["name"] not in active_names]
    succeeded = [c for c in finished if phase(c) == Phase.SUCCEEDED]
    next_time = None if suspend else cron.next_run(expression, now)
    recent = [c["metadata"]["name"] for c in children[:RECENT_RUNS]]

    reporter = StatusReporter(kind.info.plural, body, RecoverableScheduleStatus)
    verdict = kind.assess(spec, body, succeeded, now)

    def observed(status: RecoverableScheduleStatus) -> None:
        status.last_schedule_time, status.next_schedule_time = last_schedule, next_time
        status.last_successful_time = completed_at(succeeded[0]) if succeeded else None
        status.missed_runs, status.recent_runs = missed, recent
        status.active_run = active[0]["metadata"]["name"] if active else None
        status.recoverability = verdict.recoverability if verdict else None

    flags = (verdict.flag,) if verdict else ()
    drop = () if verdict else (OBJECTIVES_MET,)
    if suspend:
        await reporter.write(
            "ready",
            Phase.SUSPENDED,
            Reason.SUSPENDED,
            "schedule is suspended; no new runs start",
            observed,
            flags=flags,
            drop=drop,
        )
    elif finished and phase(finished[0]) == Phase.FAILED:
        failed = finished[0]
        why = (failed.get("status") or {}).get("message") or "see its status"
        await reporter.write(
            "stalled",
            Phase.SCHEDULED,
            Reason.LAST_RUN_FAILED,
            f"run {failed['metadata']['name']} failed: {why}",
            observed,
            flags=flags,
            drop=drop,
        )
    else:
        next_text = timestamps.rfc3339(next_time) if next_time else "never"
        await reporter.write(
            "ready",
            Phase.SCHEDULED,
            Reason.SCHEDULED,
            f"next run at {next_text}",
            observed,
            flags=flags,
            drop=drop,
        )

    delay = (
        IDLE_RECHECK_SECONDS
        if next_time is None
        else min(IDLE_RECHECK_SECONDS, (next_time - timestamps.now()).total_seconds() + DUE_MARGIN_SECONDS)
    )
    if verdict is not None and verdict.recheck_seconds is not None:  # time alone turns the verdict
        delay = min(delay, verdict.recheck_seconds + DUE_MARGIN_SECONDS)
    wake = kind.wake(children, now) if kind.wake else None
    if wake is not None:
        delay = min(delay, (wake - timestamps.now()).total_seconds() + DUE_MARGIN_SECONDS)
    return Tick(
        created=created,
        last_success=succeeded[0] if succeeded else None,
        delay=max(DUE_MARGIN_SECONDS, delay),
        progress=Progress(last_schedule, missed),
        verdict=verdict,
    )


async def _refresh_active(kind: ScheduledKind[Any], children: Children, active: Children) -> Children:
    """`children` with the active ones as the API has them now; asked only when a due run would be
    skipped. A watch that was disconnected for long never reports the children deleted meanwhile,
    and a run must not be skipped forever because of one that no longer exists."""
    current = {
        c["metadata"]["name"]: await kube.get(
            kind.info.plural, c["metadata"]["namespace"], c["metadata"]["name"]
        )
        for c in active
    }
    refreshed = []
    for child in children:
        name = child["metadata"]["name"]
        if name not in current:
            refreshed.append(child)
        elif (fresh := current[name]) is not None:
            refreshed.append(run_record(fresh))
    return refreshed


async def _create_child(
    kind: ScheduledKind[Any], parent: kube.JsonDict, scheduled: dt.datetime
) -> kube.JsonDict:
    body = child_body(parent, kind.schedule_fields, scheduled)
    try:
        return await kube.create(kind.info.plural, parent["metadata"]["namespace"], body)
    except kube.AlreadyExists:
        # Created by a tick that was cut off before it could record it.
        existing = await kube.get(kind.info.plural, parent["metadata"]["namespace"], body["metadata"]["name"])
        return existing or body
