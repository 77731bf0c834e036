"""A Restore from a point in time: a WalArchive's archive (a folder store here), a fake private
server's recovery, and the same target refusal, safety backup and verification as any Restore."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from habitat_operator.api.restore import RestoreReason, RestoreSpec
from habitat_operator.config import OperatorConfig
from habitat_operator.controllers.base.slots import OperationSlots
from habitat_operator.controllers.restore.engines import RestoreEngines
from habitat_operator.controllers.restore.run import RestoreRun
from habitat_operator.engines.artifacts.store import ArtifactStore
from habitat_operator.engines.postgres.recovery import RecoveredDump, RecoveredPoint, RecoveryRequest
from habitat_operator.errors import OperationError, PermanentError
from tests.unit.bodies import DB_SECRET, DB_URI, NS, conditions, restore_body
from tests.unit.fake_engines import FakeLock, FakePostgres, FakeScratch
from tests.unit.fake_kube import FakeKube

RESTORES = "restores"
BEFORE = dt.datetime(2024, 6, 1, 9, 0, 0, tzinfo=dt.UTC)
TIME = "2024-06-01T09:30:00Z"


class FakeRecovery:
    """The private server's stand-in: records each request, then fails or yields a dump."""

    def __init__(self, dump: Path) -> None:
        self.dump = dump
        self.requests: list[RecoveryRequest] = []
        self.error: OperationError | None = None

    @asynccontextmanager
    async def recovered_dump(self, request: RecoveryRequest) -> AsyncIterator[RecoveredDump]:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        yield RecoveredDump(self.dump, RecoveredPoint("0/3000148", BEFORE + dt.timedelta(minutes=29)), 2.5)


class Harness:
    """The fake apiserver, PostgreSQL, lock and private server a Restore's step is given."""

    def __init__(
        self, kube: FakeKube, config: OperatorConfig, postgres: FakePostgres, recovery: FakeRecovery
    ):
        self.kube, self.config, self.postgres, self.recovery = kube, config, postgres, recovery

    def restore(self, body: dict[str, Any]) -> dict[str, Any]:
        """Applies `body`, steps it once, and returns its status."""
        self.kube.add(RESTORES, body)
        engines = RestoreEngines(
            restore=self.postgres, scratch=FakeScratch(self.postgres), lock=FakeLock(), recovery=self.recovery
        )
        run = RestoreRun(self.kube.object(RESTORES, NS, "restore"), self.config, OperationSlots(), engines)
        asyncio.run(run.reconcile())
        return self.kube.status(RESTORES, NS, "restore")


@pytest.fixture
def world(fake_kube: FakeKube, config: OperatorConfig, postgres: FakePostgres, tmp_path: Path) -> Harness:
    return Harness(fake_kube, config, postgres, FakeRecovery(tmp_path / "recovered.dump"))


def _archive(kube: FakeKube, config: OperatorConfig, server_version: int = 150004) -> Path:
    """A WalArchive `db` on the backup volume with one base backup completed at BEFORE and its
    segment; returns the archive's folder."""
    kube.put_secret(NS, DB_SECRET, {"uri": DB_URI})
    kube.objects[("walarchives", NS, "db")] = {
        "apiVersion": "ops.habitat.dev/v1alpha1",
        "kind": "WalArchive",
        "metadata": {"name": "db", "namespace": NS, "uid": "wal-uid"},
        "spec": {"database": {"secretRef": {"name": DB_SECRET}}, "storage": {"filesystem": {"path": "wal"}}},
    }
    archive = ArtifactStore(config.backup_root).namespace_directory("wal", NS) / "db"
    base, wal = archive / "base", archive / "wal"
    base.mkdir(parents=True)
    wal.mkdir()
    (wal / "000000010000000000000002").write_bytes(b"segment")
    entry = {
        "id": "20240601T085500Z",
        "startLsn": "0/2000028",
        "endLsn": "0/2000100",
        "timeline": 1,
        "startedAt": "2024-06-01T08:55:00Z",
        "completedAt": "2024-06-01T09:00:00Z",
        "serverVersion": server_version,
        "systemIdentifier": "7",
        "sizeBytes": 10,
        "sha256": "cd" * 32,
        "encrypted": False,
        "compression": "zstd",
    }
    (base / "20240601T085500Z.json").write_text(json.dumps(entry))
    return archive


