"""RestoreRun against the fake apiserver, given a fake PostgreSQL and a fake database lock as its engines."""

from __future__ import annotations

import dataclasses

import pytest

from habitat_operator.api.common import Reason
from habitat_operator.api.restore import RestoreReason
from habitat_operator.config import OperatorConfig
from habitat_operator.controllers.base.lifecycle import RetryLater
from habitat_operator.controllers.restore.run import SAFETY_FOR_LABEL, scratch_database_name
from habitat_operator.engines.postgres.restore import QueryOutcome
from habitat_operator.errors import PermanentError, RetryableError
from tests.unit.bodies import (
    DB_DISPLAY,
    DB_SECRET,
    DB_URI,
    NS,
    backup_body,
    condition_messages,
    conditions,
    reconcile_restore,
    restore_body,
)
from tests.unit.fake_engines import FakeLock, FakePostgres
from tests.unit.fake_kube import FakeKube

RESTORES = "restores"
SHA = "ab" * 32


def succeeded_backup(kube: FakeKube, config: OperatorConfig, namespace: str = NS) -> str:
    """A Succeeded Backup `nightly` and the Secret of the database both use; returns the artifact's URI."""
    kube.put_secret(namespace, DB_SECRET, {"uri": DB_URI})
    kube.add("backups", backup_body("nightly", namespace=namespace))
    uri = (config.backup_root.resolve() / "app" / namespace / "nightly.dump").as_uri()
    kube.set_status(
        "backups",
        namespace,
        "nightly",
        {
            "phase": "Succeeded",
            "completedAt": "2024-06-01T09:00:00Z",
            "artifact": {"uri": uri, "sha256": SHA, "format": "custom", "encrypted": False},
        },
    )
    return uri


@pytest.fixture
def source(fake_kube: FakeKube, config: OperatorConfig) -> str:
    return succeeded_backup(fake_kube, config)


def test_restore_into_an_empty_target(
    fake_kube: FakeKube, config: OperatorConfig, postgres: FakePostgres, lock: FakeLock, source: str
) -> None:
    postgres.databases.add("app")
    postgres.outcomes = [QueryOutcome("rows", True, "42", None), QueryOutcome("users", True, "3", None)]
    fake_kube.add(RESTORES, restore_body())

    assert reconcile_restore(fake_kube, config, postgres, lock, "restore") is None

    status = fake_kube.status(RESTORES, NS, "restore")
    assert (status["phase"], status["attempts"]) == ("Succeeded", 1)
    assert conditions(status)["Ready"] == ("True", "Succeeded")
    assert status["target"] == DB_DISPLAY
    assert status["restoredFrom"] == {"backup": "nightly", "uri": source, "sha256": SHA}
    assert status["verificationSummary"] == "2/2 passed"
    assert [q["name"] for q in status["verification"]] == ["rows", "users"]
    assert "scratchDatabase" not in status
    assert postgres.operations() == [
        "database_exists",
        "is_empty",
        "check_artifact",
        "run_restore",
        "run_verification_queries",
    ]
    [request] = postgres.requests
    assert (request.target.dbname, request.check_checksum, request.clean) == ("app", False, False)
    assert lock.taken == [("app", f"restore {NS}/restore")]
    assert lock.held == set()
    assert fake_kube.reasons("restore") == ["Started", "Succeeded"]


def test_non_empty_target_without_force_is_refused(
    fake_kube: FakeKube, config: OperatorConfig, postgres: FakePostgres, lock: FakeLock, source: str
) -> None:
    postgres.databases.add("app")
    postgres.non_empty.add("app")
    fake_kube.add(RESTORES, restore_body())

    assert reconcile_restore(fake_kube, config, postgres, lock, "restore") is None

    status = fake_kube.status(RESTORES, NS, "restore")
    assert status["phase"] == "Failed"
    assert conditions(status)["Stalled"] == ("True", "TargetNotEmpty")
    assert f"target database {DB_DISPLAY} is not empty; set mode.force" in status["message"]
    assert "run_restore" not in postgres.operations()
    assert "drop_database" not in postgres.operations()
    assert lock.held == set()
    assert fake_kube.reasons("restore") == ["TargetNotEmpty"]
    assert fake_kube.names("backups", NS) == ["nightly"]  # no safety backup either


