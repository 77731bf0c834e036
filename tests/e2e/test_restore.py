"""Restore end to end: from a Backup into another database, safety backups, checksums, drills."""

from __future__ import annotations

import secrets
from typing import Any

import psycopg
import pytest

from tests.conftest import database_uri
from tests.e2e.conftest import OperatorProcess
from tests.e2e.helpers import (
    artifact_path,
    backup,
    condition,
    finished,
    restore,
    run_by_hand,
    seed,
    snapshot,
    tables,
    wait_for,
    wait_phase,
    wait_ready,
)
from tests.harness import Kubectl

pytestmark = pytest.mark.e2e


@pytest.fixture
def big_source_backup(
    operator_alive: OperatorProcess, kubectl: Kubectl, db_secret: str, fresh_database: str
) -> dict[str, Any]:
    """Like source_backup, with enough rows that a restore of it is still running when looked at."""
    seed(fresh_database, rows=1_500_000)
    kubectl.apply(backup("source"))
    return wait_ready(kubectl, "source", operator_alive, timeout=240)


def test_restore_into_an_empty_database_matches_the_source(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    source_backup: dict[str, Any],
    fresh_database: str,
    target_database: str,
) -> None:
    kubectl.apply(
        restore(
            "to-b",
            verify={
                "queries": [{"name": "events", "sql": "SELECT count(*) FROM events", "expect": {"min": 1000}}]
            },
        )
    )
    result = kubectl.run("wait", "--for=condition=Ready", "restore/to-b", "--timeout=120s", check=False)
    assert result.returncode == 0, (
        f"{kubectl.get('restore', 'to-b').get('status')}\n{operator_alive.log_tail()}"
    )
    obj = kubectl.get("restore", "to-b")
    status = obj["status"]
    assert status["phase"] == "Succeeded"
    assert status["restoredFrom"] == {
        "backup": "source",
        "uri": source_backup["status"]["artifact"]["uri"],
        "sha256": source_backup["status"]["artifact"]["sha256"],
        "sizeBytes": source_backup["status"]["artifact"]["sizeBytes"],  # for the drill's measured RTO
    }
    assert status["verification"] == [{"name": "events", "passed": True, "value": "1000"}]
    assert status["verificationSummary"] == "1/1 passed"
    assert status["durationSeconds"] > 0
    assert "safetyBackup" not in status  # the target was empty
    assert snapshot(target_database) == snapshot(fresh_database)

    # A Restore runs once: the apiserver refuses a later spec change.
    edit = kubectl.run("patch", "restore", "to-b", "--type=merge", "-p", '{"spec":{"jobs":2}}', check=False)
    assert edit.returncode != 0
    assert "spec of a one-shot Restore is immutable; create a new Restore to run again" in edit.stderr
    after = kubectl.get("restore", "to-b")
    assert after["metadata"]["generation"] == obj["metadata"]["generation"] == 1
    assert after["spec"] == obj["spec"]
    assert after["status"]["phase"] == "Succeeded"
    assert after["status"]["restoredFrom"] == status["restoredFrom"]


def test_non_empty_target_is_refused_without_force_and_backed_up_with_it(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    source_backup: dict[str, Any],
    fresh_database: str,
    target_database: str,
    pg_admin_uri: str,
) -> None:
    with psycopg.connect(target_database) as conn:
        conn.execute("CREATE TABLE precious (id int)")
        conn.execute("INSERT INTO precious VALUES (42)")

    kubectl.apply(restore("refused"))
    obj = finished(kubectl, "refused", operator_alive)
    assert obj["status"]["phase"] == "Failed"
    assert condition(obj, "Stalled")["reason"] == "TargetNotEmpty"
    assert "mode.force" in condition(obj, "Stalled")["message"]
    assert tables(target_database) == ["precious"]

    kubectl.apply(restore("forced", mode={"force": True, "clean": True}))
    obj = finished(kubectl, "forced", operator_alive, timeout=180)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    safety = kubectl.get("backup", obj["status"]["safetyBackup"])
    assert safety["status"]["phase"] == "Succeeded"
    assert snapshot(target_database) == snapshot(fresh_database)

    # The safety backup holds the target as it was.
    name = f"undo_{secrets.token_hex(4)}"
    with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        import subprocess

        undo = database_uri(pg_admin_uri, name)
        subprocess.run(
            ["pg_restore", "--no-owner", "-d", undo, str(artifact_path(safety))],
            check=True,
            capture_output=True,
        )
        with psycopg.connect(undo) as conn:
            assert conn.execute("SELECT id FROM precious").fetchall() == [(42,)]
    finally:
        with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_corrupted_artifact_is_refused_before_the_target_is_touched(
    operator_alive: OperatorProcess, kubectl: Kubectl, source_backup: dict[str, Any], target_database: str
) -> None:
    path = artifact_path(source_backup)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    kubectl.apply(restore("corrupt"))
    obj = finished(kubectl, "corrupt", operator_alive)
    assert obj["status"]["phase"] == "Failed"
    assert condition(obj, "Stalled")["reason"] == "ChecksumMismatch"
    assert "not touched" in obj["status"]["message"]
    assert tables(target_database) == []