def _body(target: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    source = {
        "pointInTime": {
            "walArchiveRef": {"name": "db"},
            "target": {"time": TIME} if target is None else target,
        }
    }
    return restore_body(source=source, **spec)


def test_recovers_then_restores_the_dump_like_any_restore(world: Harness) -> None:
    _archive(world.kube, world.config)
    world.postgres.databases.add("app")
    status = world.restore(_body())
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["recoveredTo"] == {
        "target": "time 2024-06-01T09:30:00Z",
        "lsn": "0/3000148",
        "lastCommitTime": "2024-06-01T09:29:00Z",
        "baseBackup": "20240601T085500Z",
        "recoverySeconds": 2.5,
    }
    assert status["restoredFrom"]["archive"] == "db"
    labels = {"namespace": NS, "restore": "restore"}
    point = REGISTRY.get_sample_value("habitat_restore_recovery_point_timestamp_seconds", labels)
    assert point == dt.datetime(2024, 6, 1, 9, 29, tzinfo=dt.UTC).timestamp()
    assert REGISTRY.get_sample_value("habitat_restore_time_to_recover_seconds", labels) == 2.5
    assert status["restoredFrom"]["uri"].endswith("/db/base/20240601T085500Z.tar")
    [request] = world.recovery.requests
    assert (request.database, request.plan.base_backup.id) == ("app", "20240601T085500Z")
    assert request.plan.target.time == dt.datetime(2024, 6, 1, 9, 30, tzinfo=dt.UTC)
    assert request.plan.segments == ("000000010000000000000002",)  # the catalog's plan
    # The dump is restored as a checked artifact: no checksum of its own, no key.
    assert world.postgres.operations() == [
        "database_exists",
        "is_empty",
        "run_restore",
        "run_verification_queries",
    ]
    [restored] = world.postgres.requests
    assert (restored.artifact, restored.encryption_key, restored.check_checksum) == (
        world.recovery.dump,
        None,
        False,
    )


def test_a_failed_recovery_leaves_the_target_untouched_and_says_where_the_archive_ends(
    world: Harness,
) -> None:
    _archive(world.kube, world.config)
    world.postgres.databases.add("app")
    world.recovery.error = PermanentError(
        RestoreReason.RECOVERY_TARGET_NOT_REACHED,
        "time 2024-06-01T09:30:00Z is past the end of the archive: the archive ends at 0/3000148",
    )
    status = world.restore(_body())
    assert conditions(status)["Stalled"] == ("True", "RecoveryTargetNotReached")
    assert "the archive ends at 0/3000148; the target was not touched" in status["message"]
    assert "run_restore" not in world.postgres.operations()
    assert "create_database" not in world.postgres.operations()


def test_a_non_empty_target_is_refused_before_any_recovery(world: Harness) -> None:
    _archive(world.kube, world.config)
    world.postgres.databases.add("app")
    world.postgres.non_empty.add("app")
    assert conditions(world.restore(_body()))["Stalled"] == ("True", "TargetNotEmpty")
    assert world.recovery.requests == []


def test_a_postgresql_version_the_operator_cannot_run_is_refused_at_once(world: Harness) -> None:
    _archive(world.kube, world.config, server_version=90624)
    status = world.restore(_body())
    assert conditions(status)["Stalled"] == ("True", "ServerVersionUnsupported")
    assert "the base backup is of PostgreSQL 9; this operator runs PostgreSQL servers" in status["message"]
    assert world.postgres.operations() == [] and world.recovery.requests == []


def test_a_target_before_the_first_base_backup_is_refused(world: Harness) -> None:
    _archive(world.kube, world.config)
    status = world.restore(_body({"time": "2024-06-01T08:00:00Z"}))
    assert conditions(status)["Stalled"] == ("True", "TargetNotRecoverable")
    assert (
        "cannot recover to time 2024-06-01T08:00:00Z: it is before the oldest base backup, which"
        " completed at 2024-06-01T09:00:00Z" in status["message"]
    )
    assert world.postgres.operations() == [] and world.recovery.requests == []


def test_a_target_inside_a_gap_is_refused_before_any_recovery(world: Harness) -> None:
    archive = _archive(world.kube, world.config)
    (archive / "gaps").mkdir()
    gap = {
        "detectedAt": "2024-06-01T09:10:00Z",
        "reason": "SlotDropped",
        "fromLsn": "0/3000000",
        "toLsn": None,
        "timeline": 1,
        "message": "the slot was dropped",
    }
    (archive / "gaps" / "20240601T091000Z.json").write_text(json.dumps(gap))
    (archive / "wal" / "000000010000000000000003").write_bytes(b"segment")  # past the gap: unused
    world.postgres.databases.add("app")
    status = world.restore(_body({"time": "2024-06-01T09:20:00Z"}))
    assert conditions(status)["Stalled"] == ("True", "TargetNotRecoverable")
    assert "it is inside the gap detected at 2024-06-01T09:10:00Z (SlotDropped" in status["message"]
    assert world.postgres.operations() == [] and world.recovery.requests == []


def test_a_missing_segment_is_refused_before_any_recovery(world: Harness) -> None:
    archive = _archive(world.kube, world.config)
    (archive / "wal" / "000000010000000000000002").unlink()
    status = world.restore(_body())
    assert conditions(status)["Stalled"] == ("True", "TargetNotRecoverable")
    assert "segment 000000010000000000000002 is missing from the archive" in status["message"]
    assert world.recovery.requests == []


def test_a_missing_walarchive_is_waited_for(world: Harness) -> None:
    world.kube.put_secret(NS, DB_SECRET, {"uri": DB_URI})
    status = world.restore(_body())
    assert status["phase"] == "Pending"
    assert conditions(status)["Stalled"] == ("True", "WalArchiveNotFound")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ({"time": TIME, "latest": True}, "target needs exactly one of time, lsn, restorePoint or latest"),
        ({}, "target needs exactly one of time, lsn, restorePoint or latest"),
        ({"latest": False}, "latest can only be true"),
        ({"restorePoint": "it's"}, "String should match pattern"),
        ({"lsn": "16/B374D848/1"}, "String should match pattern"),
    ],
)
def test_a_target_names_exactly_one_point(target: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RestoreSpec.model_validate(_body(target)["spec"])


def test_a_scheduled_drill_of_a_point_in_time_source_recovers_to_latest() -> None:
    with pytest.raises(ValidationError, match=r"recovers to target\.latest"):
        RestoreSpec.model_validate(_body(drill=True, schedule="0 4 * * *")["spec"])
    RestoreSpec.model_validate(_body({"latest": True}, drill=True, schedule="0 4 * * *")["spec"])