def test_missing_target_without_create_database_is_refused(
    fake_kube: FakeKube, config: OperatorConfig, postgres: FakePostgres, lock: FakeLock, source: str
) -> None:
    fake_kube.add(RESTORES, restore_body())
    assert reconcile_restore(fake_kube, config, postgres, lock, "restore") is None
    status = fake_kube.status(RESTORES, NS, "restore")
    assert conditions(status)["Stalled"] == ("True", "DatabaseNotFound")
    assert "set mode.createDatabase" in status["message"]


def test_missing_target_is_created_when_asked(
    fake_kube: FakeKube, config: OperatorConfig, postgres: FakePostgres, lock: FakeLock, source: str
) -> None:
    fake_kube.add(RESTORES, restore_body(mode={"createDatabase": True}))
    assert reconcile_restore(fake_kube, config, postgres, lock, "restore") is None
    assert fake_kube.status(RESTORES, NS, "restore")["phase"] == "Succeeded"
    assert ("create_database", "app") in postgres.calls


def test_lock_held_by_someone_else_waits(
    fake_kube: FakeKube, config: OperatorConfig, postgres: FakePostgres, lock: FakeLock, source: str
) -> None:
    postgres.databases.add("app")
    lock.holder = "restore team-b/migrate-app"
    fake_kube.add(RESTORES, restore_body())

    assert reconcile_restore(fake_kube, config, postgres, lock, "restore") == RetryLater(5.0)

    status = fake_kube.status(RESTORES, NS, "restore")
    assert status["phase"] == "Pending"
    assert status["waitingFor"] == "restore team-b/migrate-app"
    assert conditions(status)["Reconciling"] == ("True", "WaitingForLock")
    assert condition_messages(status) == {
        f"restore team-b/migrate-app is writing to {DB_DISPLAY}; waiting for it to finish"
    }
    assert "attempts" not in status
    assert postgres.operations() == []  # the target was not touched, the source not read while waiting

    lock.holder = None
    assert reconcile_restore(fake_kube, config, postgres, lock, "restore") is None
    status = fake_kube.status(RESTORES, NS, "restore")
    assert (status["phase"], status["attempts"]) == ("Succeeded", 1)
    assert "waitingFor" not in status


def test_corrupt_source_fails_before_the_target_is_touched(
    fake_kube: FakeKube, config: OperatorConfig, postgres: FakePostgres, lock: FakeLock, source: str
) -> None:
    postgres.check_errors.append(RetryableError(Reason.CHECKSUM_MISMATCH, "sha256 differs"))
    fake_kube.add(RESTORES, restore_body(mode={"createDatabase": True}))
    assert reconcile_restore(fake_kube, config, postgres, lock, "restore") is None
    status = fake_kube.status(RESTORES, NS, "restore")
    assert conditions(status)["Stalled"] == ("True", "ChecksumMismatch")
    assert status["message"] == "sha256 differs; the target was not touched"
    assert postgres.operations() == ["database_exists", "check_artifact"]  # not created
    assert lock.held == set()


