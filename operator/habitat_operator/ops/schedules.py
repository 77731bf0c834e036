"""Any kind with a `schedule`: one child object per run, CronJob-style, for Backups and Restore drills.

Each tick re-derives everything from the children in the API (nothing is remembered in memory), so
an operator restart loses nothing: runs missed while it was down are counted and only the latest is
started; a run is never started while another is active; child names are derived from the
scheduled time, so a tick cut off after creating a child cannot create it twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kubernetes.client import ApiException

from habitat_operator import kube
from habitat_operator.ops import schedule
from habitat_operator.status import TERMINAL_PHASES, StatusReporter

SCHEDULE_LABEL = "ops.habitat.dev/schedule"
# Children's progress is looked at this often, even when no run is due.
POLL_SECONDS = 10.0
RECENT_RUNS = 10

Children = list[kube.JsonDict]


@dataclass(frozen=True)
class ScheduledKind:
    """What differs between kinds: the plural, the spec fields only a schedule has, and pruning."""

    plural: str
    schedule_fields: tuple[str, ...]
    # Deletes runs that are no longer wanted; returns the children that remain.
    prune: Callable[[kube.JsonDict, Children, dt.datetime], Awaitable[Children]]


@dataclass(frozen=True)
class Tick:
    """What one tick saw, for the kind's metrics."""

    created: dt.datetime
    last_success: kube.JsonDict | None
    delay: float


def series_name(body: kube.JsonDict) -> str:
    """The metrics' name label: a schedule's runs count under the schedule, so alerts see one series."""
    labels = body["metadata"].get("labels") or {}
    return str(labels.get(SCHEDULE_LABEL) or body["metadata"]["name"])


def phase(obj: kube.JsonDict) -> str | None:
    return (obj.get("status") or {}).get("phase")


def completed_at(obj: kube.JsonDict) -> dt.datetime | None:
    stamp = (obj.get("status") or {}).get("completedAt")
    return kube.parse_timestamp(stamp) if stamp else None


def child_name(parent: str, scheduled: dt.datetime) -> str:
    return f"{parent}-{scheduled.astimezone(dt.UTC):%Y%m%d%H%M%S}"


def child_body(kind: ScheduledKind, parent: kube.JsonDict, scheduled: dt.datetime) -> kube.JsonDict:
    """A one-shot object with the parent's spec, minus what only a schedule has."""
    spec = {k: v for k, v in parent["spec"].items() if k not in kind.schedule_fields}
    name = parent["metadata"]["name"]
    return {
        "apiVersion": parent["apiVersion"],
        "kind": parent["kind"],
        "metadata": {
            "name": child_name(name, scheduled),
            "namespace": parent["metadata"]["namespace"],
            "labels": {SCHEDULE_LABEL: name},
            "annotations": {"ops.habitat.dev/scheduled-at": kube.timestamp(scheduled)},
            "ownerReferences": [kube.owner_reference(parent)],
        },
        "spec": spec,
    }


async def tick(kind: ScheduledKind, body: kube.JsonDict, cron: str, suspend: bool) -> Tick:
    """One look at a schedule: start the due run, prune, write status; says when to look again."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    status = body.get("status") or {}
    now = kube.now()
    created = kube.parse_timestamp(meta["creationTimestamp"])
    children = sorted(
        await kube.list_objects(kind.plural, namespace, f"{SCHEDULE_LABEL}={name}"),
        key=lambda child: child["metadata"]["name"],
        reverse=True,  # names carry the scheduled time: newest first
    )
    active = [c for c in children if phase(c) not in TERMINAL_PHASES]
    last_schedule = status.get("lastScheduleTime")
    missed = int(status.get("missedRuns") or 0)

    if not suspend:
        due, skipped = schedule.due_runs(
            cron, kube.parse_timestamp(last_schedule) if last_schedule else None, created, now
        )
        if due is not None:
            missed += skipped
            if active:
                missed += 1
                busy = active[0]["metadata"]["name"]
                await kube.event(
                    body,
                    "Warning",
                    "RunSkipped",
                    f"run for {kube.timestamp(due)} skipped: {busy} is still active",
                )
            else:
                child = await _create_child(kind, body, due)
                children.insert(0, child)
                active = [child]
                await kube.event(
                    body, "Normal", "RunCreated", f"created {body['kind']} {child['metadata']['name']}"
                )
            last_schedule = kube.timestamp(due)

    children = await kind.prune(body, children, now)
    active_names = {c["metadata"]["name"] for c in active}
    finished = [c for c in children if c["metadata"]["name"] not in active_names]
    succeeded = [c for c in finished if phase(c) == "Succeeded"]
    last_success = completed_at(succeeded[0]) if succeeded else None
    next_time = None if suspend else schedule.next_run(cron, now)
    fields: dict[str, Any] = {
        "lastScheduleTime": last_schedule,
        "nextScheduleTime": kube.timestamp(next_time) if next_time else None,
        "lastSuccessfulTime": kube.timestamp(last_success) if last_success else None,
        "missedRuns": missed,
        "recentRuns": [c["metadata"]["name"] for c in children[:RECENT_RUNS]],
        "activeRun": active[0]["metadata"]["name"] if active else None,
    }
    reporter = StatusReporter(kind.plural, body)
    if suspend:
        await reporter.write(
            "ready", "Suspended", "Suspended", "schedule is suspended; no new runs start", **fields
        )
    elif finished and phase(finished[0]) == "Failed":
        failed = finished[0]
        why = (failed.get("status") or {}).get("message") or "see its status"
        await reporter.write(
            "stalled",
            "Scheduled",
            "LastRunFailed",
            f"run {failed['metadata']['name']} failed: {why}",
            **fields,
        )
    else:
        await reporter.write(
            "ready", "Scheduled", "Scheduled", f"next run at {fields['nextScheduleTime']}", **fields
        )

    delay = (
        POLL_SECONDS
        if next_time is None
        else max(1.0, min(POLL_SECONDS, (next_time - kube.now()).total_seconds()))
    )
    return Tick(created=created, last_success=succeeded[0] if succeeded else None, delay=delay)


async def _create_child(kind: ScheduledKind, parent: kube.JsonDict, scheduled: dt.datetime) -> kube.JsonDict:
    body = child_body(kind, parent, scheduled)
    try:
        return await kube.create(kind.plural, parent["metadata"]["namespace"], body)
    except ApiException as error:
        if error.status != 409:
            raise
        # Created by a tick that was cut off before it could record it.
        existing = await kube.get(kind.plural, parent["metadata"]["namespace"], body["metadata"]["name"])
        return existing or body
