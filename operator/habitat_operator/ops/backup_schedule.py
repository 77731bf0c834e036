"""A Backup with a schedule: creates one child Backup per run and prunes old ones.

Each tick re-derives everything from the children in the API (none is remembered in memory), so an
operator restart loses nothing: runs missed while it was down are counted and only the latest is
started; a run is never started while another is active; child names are derived from the
scheduled time, so a tick cut off after creating a child cannot create it twice.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import structlog
from kubernetes.client import ApiException
from pydantic import ValidationError

from habitat_operator import kube, metrics
from habitat_operator.api.backup import BackupSpec
from habitat_operator.config import OperatorConfig
from habitat_operator.durations import parse_duration
from habitat_operator.ops import retention, schedule
from habitat_operator.ops.artifacts import ArtifactStore
from habitat_operator.ops.backup_run import PLURAL, SCHEDULE_LABEL, TERMINAL_PHASES
from habitat_operator.ops.errors import OperationError
from habitat_operator.status import StatusReporter
from habitat_operator.validation import describe_validation_error

# Children's progress (and retention) is looked at this often, even when no run is due.
POLL_SECONDS = 10.0
RECENT_RUNS = 10

log = structlog.get_logger(__name__)


def child_name(parent: str, scheduled: dt.datetime) -> str:
    return f"{parent}-{scheduled.astimezone(dt.UTC):%Y%m%d%H%M%S}"


def child_body(parent: kube.JsonDict, spec: dict[str, Any], scheduled: dt.datetime) -> kube.JsonDict:
    """A one-shot Backup with the parent's spec, minus what only a schedule has."""
    child_spec = {k: v for k, v in spec.items() if k not in ("schedule", "suspend", "retention")}
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
        "spec": child_spec,
    }


def _completed_at(child: kube.JsonDict) -> dt.datetime | None:
    stamp = (child.get("status") or {}).get("completedAt")
    return kube.parse_timestamp(stamp) if stamp else None