def test_waits_for_its_backup(
    fake_kube: FakeKube, config: OperatorConfig, postgres: FakePostgres, lock: FakeLock
) -> None:
    fake_kube.put_secret(NS, DB_SECRET, {"uri": DB_URI})
    fake_kube.add(RESTORES, restore_body())
    assert reconcile_restore(fake_kube, config, postgres, lock, "restore") == RetryLater(30.0)
    status = fake_kube.status(RESTORES, NS, "restore")
    assert (status["phase"], conditions(status)["Stalled"]) == ("Pending", ("True", "BackupNotFound"))

    fake_kube.add("backups", backup_body("nightly"))
    assert reconcile_restore(fake_kube, config, postgres, lock, "restore") == RetryLater(30.0)
    # The Backup exists and is on its way: working, not stuck (kstatus InProgress, not Failed).
    waiting = conditions(fake_kube.status(RESTORES, NS, "restore"))
    assert waiting["Reconciling"] == ("True", "BackupNotReady")
    assert waiting["Stalled"] == ("False", "BackupNotReady")
    assert postgres.calls == []


def test_a_failed_backup_fails_the_restore(
    fake_kube: FakeKube, config: OperatorConfig, postgres: FakePostgres, lock: FakeLock, source: str
) -> None:
    fake_kube.set_status("backups", NS, "nightly", {"phase": "Failed", "message": "disk full"})
    fake_kube.add(RESTORES, restore_body())
    assert reconcile_restore(fake_kube, config, postgres, lock, "restore") is None
    status = fake_kube.status(RESTORES, NS, "restore")
    assert conditions(status)["Stalled"] == ("True", "BackupFailed")
    assert status["message"] == "Backup nightly failed: disk full"


# ---------------------------------------------------------------- safety backup


