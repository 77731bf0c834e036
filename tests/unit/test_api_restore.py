from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from habitat_operator.api import ALL_KINDS
from habitat_operator.api.artifacts import BackupFormat
from habitat_operator.api.common import Phase
from habitat_operator.api.crdgen import crd
from habitat_operator.api.restore import (
    RESTORE,
    QueryResult,
    RestoredFrom,
    RestoreSpec,
    RestoreStatus,
)
from tests.unit.helpers import restore_spec as spec

SHA256 = "ab" * 32


def query(name: str = "orders", **expect: Any) -> dict[str, Any]:
    return {"name": name, "sql": "SELECT count(*) FROM app.orders", "expect": expect or {"min": 1}}


def test_registry() -> None:
    assert RESTORE in ALL_KINDS
    assert RESTORE.crd_name == "restores.ops.habitat.dev"
    names = crd(RESTORE)["spec"]["names"]
    assert names["shortNames"] == ["hrs", "hrestore"]
    assert names["categories"] == ["habitat"]


def test_defaults() -> None:
    parsed = RestoreSpec.model_validate(spec())
    assert parsed.source.backup_ref is not None and parsed.source.backup_ref.run == "latest"
    assert parsed.source.artifact is None
    assert parsed.target.database is not None and parsed.target.database.secret_ref.key == "uri"
    assert (parsed.mode.create_database, parsed.mode.clean, parsed.mode.force) == (False, False, False)
    assert parsed.pre_restore_backup is None
    assert parsed.safety_backup_storage is None
    assert parsed.jobs == 1
    assert parsed.verify.checksum is True and parsed.verify.queries == []
    assert parsed.timeout == "1h"
    assert (parsed.drill, parsed.schedule, parsed.suspend, parsed.history_limit) == (False, None, False, 10)


def test_defaulted_objects_are_not_shared() -> None:
    first = RestoreSpec.model_validate(spec())
    first.mode.clean = True
    first.verify.queries.append(
        RestoreSpec.model_validate(spec(verify={"queries": [query()]})).verify.queries[0]
    )
    second = RestoreSpec.model_validate(spec())
    assert second.mode.clean is False and second.verify.queries == []


def test_artifact_source_round_trips_in_camel_case() -> None:
    wire = spec(
        source={
            "artifact": {
                "uri": "file:///backups/habitat/prod/nightly.dump",
                "sha256": SHA256,
                "encryptionKeySecretRef": {"name": "backup-key"},
            }
        },
        mode={"createDatabase": True, "clean": True, "force": True},
        preRestoreBackup=False,
        safetyBackupStorage={"filesystem": {"path": "safety"}},
        jobs=4,
        verify={"checksum": False, "queries": [query("orders", min=1, max=10), query("name", equals="x")]},
        timeout="2h",
    )
    parsed = RestoreSpec.model_validate(wire)
    assert parsed.source.artifact is not None
    assert parsed.source.artifact.format is BackupFormat.CUSTOM
    assert parsed.source.artifact.encryption_key_secret_ref is not None
    assert parsed.source.artifact.encryption_key_secret_ref.key == "key"
    dumped = parsed.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert dumped["mode"] == {"createDatabase": True, "clean": True, "force": True}
    assert dumped["safetyBackupStorage"] == {"filesystem": {"path": "safety"}}
    assert dumped["verify"]["queries"][1]["expect"] == {"equals": "x"}
    assert RestoreSpec.model_validate(dumped) == parsed


