from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from habitat_operator.api import ALL_KINDS, API_VERSION
from habitat_operator.api.artifacts import BackupFormat
from habitat_operator.api.backup import BACKUP, Artifact, BackupSpec, BackupStatus, Verification
from habitat_operator.api.common import Phase
from tests.unit.helpers import backup_spec as spec


def test_registry() -> None:
    assert API_VERSION == "ops.habitat.dev/v1alpha1"
    assert BACKUP in ALL_KINDS
    assert BACKUP.crd_name == "backups.ops.habitat.dev"


def test_defaults() -> None:
    parsed = BackupSpec.model_validate(spec())
    assert parsed.database is not None and parsed.database.secret_ref.key == "uri"
    assert parsed.format is BackupFormat.CUSTOM
    assert parsed.jobs == 1
    assert parsed.schedule is None
    assert parsed.suspend is False
    assert parsed.timeout == "1h"
    assert (parsed.retry.limit, parsed.retry.backoff) == (3, "30s")
    assert parsed.retention is None
    assert parsed.verify is True
    assert parsed.encryption is None


def test_retry_default_is_not_shared() -> None:
    first = BackupSpec.model_validate(spec())
    first.retry.limit = 7
    assert BackupSpec.model_validate(spec()).retry.limit == 3


def test_full_spec_round_trips_in_camel_case() -> None:
    wire = spec(
        format="directory",
        jobs=4,
        schedule="0 3 * * *",
        suspend=True,
        timeout="2h30m",
        retry={"limit": 5, "backoff": "1m"},
        retention={"keepLast": 7, "keepDaily": 7, "keepWeekly": 4, "keepMonthly": 6, "maxAge": "90d"},
        verify=False,
        include={"schemas": ["public"], "tables": ["public.orders*"]},
        exclude={"tables": ["public.audit_log"]},
    )
    parsed = BackupSpec.model_validate(wire)
    assert parsed.retention is not None and parsed.retention.keep_last == 7
    assert parsed.exclude is not None and parsed.exclude.schemas == []
    dumped = parsed.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert dumped["retention"]["maxAge"] == "90d"
    assert dumped["database"] == {"secretRef": {"name": "habitat-db", "key": "uri"}}
    assert BackupSpec.model_validate(dumped) == parsed


def test_snake_case_names_are_accepted_too() -> None:
    parsed = BackupSpec.model_validate(spec(database={"secret_ref": {"name": "db", "key": "dsn"}}))
    assert parsed.database is not None and parsed.database.secret_ref.key == "dsn"


def test_encryption_key_defaults_to_key() -> None:
    parsed = BackupSpec.model_validate(spec(encryption={"keySecretRef": {"name": "backup-key"}}))
    assert parsed.encryption is not None
    assert parsed.encryption.key_secret_ref.key == "key"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"unknown": 1}, "Extra inputs are not permitted"),
        ({"storage": {"filesystem": {"path": "/abs"}}}, "path must be relative"),
        ({"storage": {"filesystem": {"path": "a/../b"}}}, "'..' segments"),
        ({"storage": {"filesystem": {"path": ".."}}}, "'..' segments"),
        ({"storage": {"filesystem": {"path": ""}}}, "at least 1 character"),
        ({"schedule": "not a cron"}, "should match pattern"),
        ({"schedule": "* * * *"}, "should match pattern"),
        ({"schedule": "61 * * * *"}, "invalid cron expression"),
        ({"schedule": "@every5m"}, "should match pattern"),
        ({"jobs": 0}, "greater than or equal to 1"),
        ({"jobs": 17}, "less than or equal to 16"),
        ({"jobs": 4}, "jobs > 1 requires format: directory"),
        ({"format": "tar"}, "'custom' or 'directory'"),
        ({"timeout": "1 hour"}, "should match pattern"),
        ({"retry": {"limit": 21}}, "less than or equal to 20"),
        ({"retention": {"keepLast": 3}}, "retention requires a schedule"),
        ({"schedule": "@daily", "retention": {"keepLast": -1}}, "greater than or equal to 0"),
        (
            {"format": "directory", "encryption": {"keySecretRef": {"name": "k"}}},
            "encryption is supported with format: custom, or with storage.s3",
        ),
        ({"database": {"secretRef": {"name": "Bad_Name"}}}, "should match pattern"),
    ],
)
def test_invalid_specs(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        BackupSpec.model_validate(spec(**overrides))


ONE_SHOT_IMMUTABLE = "spec of a one-shot Backup is immutable; create a new Backup to run again"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (spec(), spec(), None),
        (spec(), spec(verify=True, jobs=1), None),  # defaults written out: the same spec
        (spec(), spec(verify=False), ONE_SHOT_IMMUTABLE),
        (spec(), spec(storage={"filesystem": {"path": "elsewhere"}}), ONE_SHOT_IMMUTABLE),
        (spec(), spec(schedule="@daily"), ONE_SHOT_IMMUTABLE),
        (spec(schedule="@daily"), spec(schedule="0 3 * * *"), None),
        (spec(schedule="@daily"), spec(schedule="@daily", suspend=True, retention={"keepLast": 3}), None),
        (spec(schedule="@daily"), spec(), "schedule cannot be removed from a scheduled Backup"),
    ],
)
def test_spec_updates(old: dict[str, Any], new: dict[str, Any], message: str | None) -> None:
    before, after = BackupSpec.model_validate(old), BackupSpec.model_validate(new)
    if message is None:
        after.check_update(before)
    else:
        with pytest.raises(ValueError, match=message):
            after.check_update(before)