def test_encrypted_round_trip(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    db_secret: str,
    fresh_database: str,
    target_database: str,
) -> None:
    seed(fresh_database)
    kubectl.run("create", "secret", "generic", "backup-key", f"--from-literal=key={secrets.token_hex(32)}")
    kubectl.apply(backup("source", encryption={"keySecretRef": {"name": "backup-key"}}))
    wait_ready(kubectl, "source", operator_alive)
    kubectl.apply(restore("sealed"))
    obj = finished(kubectl, "sealed", operator_alive)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    assert snapshot(target_database) == snapshot(fresh_database)


def test_a_drill_restores_into_a_scratch_database_and_drops_it(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    source_backup: dict[str, Any],
    target_database: str,
    pg_admin_uri: str,
    namespace: str,
) -> None:
    queries = [
        {"name": "events", "sql": "SELECT count(*) FROM events", "expect": {"min": 1000}},
        {"name": "audit", "sql": "SELECT note FROM audit", "expect": {"equals": "created"}},
    ]
    kubectl.apply(restore("drill", drill=True, verify={"queries": queries}))
    obj = finished(kubectl, "drill", operator_alive)
    status = obj["status"]
    assert status["phase"] == "Succeeded", status
    assert status["verificationSummary"] == "2/2 passed"
    scratch = status["scratchDatabase"]
    assert scratch.startswith("habitat_drill_")
    with psycopg.connect(pg_admin_uri) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (scratch,)).fetchone() is None
    assert tables(target_database) == []  # a drill never touches the target

    families = operator_alive.metrics()
    drills = families["habitat_restore_drill_last_success_timestamp_seconds"].samples
    assert any(s.labels == {"namespace": namespace, "restore": "drill"} for s in drills)