def test_scheduled_drill() -> None:
    parsed = RestoreSpec.model_validate(
        spec(drill=True, schedule="0 4 * * 0", historyLimit=3, mode={"createDatabase": True})
    )
    assert parsed.drill and parsed.schedule == "0 4 * * 0" and parsed.history_limit == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"unknown": 1}, "Extra inputs are not permitted"),
        ({"source": {}}, "source needs exactly one of backupRef, artifact, storage or pointInTime"),
        (
            {"source": {"backupRef": {"name": "b"}, "artifact": {"uri": "file:///x.dump"}}},
            "source needs exactly one of backupRef, artifact, storage or pointInTime",
        ),
        ({"source": {"backupRef": {"name": "Bad_Name"}}}, "should match pattern"),
        ({"source": {"backupRef": {"name": "b", "run": "Latest"}}}, "should match pattern"),
        ({"source": {"artifact": {"uri": "s3://bucket/x.dump"}}}, "should match pattern"),
        ({"source": {"artifact": {"uri": "file:///x.dump", "sha256": "ABC"}}}, "should match pattern"),
        ({"source": {"artifact": {"uri": "file:///x.dump", "format": "tar"}}}, "'custom' or 'directory'"),
        (
            {
                "source": {
                    "artifact": {
                        "uri": "file:///x",
                        "format": "directory",
                        "encryptionKeySecretRef": {"name": "k"},
                    }
                }
            },
            "encryption is supported with format: custom only",
        ),
        ({"target": {}}, "target needs exactly one of database or rabbitmq"),
        ({"jobs": 0}, "greater than or equal to 1"),
        ({"jobs": 17}, "less than or equal to 16"),
        ({"timeout": "1 hour"}, "should match pattern"),
        ({"historyLimit": 0}, "greater than or equal to 1"),
        ({"historyLimit": 101}, "less than or equal to 100"),
        ({"safetyBackupStorage": {"filesystem": {"path": "/abs"}}}, "path must be relative"),
        ({"schedule": "@daily"}, "schedule requires drill: true"),
        ({"drill": True, "schedule": "61 * * * *"}, "invalid cron expression"),
        (
            {"drill": True, "mode": {"clean": True}},
            "a drill restores into a scratch database; mode does not apply",
        ),
        (
            {"drill": True, "mode": {"force": True}},
            "a drill restores into a scratch database; mode does not apply",
        ),
        ({"verify": {"queries": [{"name": "q", "sql": "SELECT 1"}]}}, "Field required"),
        (
            {"verify": {"queries": [{**query(), "expect": {}}]}},
            "expect needs at least one of min, max or equals",
        ),
        ({"verify": {"queries": [query(min=5, max=1)]}}, "expect.min must not be greater than expect.max"),
        ({"verify": {"queries": [query("Orders")]}}, "should match pattern"),
        ({"verify": {"queries": [query("a" * 64)]}}, "at most 63 characters"),
        ({"verify": {"queries": [{**query(), "sql": ""}]}}, "at least 1 character"),
        ({"verify": {"queries": [{**query(), "sql": "x" * 4097}]}}, "at most 4096 characters"),
        ({"verify": {"queries": [query("same"), query("same")]}}, "verification query names must be unique"),
        ({"verify": {"queries": [query(f"q{i}") for i in range(21)]}}, "at most 20 items"),
    ],
)
def test_invalid_specs(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RestoreSpec.model_validate(spec(**overrides))


DRILL = {"drill": True, "schedule": "0 4 * * 0"}


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (spec(), spec(), None),
        (spec(), spec(jobs=1), None),  # the default written out: the same spec
        (spec(), spec(jobs=2), "spec of a one-shot Restore is immutable; create a new Restore to run again"),
        (spec(drill=True), spec(drill=True, timeout="2h"), "spec of a one-shot Restore is immutable"),
        (spec(drill=True), spec(**DRILL), "spec of a one-shot Restore is immutable"),
        (spec(**DRILL), spec(**DRILL, suspend=True, historyLimit=3), None),
        (spec(**DRILL), spec(drill=True, schedule="0 5 * * *"), None),
        (spec(**DRILL), spec(drill=True), "schedule cannot be removed from a scheduled Restore"),
    ],
)
def test_spec_updates(old: dict[str, Any], new: dict[str, Any], message: str | None) -> None:
    before, after = RestoreSpec.model_validate(old), RestoreSpec.model_validate(new)
    if message is None:
        after.check_update(before)
    else:
        with pytest.raises(ValueError, match=message):
            after.check_update(before)


def test_printer_columns() -> None:
    columns = {column.name: column for column in RESTORE.printer_columns}
    assert list(columns) == ["Phase", "Source", "Target", "Verified", "Duration", "RTO", "Schedule", "Age"]
    assert columns["Verified"].json_path == ".status.verificationSummary"
    duration = columns["Duration"]
    assert (duration.json_path, duration.type, duration.priority) == (".status.duration", "string", 1)


def test_status_dump_is_wire_format() -> None:
    status = RestoreStatus(
        phase=Phase.SUCCEEDED,
        observed_generation=1,
        target="db.habitat:5432/habitat",
        restored_from=RestoredFrom(backup="nightly-20240501030000", uri="file:///b/x.dump", sha256=SHA256),
        safety_backup="restore-1-safety",
        started_at=datetime(2024, 5, 1, 4, 0, 0, 250, tzinfo=UTC),
        duration_seconds=12.5,
        duration="12s",
        attempts=1,
        verification=[
            QueryResult(name="orders", passed=True, value="200"),
            QueryResult(name="total", passed=False, value="1", message="expected '2', got '1'"),
        ],
        verification_summary="1/2 passed",
    )
    assert status.model_dump(by_alias=True, exclude_none=True, mode="json") == {
        "phase": "Succeeded",
        "observedGeneration": 1,
        "target": "db.habitat:5432/habitat",
        "restoredFrom": {"backup": "nightly-20240501030000", "uri": "file:///b/x.dump", "sha256": SHA256},
        "safetyBackup": "restore-1-safety",
        "startedAt": "2024-05-01T04:00:00Z",
        "durationSeconds": 12.5,
        "duration": "12s",
        "attempts": 1,
        "verification": [
            {"name": "orders", "passed": True, "value": "200"},
            {"name": "total", "passed": False, "value": "1", "message": "expected '2', got '1'"},
        ],
        "verificationSummary": "1/2 passed",
    }


def test_status_reads_back_what_the_apiserver_stores() -> None:
    status = RestoreStatus.model_validate(
        {
            "phase": "Scheduled",
            "nextScheduleTime": "2024-05-05T04:00:00Z",
            "recentRuns": ["drill-20240428040000"],
            "activeRun": "drill-20240505040000",
            "waitingFor": "other-restore",
            "scratchDatabase": "habitat_drill_x",
        }
    )
    assert status.phase is Phase.SCHEDULED
    assert status.next_schedule_time == datetime(2024, 5, 5, 4, 0, tzinfo=UTC)
    assert RestoreStatus.model_validate({}) == RestoreStatus()
