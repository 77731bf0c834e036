"""BackupRun against the fake apiserver and a fake pg_dump: status, Events and retries of one Backup."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from habitat_operator.api.common import Reason
from habitat_operator.config import OperatorConfig
from habitat_operator.controllers.base.lifecycle import RetryLater
from habitat_operator.engines.postgres.dump import BackupRequest
from habitat_operator.errors import PermanentError, RetryableError
from tests.unit.bodies import (
    DB_DISPLAY,
    DB_SECRET,
    DB_URI,
    NS,
    backup_body,
    conditions,
    reconcile_backup,
)
from tests.unit.fake_engines import ARTIFACT_BYTES, FakeDump
from tests.unit.fake_kube import FakeKube

BACKUPS = "backups"


def applied(kube: FakeKube, name: str = "nightly", **spec: Any) -> None:
    kube.put_secret(NS, DB_SECRET, {"uri": DB_URI})
    kube.add(BACKUPS, backup_body(name, **spec))


def test_pending_to_succeeded(fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig) -> None:
    applied(fake_kube)
    phases_while_dumping: list[str] = []
    dump.during = lambda _: phases_while_dumping.append(fake_kube.status(BACKUPS, NS, "nightly")["phase"])

    assert reconcile_backup(fake_kube, config, dump, "nightly") is None

    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert phases_while_dumping == ["Running"]  # written before the work it announces
    assert status["phase"] == "Succeeded"
    assert conditions(status) == {
        "Ready": ("True", "Succeeded"),
        "Reconciling": ("False", "Succeeded"),
        "Stalled": ("False", "Succeeded"),
    }
    assert all(c["observedGeneration"] == 1 for c in status["conditions"])
    assert status["observedGeneration"] == 1
    assert status["attempts"] == 1
    assert status["database"] == DB_DISPLAY
    assert status["verification"] == "Verified"
    destination = config.backup_root.resolve() / "app" / NS / "nightly.dump"
    assert status["artifact"] == {
        "uri": destination.as_uri(),
        "sizeBytes": len(ARTIFACT_BYTES),
        "size": "1.2 KiB",
        "sha256": hashlib.sha256(ARTIFACT_BYTES).hexdigest(),
        "format": "custom",
        "encrypted": False,
        "pgVersion": "15.8",
        "compression": "gzip",
    }
    assert status["duration"] == "0s"
    assert status["startedAt"] == status["completedAt"] == status["lastSuccessfulTime"]
    assert "message" not in status
    events = fake_kube.events_for("nightly")
    assert [(e.type, e.reason) for e in events] == [("Normal", "Started"), ("Normal", "Succeeded")]
    assert DB_DISPLAY in events[0].message
    assert destination.as_uri() in events[1].message
    assert "hunter2" not in str(fake_kube.objects) + str(fake_kube.events)


def test_the_engine_gets_the_spec(fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig) -> None:
    applied(fake_kube, format="directory", jobs=4, verify=False, timeout="10m", include={"schemas": ["app"]})
    assert reconcile_backup(fake_kube, config, dump, "nightly") is None
    [request] = dump.requests
    assert isinstance(request, BackupRequest)
    assert request.target.display == DB_DISPLAY
    assert request.destination == config.backup_root.resolve() / "app" / NS / "nightly.dir"
    assert (request.format, request.jobs, request.verify, request.timeout) == ("directory", 4, False, 600.0)
    assert request.include_schemas == ["app"]
    assert request.encryption_key is None
    assert fake_kube.status(BACKUPS, NS, "nightly")["verification"] == "NotVerified"


def test_a_succeeded_backup_is_left_alone(
    fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig
) -> None:
    applied(fake_kube)
    reconcile_backup(fake_kube, config, dump, "nightly")
    patches, events = len(fake_kube.patches), len(fake_kube.events)

    assert reconcile_backup(fake_kube, config, dump, "nightly") is None

    assert len(fake_kube.patches) == patches
    assert len(fake_kube.events) == events
    assert len(dump.requests) == 1


def test_retryable_failure_backs_off_then_fails(
    fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig
) -> None:
    applied(fake_kube)
    unreachable = RetryableError(Reason.DATABASE_UNREACHABLE, f"could not connect to {DB_DISPLAY}")
    dump.fail(unreachable, unreachable, unreachable, unreachable)

    delays = []
    for attempt in (1, 2, 3):
        delays.append(reconcile_backup(fake_kube, config, dump, "nightly"))
        status = fake_kube.status(BACKUPS, NS, "nightly")
        assert status["phase"] == "Pending"
        assert status["attempts"] == attempt
        assert conditions(status)["Reconciling"] == ("True", "DatabaseUnreachable")
        assert conditions(status)["Ready"] == ("False", "DatabaseUnreachable")
        assert f"retry {attempt}/3" in status["message"]
    assert delays == [RetryLater(30.0), RetryLater(60.0), RetryLater(120.0)]
    assert "could not connect to db.example:5432/app; retry 1/3 in 30s" in fake_kube.events[1].message

    assert reconcile_backup(fake_kube, config, dump, "nightly") is None

    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert status["phase"] == "Failed"
    assert status["attempts"] == 4
    assert status["message"] == f"could not connect to {DB_DISPLAY}"
    assert "\n" not in status["message"]
    assert conditions(status)["Stalled"] == ("True", "DatabaseUnreachable")
    assert "artifact" not in status
    warnings = [(e.reason, e.message) for e in fake_kube.events_for("nightly") if e.type == "Warning"]
    assert [reason for reason, _ in warnings] == ["DatabaseUnreachable"] * 4
    assert warnings[-1][1] == f"could not connect to {DB_DISPLAY}"
    assert fake_kube.reasons("nightly").count("Started") == 4
    assert reconcile_backup(fake_kube, config, dump, "nightly") is None  # Failed is final
    assert len(dump.requests) == 4


def test_retry_policy_of_the_spec(fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig) -> None:
    applied(fake_kube, retry={"limit": 1, "backoff": "10s"})
    dump.fail(RetryableError(Reason.TIMEOUT, "too slow"), RetryableError(Reason.TIMEOUT, "too slow"))
    assert reconcile_backup(fake_kube, config, dump, "nightly") == RetryLater(10.0)
    assert "retry 1/1 in 10s" in fake_kube.status(BACKUPS, NS, "nightly")["message"]
    assert reconcile_backup(fake_kube, config, dump, "nightly") is None
    assert fake_kube.status(BACKUPS, NS, "nightly")["phase"] == "Failed"


def test_no_retries(fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig) -> None:
    applied(fake_kube, retry={"limit": 0})
    dump.fail(RetryableError(Reason.TIMEOUT, "too slow"))
    assert reconcile_backup(fake_kube, config, dump, "nightly") is None
    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert (status["phase"], status["attempts"]) == ("Failed", 1)


def test_a_retry_that_succeeds_clears_the_failure(
    fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig
) -> None:
    applied(fake_kube)
    dump.fail(RetryableError(Reason.DATABASE_UNREACHABLE, "down"))
    assert reconcile_backup(fake_kube, config, dump, "nightly") == RetryLater(30.0)
    assert reconcile_backup(fake_kube, config, dump, "nightly") is None
    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert (status["phase"], status["attempts"]) == ("Succeeded", 2)
    assert "message" not in status  # removed with a null in the merge patch
    assert {"message": None} in [
        {k: v for k, v in patch.items() if k == "message"} for patch in fake_kube.patches_of("nightly")
    ]


def test_permanent_failure_fails_at_once(fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig) -> None:
    applied(fake_kube)
    dump.fail(PermanentError(Reason.AUTHENTICATION_FAILED, "password authentication failed for user backup"))

    assert reconcile_backup(fake_kube, config, dump, "nightly") is None

    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert status["phase"] == "Failed"
    assert status["attempts"] == 1
    assert status["message"] == "password authentication failed for user backup"
    assert conditions(status)["Stalled"] == ("True", "AuthenticationFailed")
    assert "completedAt" in status
    assert fake_kube.reasons("nightly") == ["Started", "AuthenticationFailed"]


def test_verification_failure_is_recorded(
    fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig
) -> None:
    applied(fake_kube)
    dump.fail(PermanentError(Reason.VERIFICATION_FAILED, "pg_restore --list failed"))
    assert reconcile_backup(fake_kube, config, dump, "nightly") is None
    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert (status["phase"], status["verification"]) == ("Failed", "VerificationFailed")


def test_invalid_connection_uri_fails_before_starting(
    fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig
) -> None:
    applied(fake_kube)
    fake_kube.put_secret(NS, DB_SECRET, {"uri": "mysql://root:hunter2@db/app"})
    assert reconcile_backup(fake_kube, config, dump, "nightly") is None
    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert status["phase"] == "Failed"
    assert conditions(status)["Stalled"] == ("True", "InvalidConnectionUri")
    assert "hunter2" not in str(status) + str(fake_kube.events)
    assert dump.requests == []
    assert "Started" not in fake_kube.reasons("nightly")


def test_encryption_key_is_read_from_its_secret(
    fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig
) -> None:
    applied(fake_kube, encryption={"keySecretRef": {"name": "backup-key"}})
    assert reconcile_backup(fake_kube, config, dump, "nightly") == RetryLater(30.0)
    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert conditions(status)["Stalled"] == ("True", "SecretNotFound")
    assert "backup-key" in status["conditions"][0]["message"]

    fake_kube.put_secret(NS, "backup-key", {"key": b"\x01" * 32})
    assert reconcile_backup(fake_kube, config, dump, "nightly") is None
    assert dump.requests[0].encryption_key == b"\x01" * 32
    assert fake_kube.status(BACKUPS, NS, "nightly")["artifact"]["encrypted"] is True


def test_storage_path_outside_the_root_fails(
    fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig, tmp_path: Path
) -> None:
    (config.backup_root / "escape").symlink_to(tmp_path)
    applied(fake_kube, storage={"filesystem": {"path": "escape/app"}})
    assert reconcile_backup(fake_kube, config, dump, "nightly") is None
    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert conditions(status)["Stalled"] == ("True", "InvalidArtifactPath")
    assert dump.requests == []