def test_a_failing_verification_query_fails_the_drill(
    operator_alive: OperatorProcess, kubectl: Kubectl, source_backup: dict[str, Any], target_database: str
) -> None:
    queries = [{"name": "too-many", "sql": "SELECT count(*) FROM events", "expect": {"min": 1_000_000}}]
    kubectl.apply(restore("strict", drill=True, verify={"queries": queries}))
    obj = finished(kubectl, "strict", operator_alive)
    assert obj["status"]["phase"] == "Failed"
    assert condition(obj, "Stalled")["reason"] == "VerificationFailed"
    assert obj["status"]["verification"][0]["passed"] is False
    assert obj["status"]["verificationSummary"] == "0/1 passed"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"backupRef": {"name": "a"}, "artifact": {"uri": "file:///x.dump"}}, "exactly one of"),
        ({}, "exactly one of"),
    ],
)
def test_invalid_sources_are_rejected_at_apply_time(
    installed: None, kubectl: Kubectl, source: dict[str, Any], message: str
) -> None:
    result = kubectl.apply(restore("invalid", source=source), check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_a_schedule_needs_drill(installed: None, kubectl: Kubectl) -> None:
    result = kubectl.apply(restore("nodrill", schedule="@weekly"), check=False)
    assert result.returncode != 0
    assert "schedule requires drill: true" in result.stderr


def test_operator_killed_mid_restore_retries_the_rolled_back_restore(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    big_source_backup: dict[str, Any],
    fresh_database: str,
    target_database: str,
) -> None:
    kubectl.apply(restore("crash"))
    wait_phase(kubectl, "restore", "crash", {"Running"}, operator_alive)
    operator_alive.kill()
    assert kubectl.get("restore", "crash")["status"]["phase"] == "Running"

    operator_alive.start()
    obj = finished(kubectl, "crash", operator_alive, timeout=240)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    assert obj["status"]["attempts"] == 2
    assert snapshot(target_database) == snapshot(fresh_database)


def test_scheduled_drills_run_as_children_and_keep_their_history(
    operator_alive: OperatorProcess, kubectl: Kubectl, source_backup: dict[str, Any], target_database: str
) -> None:
    queries = [{"name": "events", "sql": "SELECT count(*) FROM events", "expect": {"min": 1}}]
    kubectl.apply(restore("weekly", drill=True, schedule="* * * * *", verify={"queries": queries}))
    run = wait_for(
        "the first drill",
        lambda: kubectl.get("restore", "weekly").get("status", {}).get("recentRuns"),
        timeout=90,
        operator=operator_alive,
    )[0]
    child = finished(kubectl, run, operator_alive)
    assert child["status"]["phase"] == "Succeeded", child["status"]
    assert child["metadata"]["ownerReferences"][0]["name"] == "weekly"
    parent = wait_for(
        "lastSuccessfulTime",
        lambda: (o := kubectl.get("restore", "weekly"))["status"].get("lastSuccessfulTime") and o,
        timeout=30,
        operator=operator_alive,
    )
    assert parent["status"]["phase"] == "Scheduled"
    assert condition(parent, "Ready")["status"] == "True"


def test_two_restores_never_write_to_one_database_at_once(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    big_source_backup: dict[str, Any],
    fresh_database: str,
    target_database: str,
) -> None:
    kubectl.apply(restore("first"))
    wait_phase(kubectl, "restore", "first", {"Running"}, operator_alive)
    kubectl.apply(restore("second", mode={"force": True, "clean": True}, preRestoreBackup=False))
    # One operator queues the second behind the first (one operation per database); across operator
    # processes the database lock does it (test_database_lock.py).
    waiting = wait_for(
        "the second restore to queue",
        lambda: (
            (o := kubectl.get("restore", "second")).get("status", {}).get("conditions")
            and condition(o, "Reconciling")["reason"] == "Queued"
            and o
        ),
        timeout=60,
        operator=operator_alive,
    )
    assert waiting["status"]["phase"] == "Pending"
    target = target_database.rsplit("@", 1)[1]
    assert f"another operation on {target} is running" in condition(waiting, "Reconciling")["message"]
    assert kubectl.get("restore", "first")["status"]["phase"] == "Running"
    assert finished(kubectl, "first", operator_alive, timeout=240)["status"]["phase"] == "Succeeded"
    second = finished(kubectl, "second", operator_alive, timeout=240)
    assert second["status"]["phase"] == "Succeeded", second["status"]
    assert snapshot(target_database) == snapshot(fresh_database)


def test_restore_from_a_schedule_takes_its_latest_run_or_a_named_one(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    db_secret: str,
    fresh_database: str,
    target_database: str,
) -> None:
    seed(fresh_database, rows=10)
    kubectl.apply(backup("nightly", schedule="0 0 1 1 *"))
    parent = kubectl.get("backup", "nightly")
    for run in ("nightly-20200101000000", "nightly-20200102000000"):
        kubectl.apply(run_by_hand(run, parent))
        wait_ready(kubectl, run, operator_alive)

    kubectl.apply(restore("latest", source={"backupRef": {"name": "nightly"}}, drill=True))
    assert (
        finished(kubectl, "latest", operator_alive)["status"]["restoredFrom"]["backup"]
        == "nightly-20200102000000"
    )
    named = {"backupRef": {"name": "nightly", "run": "nightly-20200101000000"}}
    kubectl.apply(restore("named", source=named, drill=True))
    assert (
        finished(kubectl, "named", operator_alive)["status"]["restoredFrom"]["backup"]
        == "nightly-20200101000000"
    )


def test_directory_format_dumps_and_restores_in_parallel(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    db_secret: str,
    fresh_database: str,
    target_database: str,
) -> None:
    seed(fresh_database, rows=5000)
    kubectl.apply(backup("source", format="directory", jobs=2))
    made = wait_ready(kubectl, "source", operator_alive)
    assert made["status"]["artifact"]["format"] == "directory"
    assert artifact_path(made).is_dir() and artifact_path(made).name == "source.dir"

    kubectl.apply(restore("parallel", jobs=2))
    obj = finished(kubectl, "parallel", operator_alive)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    assert obj["status"]["restoredFrom"]["sha256"] == made["status"]["artifact"]["sha256"]
    assert snapshot(target_database) == snapshot(fresh_database)
