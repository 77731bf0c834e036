"""A Backup with a schedule: one child Backup per run (see schedules.py), pruned by its retention."""

from __future__ import annotations

import datetime as dt
from functools import partial

import structlog
from pydantic import ValidationError

from habitat_operator import kube, metrics
from habitat_operator.api.backup import BackupSpec
from habitat_operator.config import OperatorConfig
from habitat_operator.durations import parse_duration
from habitat_operator.ops import retention, schedule, schedules
from habitat_operator.ops.artifacts import ArtifactStore
from habitat_operator.ops.backup_run import PLURAL
from habitat_operator.ops.errors import OperationError
from habitat_operator.status import TERMINAL_PHASES, StatusReporter
from habitat_operator.validation import describe_validation_error

SCHEDULE_FIELDS = ("schedule", "suspend", "retention")

log = structlog.get_logger(__name__)


async def tick(body: kube.JsonDict, config: OperatorConfig) -> float:
    """One look at a Backup schedule; returns how many seconds to wait before the next."""
    try:
        spec = BackupSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        await StatusReporter(PLURAL, body).write(
            "stalled", "Failed", "InvalidSpec", describe_validation_error(error)
        )
        return schedules.POLL_SECONDS * 6  # the daemon sees spec changes in its body; no need to look often
    assert spec.schedule is not None  # the daemon only runs for schedules

    kind = schedules.ScheduledKind(PLURAL, SCHEDULE_FIELDS, partial(_apply_retention, spec, config))
    seen = await schedules.tick(kind, body, spec.schedule, spec.suspend)

    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    metrics.BACKUP_EXPECTED_INTERVAL.labels(namespace, name).set(
        schedule.expected_interval_seconds(spec.schedule)
    )
    # A schedule that never succeeded counts from its creation, so "no backup for two intervals" fires.
    last = seen.last_success
    last_time = schedules.completed_at(last) if last else None
    size = ((last.get("status") or {}).get("artifact") or {}).get("sizeBytes", 0) if last else 0
    metrics.note_backup_success(namespace, name, (last_time or seen.created).timestamp(), size)
    return seen.delay


async def _apply_retention(
    spec: BackupSpec,
    config: OperatorConfig,
    parent: kube.JsonDict,
    children: schedules.Children,
    now: dt.datetime,
) -> schedules.Children:
    """Deletes expired runs, artifact first: a child object never outlives knowledge of its artifact."""
    if spec.retention is None:
        return children
    policy = retention.RetentionPolicy(
        keep_last=spec.retention.keep_last,
        keep_daily=spec.retention.keep_daily,
        keep_weekly=spec.retention.keep_weekly,
        keep_monthly=spec.retention.keep_monthly,
        max_age=parse_duration(spec.retention.max_age) if spec.retention.max_age else None,
    )
    records = [
        retention.RunRecord(c["metadata"]["name"], completed, schedules.phase(c) == "Succeeded")
        for c in children
        if schedules.phase(c) in TERMINAL_PHASES and (completed := schedules.completed_at(c))
    ]
    expired = set(retention.select_expired(records, policy, now))
    if not expired:
        return children
    store = ArtifactStore(config.backup_root)
    namespace, parent_name = parent["metadata"]["namespace"], parent["metadata"]["name"]
    kept = []
    for child in children:
        name = child["metadata"]["name"]
        if name not in expired:
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
        await kube.delete(PLURAL, namespace, name)
        log.info("retention expired a run", kind="Backup", namespace=namespace, name=parent_name, run=name)
    await kube.event(
        parent, "Normal", "RetentionApplied", f"expired {len(expired)} run(s): {', '.join(sorted(expired))}"
    )
    return kept
