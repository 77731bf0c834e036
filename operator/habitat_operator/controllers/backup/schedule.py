"""A Backup with a schedule: one child Backup per run (scheduling/child_runs.py), pruned by its retention."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

import structlog

from habitat_operator import timestamps
from habitat_operator.api.backup import (
    BACKUP,
    SCHEDULE_FIELDS,
    BackupReason,
    BackupSpec,
    BackupStatus,
    RetainedByLock,
)
from habitat_operator.api.common import Phase
from habitat_operator.api.objectives import RecoverableScheduleStatus
from habitat_operator.api.restore import RESTORE, RestoreStatus
from habitat_operator.config import OperatorConfig
from habitat_operator.controllers.backup import metrics
from habitat_operator.controllers.base import kube, recoverability_metrics
from habitat_operator.controllers.base.buckets import object_key, open_bucket
from habitat_operator.controllers.base.objectives import Verdict, rpo_verdict
from habitat_operator.controllers.base.status import TERMINAL_PHASES, read_status
from habitat_operator.controllers.scheduling import child_runs, cron, retention
from habitat_operator.durations import parse_duration
from habitat_operator.engines.artifacts.locked import prune
from habitat_operator.engines.artifacts.store import ArtifactStore
from habitat_operator.engines.threads import in_thread
from habitat_operator.errors import OperationError, one_line

log = structlog.get_logger(__name__)


def kind(config: OperatorConfig) -> child_runs.ScheduledKind[BackupSpec]:
    return child_runs.ScheduledKind(
        BACKUP,
        SCHEDULE_FIELDS,
        partial(_apply_retention, config),
        _observe,
        assess=_assess,
        wake=_lock_expiry,
    )


def recovery_point(run: kube.JsonDict) -> dt.datetime | None:
    """The time a run's artifact holds the database as of: pg_dump's snapshot, taken as it starts."""
    status = read_status(BackupStatus, run)
    return status.started_at or status.completed_at


def _assess(
    spec: BackupSpec, body: kube.JsonDict, succeeded: child_runs.Children, now: dt.datetime
) -> Verdict | None:
    """The live RPO: now minus the newest succeeded (so verified, when spec.verify) run's point."""
    if spec.objectives is None or spec.objectives.rpo is None:
        return None
    point = recovery_point(succeeded[0]) if succeeded else None
    previous = read_status(RecoverableScheduleStatus, body).recoverability
    return rpo_verdict(spec.objectives.rpo, point, child_runs.created_at(body), now, previous)


def _lock_expiry(children: child_runs.Children, now: dt.datetime) -> dt.datetime | None:
    """When the next Object Lock of a run's artifact expires: retention may prune the run then."""
    ends = [
        until
        for child in children
        if (artifact := read_status(BackupStatus, child).artifact)
        and (until := artifact.retain_until)
        and until > now
    ]
    return min(ends, default=None)


def _observe(spec: BackupSpec, body: kube.JsonDict, seen: child_runs.Tick) -> None:
    assert spec.schedule is not None  # the daemon runs only for schedules
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    metrics.BACKUP_EXPECTED_INTERVAL.labels(namespace, name).set(
        cron.expected_interval_seconds(spec.schedule)
    )
    # A schedule that never succeeded counts from its creation, so "no backup for two intervals" fires.
    last = read_status(BackupStatus, seen.last_success) if seen.last_success else None
    when = last.completed_at if last and last.completed_at else seen.created
    size = last.artifact.size_bytes if last and last.artifact and last.artifact.size_bytes else 0
    metrics.note_backup_success(namespace, name, when.timestamp(), size)
    series = None
    if seen.verdict is not None and spec.objectives is not None and spec.objectives.rpo is not None:
        point = seen.verdict.recoverability.recovery_point or seen.created
        objective = parse_duration(spec.objectives.rpo).total_seconds()
        series = recoverability_metrics.RpoSeries(point.timestamp(), objective)
    recoverability_metrics.set_rpo(BACKUP.kind, namespace, name, series)


