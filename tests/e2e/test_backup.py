"""Backup end to end: kubectl apply, the operator process, real PostgreSQL, artifacts on disk."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from habitat_operator.engines.postgres.dump import read_plaintext
from tests.conftest import database_uri
from tests.e2e.conftest import OperatorProcess
from tests.e2e.helpers import (
    artifact_path,
    backup,
    condition,
    seed,
    snapshot,
    wait_phase,
    wait_ready,
)
from tests.harness import Kubectl

pytestmark = pytest.mark.e2e


def restore_into(path: Path, target_uri: str) -> None:
    subprocess.run(["pg_restore", "--no-owner", "-d", target_uri, str(path)], check=True, capture_output=True)


@pytest.fixture
def restore_target(pg_admin_uri: str) -> Any:
    name = f"r_{secrets.token_hex(5)}"
    with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield database_uri(pg_admin_uri, name)
    with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_one_shot_backup_restores_with_pg_restore(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    db_secret: str,
    fresh_database: str,
    restore_target: str,
) -> None:
    seed(fresh_database)
    kubectl.apply(backup("once"))
    obj = wait_ready(kubectl, "once", operator_alive)

    status = obj["status"]
    assert status["phase"] == "Succeeded"
    assert status["verification"] == "Verified"
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert {c["type"] for c in status["conditions"]} == {"Ready", "Reconciling", "Stalled"}
    assert condition(obj, "Stalled")["status"] == "False"
    assert status["artifact"]["format"] == "custom" and status["artifact"]["encrypted"] is False
    assert status["artifact"]["pgVersion"].startswith("15")
    assert status["database"].endswith(fresh_database.rsplit("/", 1)[1])
    path = artifact_path(obj)
    assert path.stat().st_size == status["artifact"]["sizeBytes"]
    assert not [p for p in path.parent.iterdir() if "partial" in p.name]

    restore_into(path, restore_target)
    assert snapshot(restore_target) == snapshot(fresh_database)

    table = kubectl.run("get", "habitat").stdout
    assert "once" in table and "Succeeded" in table and "KiB" in table

    # A one-shot Backup runs once, like a Job: the apiserver refuses a later spec change.
    edit = kubectl.apply(backup("once", verify=False), check=False)
    assert edit.returncode != 0
    assert "spec of a one-shot Backup is immutable; create a new Backup to run again" in edit.stderr
    after = kubectl.get("backup", "once")
    assert after["metadata"]["generation"] == obj["metadata"]["generation"] == 1
    assert after["spec"] == obj["spec"]
    assert after["status"]["attempts"] == 1
    assert after["status"]["artifact"] == status["artifact"]


def test_encrypted_artifact_is_unreadable_without_the_key(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    db_secret: str,
    fresh_database: str,
    restore_target: str,
) -> None:
    seed(fresh_database)
    key = secrets.token_bytes(32)
    kubectl.run("create", "secret", "generic", "backup-key", f"--from-literal=key={key.hex()}")
    kubectl.apply(backup("sealed", encryption={"keySecretRef": {"name": "backup-key"}}))
    obj = wait_ready(kubectl, "sealed", operator_alive)
    assert obj["status"]["artifact"]["encrypted"] is True
    path = artifact_path(obj)

    listing = subprocess.run(["pg_restore", "--list", str(path)], capture_output=True)
    assert listing.returncode != 0
    assert b"habitat" not in path.read_bytes()[:4096].lower()

    import asyncio

    async def decrypt() -> bytes:
        return b"".join([chunk async for chunk in read_plaintext(path, key.hex().encode())])

    plain = path.with_suffix(".plain")
    plain.write_bytes(asyncio.run(decrypt()))
    restore_into(plain, restore_target)
    assert snapshot(restore_target) == snapshot(fresh_database)


def test_missing_secret_stalls_with_a_readable_message(
    operator_alive: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    kubectl.apply(backup("orphan", database={"secretRef": {"name": "nowhere"}}))
    result = kubectl.run("wait", "--for=condition=Stalled", "backup/orphan", "--timeout=60s", check=False)
    assert result.returncode == 0, operator_alive.log_tail()
    stalled = condition(kubectl.get("backup", "orphan"), "Stalled")
    assert stalled["reason"] == "SecretNotFound"
    assert f"Secret {namespace}/nowhere not found" in stalled["message"]


def test_wrong_password_retries_then_fails_without_leaking_it(
    operator_alive: OperatorProcess, kubectl: Kubectl, fresh_database: str
) -> None:
    password = f"pw-{secrets.token_hex(8)}"
    uri = fresh_database.replace("postgres:", "habitat_nobody:", 1)
    uri = uri.replace(uri.split("@")[0].split(":", 2)[2], password, 1)
    kubectl.run("create", "secret", "generic", "habitat-db", f"--from-literal=uri={uri}")
    kubectl.apply(backup("denied", retry={"limit": 1, "backoff": "1s"}))
    obj = wait_phase(kubectl, "backup", "denied", {"Failed"}, operator_alive)
    assert obj["status"]["attempts"] == 2
    assert condition(obj, "Stalled")["reason"] == "AuthenticationFailed"
    events = kubectl.run("get", "events", "-o", "json").stdout
    for text in (json.dumps(obj), events, operator_alive.log_text()):
        assert password not in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schedule": "every night"}, "spec.schedule"),
        ({"storage": {"filesystem": {"path": "/etc"}}}, "spec.storage.filesystem.path"),
        ({"storage": {"filesystem": {"path": "a/../../b"}}}, "spec.storage.filesystem.path"),
        ({"schedule": "@daily", "retention": {"keepLast": -1}}, "spec.retention.keepLast"),
        ({"jobs": 4}, "jobs > 1 requires format: directory"),
        ({"retention": {"keepLast": 3}}, "retention requires a schedule"),
    ],
)
def test_invalid_specs_are_rejected_at_apply_time(
    installed: None, kubectl: Kubectl, change: dict[str, Any], message: str
) -> None:
    result = kubectl.apply(backup("invalid", **change), check=False)
    assert result.returncode != 0, f"accepted: {change}"
    assert message in result.stderr


def test_cron_the_schema_cannot_check_stalls_with_invalid_spec(
    operator_alive: OperatorProcess, kubectl: Kubectl, db_secret: str
) -> None:
    """The CRD pattern checks the cron's shape; the operator checks its ranges (minute 61)."""
    kubectl.apply(backup("badcron", schedule="61 * * * *"))
    result = kubectl.run("wait", "--for=condition=Stalled", "backup/badcron", "--timeout=60s", check=False)
    assert result.returncode == 0, operator_alive.log_tail()
    stalled = condition(kubectl.get("backup", "badcron"), "Stalled")
    assert stalled["reason"] == "InvalidSpec"
    assert stalled["message"].startswith("spec.schedule")


