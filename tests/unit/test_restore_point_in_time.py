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


@pytest.fixture
def recovery(tmp_path: Path) -> FakeRecovery:
    return FakeRecovery(tmp_path / "recovered.dump")


def _archive(kube: FakeKube, config: OperatorConfig, server_version: int = 150004) -> None:
    """A WalArchive `db` on the backup volume with one base backup completed at BEFORE."""
    kube.put_secret(NS, DB_SECRET, {"uri": DB_URI})
    kube.objects[("walarchives", NS, "db")] = {  # the kind is not in this branch's fake apiserver yet
        "apiVersion": "ops.habitat.dev/v1alpha1",
        "kind": "WalArchive",
        "metadata": {"name": "db", "namespace": NS, "uid": "wal-uid"},
        "spec": {"storage": {"filesystem": {"path": "wal"}}},
    }
    base = ArtifactStore(config.backup_root).namespace_directory("wal", NS) / "db" / "base"
    base.mkdir(parents=True)
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


def _body(target: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    source = {
        "pointInTime": {
            "walArchiveRef": {"name": "db"},
            "target": {"time": TIME} if target is None else target,
        }
    }
    return restore_body(source=source, **spec)


def _reconcile(
    kube: FakeKube, config: OperatorConfig, postgres: FakePostgres, lock: FakeLock, recovery: FakeRecovery
) -> object:
    engines = RestoreEngines(restore=postgres, scratch=FakeScratch(postgres), lock=lock, recovery=recovery)
    run = RestoreRun(kube.object(RESTORES, NS, "restore"), config, OperationSlots(), engines)
    return asyncio.run(run.reconcile())


def test_recovers_then_restores_the_dump_like_any_restore(
    fake_kube: FakeKube,
    config: OperatorConfig,
    postgres: FakePostgres,
    lock: FakeLock,
    recovery: FakeRecovery,
) -> None:
    _archive(fake_kube, config)
    postgres.databases.add("app")
    fake_kube.add(RESTORES, _body())

    assert _reconcile(fake_kube, config, postgres, lock, recovery) is None

    status = fake_kube.status(RESTORES, NS, "restore")
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
    [request] = recovery.requests
    assert (request.database, request.base_backup.id) == ("app", "20240601T085500Z")
    assert request.target.time == dt.datetime(2024, 6, 1, 9, 30, tzinfo=dt.UTC)
    # The dump is restored as a checked artifact: no checksum of its own, no key.
    assert postgres.operations() == ["database_exists", "is_empty", "run_restore", "run_verification_queries"]
    [restored] = postgres.requests
    assert (restored.artifact, restored.encryption_key, restored.check_checksum) == (
        recovery.dump,
        None,
        False,
    )


def test_a_failed_recovery_leaves_the_target_untouched_and_says_where_the_archive_ends(
    fake_kube: FakeKube,
    config: OperatorConfig,
    postgres: FakePostgres,
    lock: FakeLock,
    recovery: FakeRecovery,
) -> None:
    _archive(fake_kube, config)
    postgres.databases.add("app")
    recovery.error = PermanentError(
        RestoreReason.RECOVERY_TARGET_NOT_REACHED,
        "time 2024-06-01T09:30:00Z is past the end of the archive: the archive ends at 0/3000148",
    )
    fake_kube.add(RESTORES, _body())

    _reconcile(fake_kube, config, postgres, lock, recovery)

    status = fake_kube.status(RESTORES, NS, "restore")
    assert conditions(status)["Stalled"] == ("True", "RecoveryTargetNotReached")
    assert "the archive ends at 0/3000148; the target was not touched" in status["message"]
    assert "run_restore" not in postgres.operations()
    assert "create_database" not in postgres.operations()


def test_a_non_empty_target_is_refused_before_any_recovery(
    fake_kube: FakeKube,
    config: OperatorConfig,
    postgres: FakePostgres,
    lock: FakeLock,
    recovery: FakeRecovery,
) -> None:
    _archive(fake_kube, config)
    postgres.databases.add("app")
    postgres.non_empty.add("app")
    fake_kube.add(RESTORES, _body())

    _reconcile(fake_kube, config, postgres, lock, recovery)

    assert conditions(fake_kube.status(RESTORES, NS, "restore"))["Stalled"] == ("True", "TargetNotEmpty")
    assert recovery.requests == []


def test_a_postgresql_version_the_operator_cannot_run_is_refused_at_once(
    fake_kube: FakeKube,
    config: OperatorConfig,
    postgres: FakePostgres,
    lock: FakeLock,
    recovery: FakeRecovery,
) -> None:
    _archive(fake_kube, config, server_version=90624)
    fake_kube.add(RESTORES, _body())

    _reconcile(fake_kube, config, postgres, lock, recovery)

    status = fake_kube.status(RESTORES, NS, "restore")
    assert conditions(status)["Stalled"] == ("True", "ServerVersionUnsupported")
    assert "the base backup is of PostgreSQL 9; this operator runs PostgreSQL servers" in status["message"]
    assert postgres.operations() == [] and recovery.requests == []


def test_a_target_before_the_first_base_backup_is_refused(
    fake_kube: FakeKube,
    config: OperatorConfig,
    postgres: FakePostgres,
    lock: FakeLock,
    recovery: FakeRecovery,
) -> None:
    _archive(fake_kube, config)
    fake_kube.add(RESTORES, _body({"time": "2024-06-01T08:00:00Z"}))

    _reconcile(fake_kube, config, postgres, lock, recovery)

    status = fake_kube.status(RESTORES, NS, "restore")
    assert conditions(status)["Stalled"] == ("True", "BaseBackupNotFound")
    assert "ends before time 2024-06-01T08:00:00Z" in status["message"]


def test_a_missing_walarchive_is_waited_for(
    fake_kube: FakeKube,
    config: OperatorConfig,
    postgres: FakePostgres,
    lock: FakeLock,
    recovery: FakeRecovery,
) -> None:
    fake_kube.put_secret(NS, DB_SECRET, {"uri": DB_URI})
    fake_kube.add(RESTORES, _body())

    _reconcile(fake_kube, config, postgres, lock, recovery)

    status = fake_kube.status(RESTORES, NS, "restore")
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