async def _apply_retention(
    config: OperatorConfig,
    spec: BackupSpec,
    parent: kube.JsonDict,
    children: child_runs.Children,
    now: dt.datetime,
) -> child_runs.Children:
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
        retention.RunRecord(c["metadata"]["name"], completed, child_runs.phase(c) == Phase.SUCCEEDED)
        for c in children
        if child_runs.phase(c) in TERMINAL_PHASES and (completed := child_runs.completed_at(c))
    ]
    expired = set(retention.select_expired(records, policy, now))
    if expired:
        # A run a Restore is reading stays until that Restore ends; the next pass prunes it.
        names_in_use, uris_in_use = await _in_use(parent)
        expired = {
            c["metadata"]["name"]
            for c in children
            if c["metadata"]["name"] in expired
            and c["metadata"]["name"] not in names_in_use
            and _artifact_uri(c) not in uris_in_use
        }
    if not expired:
        await _note_retained(parent, {})
        return children
    namespace, parent_name = parent["metadata"]["namespace"], parent["metadata"]["name"]
    kept, deleted = [], []
    retained: dict[str, dt.datetime] = {}
    async with AsyncExitStack() as opened:
        try:
            delete = await opened.enter_async_context(_deleter(config, spec, namespace))
        except OperationError as error:  # e.g. the bucket's Secret is missing: prune on a later pass
            await kube.event(
                parent, "Warning", BackupReason.RETENTION_FAILED, f"cannot prune: {error.message}"
            )
            return children
        for child in children:
            name = child["metadata"]["name"]
            if name not in expired:
                kept.append(child)
                continue
            uri = ((child.get("status") or {}).get("artifact") or {}).get("uri")
            try:
                locked_until = await delete(uri) if uri else None
            except (OperationError, OSError) as error:  # a store it cannot write must not stop the schedule
                why = error.message if isinstance(error, OperationError) else one_line(str(error))
                await kube.event(
                    parent, "Warning", BackupReason.RETENTION_FAILED, f"could not delete {uri}: {why}"
                )
                kept.append(child)
                continue
            if locked_until is not None:  # Object Lock keeps it: not an error, a later pass prunes it
                kept.append(child)
                retained[name] = locked_until
                continue
            await kube.delete(BACKUP.plural, namespace, name)
            deleted.append(name)
            log.info(
                "retention expired a run", kind="Backup", namespace=namespace, name=parent_name, run=name
            )
    if deleted:
        await kube.event(
            parent,
            "Normal",
            BackupReason.RETENTION_APPLIED,
            f"expired {len(deleted)} run(s): {', '.join(sorted(deleted))}",
        )
    await _note_retained(parent, retained)
    return kept


async def _note_retained(parent: kube.JsonDict, retained: dict[str, dt.datetime]) -> None:
    """Expired runs that Object Lock keeps, in status (a count and the last lock's end) and, when
    that changes, in an Event."""
    now = RetainedByLock(count=len(retained), until=max(retained.values())) if retained else None
    before = read_status(BackupStatus, parent).retained_by_lock
    if now == before:
        return
    wire = now.model_dump(by_alias=True, mode="json") if now else None
    meta = parent["metadata"]
    await kube.patch_status(BACKUP.plural, meta["namespace"], meta["name"], {"retainedByLock": wire})
    if now is not None:
        until = timestamps.rfc3339(now.until) if now.until else "?"
        await kube.event(
            parent,
            "Normal",
            BackupReason.RETAINED_BY_LOCK,
            f"{now.count} expired run(s) retained by Object Lock until {until}:"
            f" {', '.join(sorted(retained))}",
        )


@asynccontextmanager
async def _deleter(
    config: OperatorConfig, spec: BackupSpec, namespace: str
) -> AsyncIterator[Callable[[str], Awaitable[dt.datetime | None]]]:
    """Deletes artifacts of `namespace` by URI: files under the backup root, or objects and their
    catalog entries in the schedule's bucket, opened once for the whole pass. Under Object Lock it
    deletes nothing still locked, and says until when instead."""
    if spec.storage.s3 is None:
        store = ArtifactStore(config.backup_root)

        async def delete_file(uri: str) -> dt.datetime | None:
            await in_thread(store.delete, uri, namespace)
            return None

        yield delete_file
        return
    bucket = await open_bucket(namespace, spec.storage.s3)
    locked = spec.storage.s3.object_lock is not None
    try:

        async def delete_object(uri: str) -> dt.datetime | None:
            key = object_key(bucket.location, uri, namespace)
            if locked:  # every version, unless one is still locked
                return await in_thread(prune, bucket, key, timestamps.now())
            await in_thread(bucket.delete_artifact, key)
            return None

        yield delete_object
    finally:
        await in_thread(bucket.close)


def _artifact_uri(run: kube.JsonDict) -> str | None:
    status = read_status(BackupStatus, run)
    return status.artifact.uri if status.artifact else None


async def _in_use(parent: kube.JsonDict) -> tuple[set[str], set[str]]:
    """The runs (by name) and artifacts (by URI) that unfinished Restores of this namespace read,
    or were told to read."""
    meta = parent["metadata"]
    names, uris = set(), set()
    for body in await kube.list_objects(RESTORE.plural, meta["namespace"], ""):
        status = read_status(RestoreStatus, body)
        if status.phase in TERMINAL_PHASES:
            continue
        if status.restored_from:
            names.add(status.restored_from.backup)
            uris.add(status.restored_from.uri)
        source = (body.get("spec") or {}).get("source") or {}
        ref = source.get("backupRef") or {}
        if ref.get("name") == meta["name"] and ref.get("run"):
            names.add(ref["run"])
        uris.add((source.get("artifact") or {}).get("uri"))
    return {n for n in names if n}, {u for u in uris if u}
