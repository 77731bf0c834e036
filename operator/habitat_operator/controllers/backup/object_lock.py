"""How long a Backup's artifacts stay locked (`storage.s3.objectLock`), and whether its bucket can lock.

`retainFor: retention` locks each artifact for as long as the schedule's retention policy keeps a
run at most (`retention_horizon`), so pruning finds it unlocked when the policy lets it go. A run
of a schedule carries no retention of its own: it reads its schedule's.
"""

from __future__ import annotations

import datetime as dt
import math

from habitat_operator import timestamps
from habitat_operator.api.artifacts import RETAIN_FOR_RETENTION, ObjectLock
from habitat_operator.api.backup import BACKUP, BackupReason, BackupSpec, RetentionPolicy
from habitat_operator.api.children import SCHEDULE_NAME_ANNOTATION
from habitat_operator.api.common import Reason
from habitat_operator.controllers.base import kube
from habitat_operator.controllers.scheduling import cron
from habitat_operator.durations import parse_duration
from habitat_operator.engines.artifacts.s3 import Bucket, ObjectLockSettings
from habitat_operator.errors import PermanentError

MONTH = dt.timedelta(days=31)


def retention_horizon(policy: RetentionPolicy, schedule: str) -> dt.timedelta | None:
    """The longest a healthy schedule's run is kept under `policy`; None when nothing bounds it.

    maxAge caps the calendar rules; keepLast (N runs of the schedule's longest interval) is the
    one rule that outlives it, as in scheduling/retention."""
    max_age = parse_duration(policy.max_age) if policy.max_age else None
    by_count = dt.timedelta(seconds=(policy.keep_last or 0) * cron.expected_interval_seconds(schedule))
    calendar = max(
        dt.timedelta(days=policy.keep_daily or 0),
        dt.timedelta(weeks=policy.keep_weekly or 0),
        (policy.keep_monthly or 0) * MONTH,
    )
    if max_age is not None:
        calendar = min(calendar, max_age) if calendar else max_age
    horizon = max(by_count, calendar)
    return horizon or None


async def lock_settings(spec: BackupSpec, body: kube.JsonDict) -> ObjectLockSettings | None:
    """The lock this run writes its artifact and catalog entry under; None without objectLock."""
    lock = spec.storage.s3.object_lock if spec.storage.s3 else None
    if lock is None:
        return None
    until = timestamps.now() + await _period(lock, body)
    # Whole seconds, rounded up: the catalog entry's RFC 3339 date is the object's own.
    whole = dt.datetime.fromtimestamp(math.ceil(until.timestamp()), dt.UTC)
    return ObjectLockSettings(lock.mode.value, whole)


async def _period(lock: ObjectLock, body: kube.JsonDict) -> dt.timedelta:
    if lock.retain_for != RETAIN_FOR_RETENTION:
        return parse_duration(lock.retain_for)
    meta = body["metadata"]
    schedule_name = (meta.get("annotations") or {}).get(SCHEDULE_NAME_ANNOTATION)
    schedule = await kube.get(BACKUP.plural, meta["namespace"], schedule_name) if schedule_name else None
    spec = BackupSpec.model_validate(schedule["spec"]) if schedule else None
    horizon = (
        retention_horizon(spec.retention, spec.schedule)
        if spec is not None and spec.retention is not None and spec.schedule is not None
        else None
    )
    if horizon is None:
        raise PermanentError(
            Reason.INVALID_SPEC,
            'storage.s3.objectLock.retainFor "retention" needs a schedule whose retention sets maxAge'
            " or a keep rule; give a duration instead (e.g. 30d)",
        )
    return horizon


def check_bucket(bucket: Bucket) -> None:
    """Refuse a bucket without Object Lock: the server would store the artifact unprotected."""
    if bucket.object_lock() is None:
        raise PermanentError(
            BackupReason.OBJECT_LOCK_MISSING,
            f"bucket {bucket.location.bucket} has no Object Lock configuration; storage.s3.objectLock"
            " needs a bucket created with Object Lock enabled",
        )