def test_disk_full_fails_cleanly_and_leaves_no_partial_file(
    operator_alive: OperatorProcess, kubectl: Kubectl, db_secret: str, fresh_database: str, namespace: str
) -> None:
    seed(fresh_database, rows=50_000)
    tiny = operator_alive.backup_root / "tiny"
    tiny.mkdir(parents=True, exist_ok=True)
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(tiny)], capture_output=True
    ).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        kubectl.apply(backup("full", storage={"filesystem": {"path": "tiny"}}))
        obj = wait_phase(kubectl, "backup", "full", {"Failed"}, operator_alive)
        assert condition(obj, "Stalled")["reason"] == "DiskFull"
        assert list((tiny / namespace).iterdir()) == []
    finally:
        subprocess.run(["umount", str(tiny)], check=False)


def test_operator_killed_mid_backup_recovers_without_partial_artifacts(
    operator_alive: OperatorProcess, kubectl: Kubectl, db_secret: str, fresh_database: str, namespace: str
) -> None:
    # Big enough that the dump is still running when the operator is killed.
    seed(fresh_database, rows=1_500_000)
    kubectl.apply(backup("crash", retry={"limit": 2, "backoff": "1s"}))
    wait_phase(kubectl, "backup", "crash", {"Running"}, operator_alive)
    operator_alive.kill()
    assert kubectl.get("backup", "crash")["status"]["phase"] == "Running"

    operator_alive.start()
    obj = wait_ready(kubectl, "crash", operator_alive, timeout=240)
    assert obj["status"]["phase"] == "Succeeded"
    assert obj["status"]["attempts"] == 2
    directory = artifact_path(obj).parent
    assert [p.name for p in directory.iterdir()] == ["crash.dump"]
    reasons = kubectl.run("get", "events", "--field-selector=involvedObject.name=crash", "-o", "json").stdout
    assert "Interrupted" in reasons

    # Gauges are rebuilt from status after the restart.
    families = operator_alive.metrics()
    samples = families["habitat_backup_last_success_timestamp_seconds"].samples
    assert any(s.labels == {"namespace": namespace, "backup": "crash"} for s in samples)


def test_metrics_endpoint_is_scraped_and_parsed(
    operator_alive: OperatorProcess, kubectl: Kubectl, db_secret: str, fresh_database: str, namespace: str
) -> None:
    seed(fresh_database, rows=10)
    kubectl.apply(backup("measured"))
    wait_ready(kubectl, "measured", operator_alive)
    families = operator_alive.metrics()

    runs = families["habitat_backup_runs"].samples
    assert any(
        s.labels == {"namespace": namespace, "backup": "measured", "result": "success"} and s.value == 1
        for s in runs
    )
    assert any(s.labels["namespace"] == namespace for s in families["habitat_backup_last_size_bytes"].samples)
    assert any(s.labels.get("kind") == "Backup" for s in families["habitat_operator_reconcile"].samples)
    assert families["habitat_operator_build_info"].samples[0].labels["version"]
    assert "habitat_backup_duration_seconds" in families
    # No label value may carry a connection string.
    assert "postgresql://" not in operator_alive.scrape()


def test_os_environment_is_not_leaked_into_pg_dump_arguments() -> None:
    """Credentials reach pg_dump through its environment; /proc/<pid>/cmdline is world-readable."""
    from habitat_operator.engines.postgres.dump import BackupRequest, _dump_argv
    from habitat_operator.engines.postgres.uri import ConnectionTarget

    target = ConnectionTarget("postgresql://u:s3cret@db:5432/habitat")
    argv = _dump_argv(BackupRequest(target=target, destination=Path("/tmp/x.dump")))
    assert not any("s3cret" in arg for arg in argv)
    assert "s3cret" not in " ".join(os.environ.get(k, "") for k in ("PGPASSWORD",))