async def tick(body: kube.JsonDict, config: OperatorConfig) -> float:
    """One look at a schedule; returns how many seconds to wait before the next."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    reporter = StatusReporter(PLURAL, body)
    status = body.get("status") or {}
    try:
        spec = BackupSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        await reporter.write("stalled", "Failed", "InvalidSpec", describe_validation_error(error))
        return POLL_SECONDS * 6  # the daemon sees spec changes in its body; no need to look often
    assert spec.schedule is not None  # the daemon only runs for schedules

    now = kube.now()
    created = kube.parse_timestamp(meta["creationTimestamp"])
    children = sorted(
        await kube.list_objects(PLURAL, namespace, f"{SCHEDULE_LABEL}={name}"),
        key=lambda child: child["metadata"]["name"],
        reverse=True,  # names carry the scheduled time: newest first
    )
    active = [c for c in children if (c.get("status") or {}).get("phase") not in TERMINAL_PHASES]
    last_schedule = status.get("lastScheduleTime")
    missed = int(status.get("missedRuns") or 0)

    if not spec.suspend:
        due, skipped = schedule.due_runs(
            spec.schedule, kube.parse_timestamp(last_schedule) if last_schedule else None, created, now
        )
        if due is not None:
            missed += skipped
            if active:
                missed += 1
                message = (
                    f"run for {kube.timestamp(due)} skipped: {active[0]['metadata']['name']} is still active"
                )
                await kube.event(body, "Warning", "RunSkipped", message)
            else:
                child = await _create_child(body, due)
                children.insert(0, child)
                active = [child]
                await kube.event(body, "Normal", "RunCreated", f"created Backup {child['metadata']['name']}")
            last_schedule = kube.timestamp(due)

    if spec.retention:
        children = await _apply_retention(body, spec, children, config, now)

    metrics.BACKUP_EXPECTED_INTERVAL.labels(namespace, name).set(
        schedule.expected_interval_seconds(spec.schedule)
    )
    finished = [c for c in children if c not in active]
    succeeded = [c for c in finished if (c.get("status") or {}).get("phase") == "Succeeded"]
    last_success = _completed_at(succeeded[0]) if succeeded else None
    # A schedule that never succeeded counts from its creation, so "no backup for two intervals" fires.
    metrics.note_backup_success(
        namespace,
        name,
        (last_success or created).timestamp(),
        ((succeeded[0].get("status") or {}).get("artifact") or {}).get("sizeBytes", 0) if succeeded else 0,
    )

    next_time = None if spec.suspend else schedule.next_run(spec.schedule, now)
    fields = {
        "lastScheduleTime": last_schedule,
        "nextScheduleTime": kube.timestamp(next_time) if next_time else None,
        "lastSuccessfulTime": kube.timestamp(last_success) if last_success else None,
        "missedRuns": missed,
        "recentRuns": [c["metadata"]["name"] for c in children[:RECENT_RUNS]],
        "activeRun": active[0]["metadata"]["name"] if active else None,
    }
    if spec.suspend:
        await reporter.write(
            "ready", "Suspended", "Suspended", "schedule is suspended; no new runs start", **fields
        )
    elif finished and (finished[0].get("status") or {}).get("phase") == "Failed":
        failed = finished[0]
        reason = (failed.get("status") or {}).get("message") or "see its status"
        await reporter.write(
            "stalled",
            "Scheduled",
            "LastRunFailed",
            f"run {failed['metadata']['name']} failed: {reason}",
            **fields,
        )
    else:
        when = f"next run at {fields['nextScheduleTime']}"
        await reporter.write("ready", "Scheduled", "Scheduled", when, **fields)

    if next_time is None:
        return POLL_SECONDS
    return max(1.0, min(POLL_SECONDS, (next_time - kube.now()).total_seconds()))


async def _create_child(parent: kube.JsonDict, scheduled: dt.datetime) -> kube.JsonDict:
    body = child_body(parent, parent["spec"], scheduled)
    try:
        return await kube.create(PLURAL, parent["metadata"]["namespace"], body)
    except ApiException as error:
        if error.status != 409:
            raise
        # Created by a tick that was cut off before it could record it.
        existing = await kube.get(PLURAL, parent["metadata"]["namespace"], body["metadata"]["name"])
        return existing or body


async def _apply_retention(
    parent: kube.JsonDict,
    spec: BackupSpec,
    children: list[kube.JsonDict],
    config: OperatorConfig,
    now: dt.datetime,
) -> list[kube.JsonDict]:
    """Deletes expired runs, artifact first: a child object never outlives knowledge of its artifact."""
    assert spec.retention is not None
    policy = retention.RetentionPolicy(
        keep_last=spec.retention.keep_last,
        keep_daily=spec.retention.keep_daily,
        keep_weekly=spec.retention.keep_weekly,
        keep_monthly=spec.retention.keep_monthly,
        max_age=parse_duration(spec.retention.max_age) if spec.retention.max_age else None,
    )
    records = [
        retention.RunRecord(
            name=c["metadata"]["name"],
            completed_at=completed,
            succeeded=(c.get("status") or {}).get("phase") == "Succeeded",
        )
        for c in children
        if (c.get("status") or {}).get("phase") in TERMINAL_PHASES and (completed := _completed_at(c))
    ]
    expired = set(retention.select_expired(records, policy, now))
    if not expired:
        return children
    store = ArtifactStore(config.backup_root)
    namespace = parent["metadata"]["namespace"]
    kept = []
    for child in children:
        child_name_ = child["metadata"]["name"]
        if child_name_ not in expired:
            kept.append(child)
            continue
        uri = ((child.get("status") or {}).get("artifact") or {}).get("uri")
        try:
            if uri:
                store.delete(uri)
        except OperationError as error:
            await kube.event(parent, "Warning", "RetentionFailed", f"could not delete {uri}: {error.message}")
            kept.append(child)
            continue
        await kube.delete(PLURAL, namespace, child_name_)
        log.info(
            "retention expired a run",
            kind="Backup",
            namespace=namespace,
            name=parent["metadata"]["name"],
            run=child_name_,
        )
    await kube.event(
        parent, "Normal", "RetentionApplied", f"expired {len(expired)} run(s): {', '.join(sorted(expired))}"
    )
    return kept