def test_forced_restore_waits_for_its_safety_backup(
    fake_kube: FakeKube, config: OperatorConfig, postgres: FakePostgres, lock: FakeLock, source: str
) -> None:
    postgres.databases.add("app")
    postgres.non_empty.add("app")
    restore = fake_kube.add(RESTORES, restore_body(mode={"force": True, "clean": True}))
    uid = restore["metadata"]["uid"]

    assert reconcile_restore(fake_kube, config, postgres, lock, "restore") == RetryLater(5.0)

    safety_name = f"restore-safety-{uid[:8]}"
    safety = fake_kube.object("backups", NS, safety_name)
    assert safety["metadata"]["labels"] == {SAFETY_FOR_LABEL: uid}
    [owner] = safety["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("Restore", uid, True)
    assert safety["spec"]["storage"] == {"filesystem": {"path": "app"}}
    status = fake_kube.status(RESTORES, NS, "restore")
    assert (status["phase"], status["safetyBackup"]) == ("Pending", safety_name)
    assert conditions(status)["Reconciling"] == ("True", "WaitingForSafetyBackup")
    assert "run_restore" not in postgres.operations()

    # A second look while it runs creates nothing more.
    assert reconcile_restore(fake_kube, config, postgres, lock, "restore") == RetryLater(5.0)
    assert fake_kube.names("backups", NS) == ["nightly", safety_name]
    assert fake_kube.reasons("restore") == ["SafetyBackup"]
    assert "check_artifact" not in postgres.operations()  # the source is read once the target is ready

    fake_kube.set_status("backups", NS, safety_name, {"phase": "Succeeded"})
    postgres.restore_errors.append(PermanentError(RestoreReason.RESTORE_FAILED, "pg_restore: error"))
    assert reconcile_restore(fake_kube, config, postgres, lock, "restore") is None
    status = fake_kube.status(RESTORES, NS, "restore")
    assert status["phase"] == "Failed"
    assert status["message"] == f"pg_restore: error; roll back by restoring Backup {safety_name}"


def test_someone_elses_backup_is_never_taken_for_the_safety_backup(
    fake_kube: FakeKube, config: OperatorConfig, postgres: FakePostgres, lock: FakeLock, source: str
) -> None:
    postgres.databases.add("app")
    postgres.non_empty.add("app")
    restore = fake_kube.add(RESTORES, restore_body(mode={"force": True}))
    fake_kube.add("backups", backup_body(f"restore-safety-{restore['metadata']['uid'][:8]}"))
    assert reconcile_restore(fake_kube, config, postgres, lock, "restore") is None
    status = fake_kube.status(RESTORES, NS, "restore")
    assert conditions(status)["Stalled"] == ("True", "SafetyBackupFailed")
    assert "run_restore" not in postgres.operations()


# ---------------------------------------------------------------- drills


def test_drill_restores_into_a_scratch_database_and_drops_it(
    fake_kube: FakeKube, config: OperatorConfig, postgres: FakePostgres, lock: FakeLock, source: str
) -> None:
    drill = fake_kube.add(RESTORES, restore_body("drill", drill=True))
    scratch = scratch_database_name(NS, drill["metadata"]["uid"], "drill")

    assert reconcile_restore(fake_kube, config, postgres, lock, "drill") is None

    status = fake_kube.status(RESTORES, NS, "drill")
    assert status["phase"] == "Succeeded"
    assert status["scratchDatabase"] == scratch
    assert status["target"] == DB_DISPLAY
    assert postgres.calls == [
        ("check_artifact", "nightly.dump"),
        ("drop_database", scratch),
        ("create_database", scratch),
        ("mark_owner", scratch),
        ("run_restore", scratch),
        ("run_verification_queries", scratch),
        ("drop_database", scratch),
    ]
    assert postgres.databases == set()
    assert lock.taken == [(scratch, f"restore {NS}/drill")]


def test_drill_drops_its_scratch_database_when_the_restore_fails(
    fake_kube: FakeKube, config: OperatorConfig, postgres: FakePostgres, lock: FakeLock, source: str
) -> None:
    drill = fake_kube.add(RESTORES, restore_body("drill", drill=True, retry={"limit": 0}))
    scratch = scratch_database_name(NS, drill["metadata"]["uid"], "drill")
    postgres.restore_errors.append(
        PermanentError(RestoreReason.RESTORE_FAILED, "pg_restore: error: bad archive")
    )

    assert reconcile_restore(fake_kube, config, postgres, lock, "drill") is None

    status = fake_kube.status(RESTORES, NS, "drill")
    assert status["phase"] == "Failed"
    assert conditions(status)["Stalled"] == ("True", "RestoreFailed")
    assert status["message"] == "pg_restore: error: bad archive"  # no roll-back advice for a drill
    assert postgres.calls[-1] == ("drop_database", scratch)
    assert postgres.databases == set()
    assert lock.held == set()


def test_drill_drops_its_scratch_database_when_verification_fails(
    fake_kube: FakeKube, config: OperatorConfig, postgres: FakePostgres, lock: FakeLock, source: str
) -> None:
    fake_kube.add(RESTORES, restore_body("drill", drill=True))
    postgres.outcomes = [
        QueryOutcome("rows", True, "42", None),
        QueryOutcome("users", False, "0", "0 is below the minimum 1"),
    ]
    assert reconcile_restore(fake_kube, config, postgres, lock, "drill") is None
    status = fake_kube.status(RESTORES, NS, "drill")
    assert status["phase"] == "Failed"
    assert status["message"] == "verification queries failed: users"
    assert [q["passed"] for q in status["verification"]] == [True, False]
    assert postgres.operations()[-1] == "drop_database"
    assert postgres.databases == set()


def test_drill_drops_its_scratch_database_on_an_unexpected_error(
    fake_kube: FakeKube, config: OperatorConfig, postgres: FakePostgres, lock: FakeLock, source: str
) -> None:
    fake_kube.add(RESTORES, restore_body("drill", drill=True))
    postgres.restore_errors.append(RuntimeError("boom"))
    assert reconcile_restore(fake_kube, config, postgres, lock, "drill") == RetryLater(30.0)
    assert conditions(fake_kube.status(RESTORES, NS, "drill"))["Reconciling"] == ("True", "UnexpectedError")
    assert postgres.databases == set()


def test_scratch_databases_are_unique_per_namespace_and_uid(
    fake_kube: FakeKube, config: OperatorConfig, postgres: FakePostgres, lock: FakeLock, source: str
) -> None:
    succeeded_backup(fake_kube, config, "team-b")
    one = fake_kube.add(RESTORES, restore_body("drill", drill=True))
    other = fake_kube.add(RESTORES, restore_body("drill", namespace="team-b", drill=True))

    assert reconcile_restore(fake_kube, config, postgres, lock, "drill") is None
    assert reconcile_restore(fake_kube, config, postgres, lock, "drill", namespace="team-b") is None

    scratches = {fake_kube.status(RESTORES, ns, "drill")["scratchDatabase"] for ns in (NS, "team-b")}
    assert len(scratches) == 2
    assert scratches == {
        scratch_database_name(NS, one["metadata"]["uid"], "drill"),
        scratch_database_name("team-b", other["metadata"]["uid"], "drill"),
    }
    # The same name and namespace, re-created (a new uid), gets another database too.
    assert scratch_database_name(NS, "uid-1", "drill") != scratch_database_name(NS, "uid-2", "drill")
    long_name = scratch_database_name(NS, "uid-1", "d" * 253)
    assert len(long_name.encode()) <= 63
    assert long_name.startswith("habitat_drill_ddd")


def test_interrupted_parallel_restore_fails(
    fake_kube: FakeKube, config: OperatorConfig, postgres: FakePostgres, lock: FakeLock, source: str
) -> None:
    postgres.databases.add("app")
    fake_kube.add(RESTORES, restore_body(jobs=2))
    fake_kube.set_status(RESTORES, NS, "restore", {"phase": "Running", "attempts": 1})
    assert reconcile_restore(fake_kube, config, postgres, lock, "restore") is None
    status = fake_kube.status(RESTORES, NS, "restore")
    assert (status["phase"], conditions(status)["Stalled"]) == ("Failed", ("True", "Interrupted"))
    assert status["message"] == "the restore was interrupted midway"
    assert "run_restore" not in postgres.operations()


def test_interrupted_single_transaction_restore_is_retried_with_clean(
    fake_kube: FakeKube, config: OperatorConfig, postgres: FakePostgres, lock: FakeLock, source: str
) -> None:
    postgres.databases.add("app")
    postgres.non_empty.add("app")  # the interrupted attempt may have committed
    fake_kube.add(RESTORES, restore_body())
    fake_kube.set_status(RESTORES, NS, "restore", {"phase": "Running", "attempts": 1})
    assert reconcile_restore(fake_kube, config, postgres, lock, "restore") is None
    status = fake_kube.status(RESTORES, NS, "restore")
    assert (status["phase"], status["attempts"]) == ("Succeeded", 2)
    assert postgres.requests[0].clean is True
    assert fake_kube.reasons("restore")[0] == "Interrupted"


def test_an_artifact_of_another_namespace_is_refused(
    fake_kube: FakeKube, config: OperatorConfig, postgres: FakePostgres, lock: FakeLock
) -> None:
    fake_kube.put_secret(NS, DB_SECRET, {"uri": DB_URI})
    theirs = (config.backup_root.resolve() / "app" / "team-b" / "nightly.dump").as_uri()
    fake_kube.add(RESTORES, restore_body(source={"artifact": {"uri": theirs}}))

    assert reconcile_restore(fake_kube, config, postgres, lock, "restore") is None

    status = fake_kube.status(RESTORES, NS, "restore")
    assert conditions(status)["Stalled"] == ("True", "InvalidArtifactPath")
    assert f"not in namespace {NS}'s part of the backup store" in status["message"]
    assert postgres.calls == []

    # The operator's administrator may allow it.
    fake_kube.add(RESTORES, restore_body("allowed", source={"artifact": {"uri": theirs}}))
    postgres.databases.add("app")
    allowed = dataclasses.replace(config, allow_cross_namespace_restores=True)
    assert reconcile_restore(fake_kube, allowed, postgres, lock, "allowed") is None
    assert fake_kube.status(RESTORES, NS, "allowed")["phase"] == "Succeeded"