def test_transition_rules_are_not_checked_on_validate() -> None:
    """model_validate sees no old object, so only plain rules run; the apiserver runs both kinds."""
    assert BackupSpec.model_validate(spec(verify=False)).verify is False
    rules = {v["rule"] for v in BackupSpec.model_json_schema()["x-kubernetes-validations"]}
    assert "has(oldSelf.schedule) || self == oldSelf" in rules


@pytest.mark.parametrize(
    "schedule", ["*/15 * * * *", "0 3 * * MON-FRI", "@daily", "@annually", "0 0 1 JAN *"]
)
def test_valid_schedules(schedule: str) -> None:
    assert BackupSpec.model_validate(spec(schedule=schedule)).schedule == schedule


@pytest.mark.parametrize("path", ["a", "a/b/c", "./x", "..hidden", "a/...", "x.."])
def test_valid_paths(path: str) -> None:
    parsed = BackupSpec.model_validate(spec(storage={"filesystem": {"path": path}}))
    assert parsed.storage.filesystem is not None and parsed.storage.filesystem.path == path


def test_status_dump_is_wire_format() -> None:
    status = BackupStatus(
        phase=Phase.SUCCEEDED,
        observed_generation=2,
        database="db.habitat:5432/habitat",
        started_at=datetime(2024, 5, 1, 3, 0, 0, 500, tzinfo=UTC),
        attempts=1,
        duration="3m4s",
        artifact=Artifact(
            uri="file:///backups/x.dump", size_bytes=12_900_000, size="12.3 MiB", encrypted=False
        ),
        verification=Verification.VERIFIED,
        recent_runs=["nightly-20240501", "nightly-20240430"],
    )
    assert status.model_dump(by_alias=True, exclude_none=True, mode="json") == {
        "phase": "Succeeded",
        "observedGeneration": 2,
        "database": "db.habitat:5432/habitat",
        "startedAt": "2024-05-01T03:00:00Z",
        "attempts": 1,
        "duration": "3m4s",
        "artifact": {
            "uri": "file:///backups/x.dump",
            "sizeBytes": 12_900_000,
            "size": "12.3 MiB",
            "encrypted": False,
        },
        "verification": "Verified",
        "recentRuns": ["nightly-20240501", "nightly-20240430"],
    }


def test_status_reads_back_what_the_apiserver_stores() -> None:
    status = BackupStatus.model_validate(
        {
            "phase": "Failed",
            "message": "pg_dump: connection refused",
            "lastSuccessfulTime": "2024-05-01T03:00:00Z",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "BackupFailed",
                    "message": "pg_dump: connection refused",
                    "lastTransitionTime": "2024-05-01T03:05:00Z",
                    "observedGeneration": 1,
                }
            ],
        }
    )
    assert status.phase is Phase.FAILED
    assert status.last_successful_time == datetime(2024, 5, 1, 3, 0, tzinfo=UTC)
    assert status.conditions is not None and status.conditions[0].status == "False"
    assert BackupStatus.model_validate({}) == BackupStatus()
