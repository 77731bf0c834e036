"""storage.s3.objectLock: the field, how long a lock lasts, and what `catalog check` finds."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from pydantic import ValidationError

from habitat_operator.api.artifacts import S3Storage
from habitat_operator.api.backup import BackupSpec, RetentionPolicy
from habitat_operator.api.children import SCHEDULE_NAME_ANNOTATION
from habitat_operator.api.common import Reason
from habitat_operator.api.walarchive import WalArchiveSpec
from habitat_operator.catalog import lock_findings, table
from habitat_operator.controllers.backup.object_lock import lock_settings, retention_horizon
from habitat_operator.engines.artifacts.s3 import BucketLock, ObjectLockSettings
from habitat_operator.errors import PermanentError
from tests.unit.bodies import backup_body
from tests.unit.fake_kube import Clock, FakeKube

S3: dict[str, Any] = {"bucket": "backups", "credentialsSecretRef": {"name": "s3"}}
DAY = dt.timedelta(days=1)


def storage(lock: dict[str, str] | None) -> S3Storage:
    return S3Storage.model_validate(S3 | ({"objectLock": lock} if lock else {}))


@pytest.mark.parametrize("retain_for", ["30d", "12h", "retention", "1w2d"])
def test_retain_for_is_a_duration_or_retention(retain_for: str) -> None:
    assert storage({"mode": "COMPLIANCE", "retainFor": retain_for}).object_lock is not None


@pytest.mark.parametrize(
    "lock",
    [
        {"mode": "LEGAL", "retainFor": "30d"},
        {"mode": "GOVERNANCE", "retainFor": "forever"},
        {"mode": "GOVERNANCE", "retainFor": "retention30d"},
        {"mode": "GOVERNANCE"},
    ],
)
def test_a_hostile_object_lock_is_refused(lock: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        storage(lock)


def test_a_wal_archive_refuses_object_lock() -> None:
    spec = {
        "database": {"secretRef": {"name": "db"}},
        "storage": {"s3": S3 | {"objectLock": {"mode": "GOVERNANCE", "retainFor": "7d"}}},
    }
    with pytest.raises(ValidationError, match="not yet by WalArchive"):
        WalArchiveSpec.model_validate(spec)


@pytest.mark.parametrize(
    ("policy", "schedule", "horizon"),
    [
        ({"maxAge": "30d"}, "@daily", 30 * DAY),
        ({"keepDaily": 7, "keepWeekly": 4}, "@daily", 28 * DAY),
        ({"keepMonthly": 12, "maxAge": "90d"}, "@daily", 90 * DAY),  # maxAge caps the calendar
        ({"keepLast": 48, "maxAge": "1d"}, "0 * * * *", 2 * DAY),  # keepLast outlives it
        ({"keepLast": 3}, "@weekly", 21 * DAY),
        ({}, "@daily", None),
    ],
)
def test_the_retention_horizon_is_the_longest_a_run_is_kept(
    policy: dict[str, Any], schedule: str, horizon: dt.timedelta | None
) -> None:
    assert retention_horizon(RetentionPolicy.model_validate(policy), schedule) == horizon


def test_a_scheduled_backup_locked_for_its_retention() -> None:
    spec = BackupSpec.model_validate(
        {
            "database": {"secretRef": {"name": "db"}},
            "storage": {"s3": S3 | {"objectLock": {"mode": "GOVERNANCE", "retainFor": "retention"}}},
            "schedule": "@daily",
            "retention": {"maxAge": "14d"},
        }
    )
    assert spec.storage.s3 is not None and spec.storage.s3.object_lock is not None


LOCKED_ENTRY = {
    "key": "p/ns/a-1.dump",
    "objectLock": {"mode": "COMPLIANCE", "retainUntil": "2027-01-01T00:00:00Z"},
}


@pytest.mark.parametrize(
    ("lock", "bucket", "entries", "found"),
    [
        (None, None, [], ["has no Object Lock configuration"]),
        (None, BucketLock(), [], ["neither storage.s3.objectLock nor a default retention"]),
        (None, BucketLock("COMPLIANCE", 40 * DAY), [{"key": "p/ns/a.dump"}], []),
        (
            None,
            BucketLock("GOVERNANCE", 10 * DAY),
            [],
            ["the lock (10d) is shorter than the retention (30d)"],
        ),
        ({"mode": "COMPLIANCE", "retainFor": "7d"}, BucketLock(), [LOCKED_ENTRY], ["is shorter than"]),
        ({"mode": "COMPLIANCE", "retainFor": "retention"}, BucketLock(), [LOCKED_ENTRY], []),
        (
            {"mode": "COMPLIANCE", "retainFor": "30d"},
            BucketLock(),
            [{"key": "p/ns/old.dump"}],
            ["without a lock"],
        ),
    ],
)
def test_catalog_check_finds_what_leaves_artifacts_deletable(
    lock: dict[str, str] | None, bucket: BucketLock | None, entries: list[dict[str, Any]], found: list[str]
) -> None:
    findings = lock_findings(storage(lock), bucket, 30 * DAY, entries)
    assert len(findings) == len(found), findings
    for finding, expected in zip(findings, found, strict=True):
        assert expected in finding


def test_catalog_list_shows_the_lock_of_each_artifact() -> None:
    rows = table([LOCKED_ENTRY | {"database": "habitat"}, {"key": "p/ns/b.dump", "database": "habitat"}])
    header, locked, unlocked = rows.splitlines()
    assert "LOCK" in header and "RETAIN-UNTIL" in header
    assert "COMPLIANCE" in locked and "2027-01-01T00:00:00Z" in locked
    assert "COMPLIANCE" not in unlocked


LOCKED_S3 = {"s3": S3 | {"objectLock": {"mode": "GOVERNANCE", "retainFor": "retention"}}}


def test_a_run_of_a_schedule_is_locked_for_its_schedules_retention(fake_kube: FakeKube, clock: Clock) -> None:
    parent = backup_body("nightly", storage=LOCKED_S3, schedule="@daily", retention={"maxAge": "14d"})
    fake_kube.add("backups", parent)
    run = backup_body("nightly-20240601000000", storage=LOCKED_S3)
    run["metadata"]["annotations"] = {SCHEDULE_NAME_ANNOTATION: "nightly"}
    spec = BackupSpec.model_validate(run["spec"])
    lock = asyncio.run(lock_settings(spec, run))
    assert lock == ObjectLockSettings("GOVERNANCE", clock.now() + 14 * DAY)


def test_retention_without_a_schedule_is_an_invalid_spec(fake_kube: FakeKube) -> None:
    one_shot = backup_body("once", storage=LOCKED_S3)
    with pytest.raises(PermanentError, match="needs a schedule whose retention") as refused:
        asyncio.run(lock_settings(BackupSpec.model_validate(one_shot["spec"]), one_shot))
    assert refused.value.reason is Reason.INVALID_SPEC
