"""The security review's findings (issue 12), each reproduced end to end against the fixed operator.

One test per finding: the scenario the review described, and the behaviour the fix promises.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from tests.conftest import database_uri
from tests.e2e.conftest import OperatorProcess
from tests.e2e.helpers import (
    SCHEDULE_LABEL,
    artifact_path,
    backup,
    condition,
    events,
    finished,
    restore,
    seed,
    tables,
    wait_for,
    wait_phase,
    wait_ready,
)
from tests.harness import Kubectl

pytestmark = pytest.mark.e2e

SAFETY_FOR_LABEL = "ops.habitat.dev/safety-backup-for"
SCRATCH_DATABASES = r"SELECT datname FROM pg_database WHERE datname LIKE 'habitat\_drill\_%'"
NOBODY_UID = "00000000-0000-0000-0000-000000000000"


# ---------------------------------------------------------------- helpers


@pytest.fixture
def make_database(pg_admin_uri: str) -> Iterator[Callable[[str], str]]:
    """Creates empty databases (named `<prefix>_<hex>`) and drops them after the test."""
    made: list[str] = []

    def make(prefix: str) -> str:
        name = f"{prefix}_{secrets.token_hex(5)}"
        with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        made.append(name)
        return database_uri(pg_admin_uri, name)

    yield make
    with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
        for name in made:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def scratch_databases(pg_admin_uri: str) -> set[str]:
    with psycopg.connect(pg_admin_uri) as conn:
        return {row[0] for row in conn.execute(SCRATCH_DATABASES).fetchall()}


def metric_series(operator: OperatorProcess, family: str) -> list[dict[str, str]]:
    families = operator.metrics()
    found = families.get(family)
    return [dict(s.labels) for s in found.samples] if found else []


class Watch:
    """Every version of one object the apiserver reports, from before it exists (a field-selector
    watch, so no state between two polls is missed)."""

    def __init__(self, kubectl: Kubectl, plural: str, name: str) -> None:
        argv = [
            kubectl.stack.kubectl_path,
            "--kubeconfig",
            kubectl.stack.kubeconfig,
            "-n",
            kubectl.namespace,
            "get",
            plural,
            f"--field-selector=metadata.name={name}",
            "--watch",
            "--output-watch-events",
            "-o",
            "json",
        ]
        self.versions: list[dict[str, Any]] = []
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        decoder = json.JSONDecoder()
        buffer = ""
        for line in self.process.stdout:
            buffer += line
            while buffer.strip():
                try:
                    event, end = decoder.raw_decode(buffer.lstrip())
                except json.JSONDecodeError:
                    break
                buffer = buffer.lstrip()[end:]
                if isinstance(event, dict) and "object" in event:
                    self.versions.append(event["object"])

    def until(self, what: str, done: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        return wait_for(  # type: ignore[no-any-return]
            what, lambda: next((v for v in self.versions if done(v)), None), timeout=timeout
        )

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self._reader.join(timeout=5)


def phase_of(obj: dict[str, Any]) -> str | None:
    return (obj.get("status") or {}).get("phase")


# ---------------------------------------------------------------- 2: safety backups


def test_a_rerun_restore_takes_a_new_safety_backup_of_the_target_as_it_is_now(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    source_backup: dict[str, Any],
    target_database: str,
    make_database: Callable[[str], str],
) -> None:
    with psycopg.connect(target_database) as conn:
        conn.execute("CREATE TABLE precious (id int)")
        conn.execute("INSERT INTO precious VALUES (42)")
    manifest = restore("rerun", mode={"force": True, "clean": True})

    kubectl.apply(manifest)
    first = finished(kubectl, "rerun", operator_alive, timeout=180)
    assert first["status"]["phase"] == "Succeeded", first["status"]
    first_uid = first["metadata"]["uid"]
    first_safety = first["status"]["safetyBackup"]
    assert first_safety == f"rerun-safety-{first_uid[:8]}"
    safety = kubectl.get("backup", first_safety)
    assert safety["metadata"]["labels"][SAFETY_FOR_LABEL] == first_uid
    owner = safety["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Restore", "rerun", first_uid)

    with psycopg.connect(target_database) as conn:
        conn.execute("UPDATE events SET kind = '999' WHERE id = 1")

    # The old safety backup outlives its Restore (orphaned, not garbage-collected): the hardest case.
    kubectl.run("delete", "restore", "rerun", "--cascade=orphan")
    assert kubectl.get("backup", first_safety)["status"]["phase"] == "Succeeded"
    kubectl.apply(manifest)
    second = finished(kubectl, "rerun", operator_alive, timeout=180)
    assert second["status"]["phase"] == "Succeeded", second["status"]
    second_uid = second["metadata"]["uid"]
    assert second_uid != first_uid
    second_safety = second["status"]["safetyBackup"]
    assert second_safety == f"rerun-safety-{second_uid[:8]}" != first_safety
    taken = kubectl.get("backup", second_safety)
    assert taken["metadata"]["labels"][SAFETY_FOR_LABEL] == second_uid
    assert taken["status"]["phase"] == "Succeeded"

    # The new safety backup holds the target as it was right before the second restore: the 999.
    third = make_database("third")
    kubectl.run("create", "secret", "generic", "third-db", f"--from-literal=uri={third}")
    kubectl.apply(
        restore(
            "undo",
            source={"backupRef": {"name": second_safety}},
            target={"database": {"secretRef": {"name": "third-db"}}},
        )
    )
    undo = finished(kubectl, "undo", operator_alive)
    assert undo["status"]["phase"] == "Succeeded", undo["status"]
    with psycopg.connect(third) as conn:
        assert conn.execute("SELECT kind FROM events WHERE id = 1").fetchone() == ("999",)
        assert conn.execute("SELECT id FROM precious").fetchall() == [(42,)]


def test_a_users_backup_named_like_a_safety_backup_is_not_taken_for_one(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    source_backup: dict[str, Any],
    target_database: str,
) -> None:
    # The user's own Backup, of the source database, named as the safety backup used to be.
    kubectl.apply(backup("mine-safety"))
    users = wait_ready(kubectl, "mine-safety", operator_alive)
    with psycopg.connect(target_database) as conn:
        conn.execute("CREATE TABLE precious (id int)")
        conn.execute("INSERT INTO precious VALUES (42)")

    kubectl.apply(restore("mine", mode={"force": True, "clean": True}))
    obj = finished(kubectl, "mine", operator_alive, timeout=180)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    uid = obj["metadata"]["uid"]
    assert obj["status"]["safetyBackup"] == f"mine-safety-{uid[:8]}"
    taken = kubectl.get("backup", obj["status"]["safetyBackup"])
    assert taken["metadata"]["labels"][SAFETY_FOR_LABEL] == uid
    assert taken["status"]["artifact"]["uri"] != users["status"]["artifact"]["uri"]
    untouched = kubectl.get("backup", "mine-safety")
    assert SAFETY_FOR_LABEL not in (untouched["metadata"].get("labels") or {})
    assert not untouched["metadata"].get("ownerReferences")
    assert untouched["status"]["artifact"] == users["status"]["artifact"]


# ---------------------------------------------------------------- 3: another namespace's artifacts


def test_a_restore_cannot_read_another_namespaces_artifact(
    operator_alive: OperatorProcess,
    source_backup: dict[str, Any],
    other_namespace: Kubectl,
    make_database: Callable[[str], str],
) -> None:
    theirs = make_database("b_target")
    with psycopg.connect(theirs) as conn:
        conn.execute("CREATE TABLE mine (id int)")
        conn.execute("INSERT INTO mine VALUES (7)")
    b = other_namespace
    b.run("create", "secret", "generic", "target-db", f"--from-literal=uri={theirs}")
    uri = source_backup["status"]["artifact"]["uri"]
    # Forced and clean: were the artifact read, the target would be overwritten.
    b.apply(
        restore(
            "steal",
            source={"artifact": {"uri": uri}},
            mode={"force": True, "clean": True},
            preRestoreBackup=False,
        )
    )
    obj = finished(b, "steal", operator_alive)
    assert obj["status"]["phase"] == "Failed"
    stalled = condition(obj, "Stalled")
    assert stalled["reason"] == "InvalidArtifactPath"
    assert f"not in namespace {b.namespace}'s part of the backup store" in stalled["message"]
    assert f"<storage path>/{b.namespace}/<name>" in stalled["message"]
    assert "restoredFrom" not in obj["status"]
    assert tables(theirs) == ["mine"]
    with psycopg.connect(theirs) as conn:
        assert conn.execute("SELECT id FROM mine").fetchall() == [(7,)]


# ---------------------------------------------------------------- 5: a password with an unencoded /


@pytest.fixture
def slash_role(pg_admin_uri: str, fresh_database: str) -> Iterator[str]:
    """A login role whose password holds a `/`, allowed to dump the (seeded) fresh database."""
    role = f"app_{secrets.token_hex(4)}"
    seed(fresh_database, rows=10)
    with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'Sl/ashPw99'").format(sql.Identifier(role)))
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        for what in ("TABLES", "SEQUENCES"):
            conn.execute(
                sql.SQL("GRANT SELECT ON ALL {} IN SCHEMA public TO {}").format(
                    sql.SQL(what), sql.Identifier(role)
                )
            )
    yield role
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_an_unencoded_slash_in_the_password_is_refused_without_leaking_it(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    fresh_database: str,
    pg_admin_uri: str,
    slash_role: str,
) -> None:
    port = conninfo_to_dict(pg_admin_uri)["port"]
    dbname = fresh_database.rsplit("/", 1)[1]
    raw = f"postgresql://{slash_role}:Sl/ashPw99@127.0.0.1:{port}/{dbname}"
    kubectl.run("create", "secret", "generic", "slash-db", f"--from-literal=uri={raw}")
    kubectl.apply(backup("slash", database={"secretRef": {"name": "slash-db"}}))
    obj = wait_phase(kubectl, "backup", "slash", {"Failed"}, operator_alive)
    stalled = condition(obj, "Stalled")
    assert stalled["reason"] == "InvalidConnectionUri"
    assert "percent-encode" in stalled["message"]
    assert "/ as %2F" in stalled["message"]

    encoded = f"postgresql://{slash_role}:Sl%2FashPw99@127.0.0.1:{port}/{dbname}"
    kubectl.run("create", "secret", "generic", "encoded-db", f"--from-literal=uri={encoded}")
    kubectl.apply(backup("encoded", database={"secretRef": {"name": "encoded-db"}}))
    ok = wait_ready(kubectl, "encoded", operator_alive)
    assert ok["status"]["phase"] == "Succeeded"
    assert ok["status"]["database"] == f"127.0.0.1:{port}/{dbname}"

    texts = {
        "status": json.dumps(kubectl.get("backup", "slash")["status"]),
        "the encoded backup's status": json.dumps(ok["status"]),
        "events": kubectl.run("get", "events", "-o", "json").stdout,
        "the operator's log": operator_alive.log_text(),
    }
    for form in ("Sl/ashPw99", "ashPw99", "Sl%2FashPw99"):
        for where, text in texts.items():
            assert form not in text, f"{form!r} leaked into {where}"


# ---------------------------------------------------------------- 7: every failure gets a status


def test_an_unreachable_target_gets_a_status_at_once_then_fails(
    operator_alive: OperatorProcess, kubectl: Kubectl, source_backup: dict[str, Any]
) -> None:
    kubectl.run(
        "create", "secret", "generic", "target-db", "--from-literal=uri=postgresql://u:p@127.0.0.1:1/x"
    )
    watch = Watch(kubectl, "restores", "nowhere")
    try:
        time.sleep(2)  # the watch is up before the object exists
        applied = time.monotonic()
        kubectl.apply(restore("nowhere", mode={"createDatabase": True}, retry={"limit": 1, "backoff": "1s"}))
        first = watch.until("a first status", lambda v: bool(v.get("status")), timeout=30)
        assert time.monotonic() - applied < 15
        pending = watch.until("Pending", lambda v: phase_of(v) == "Pending", timeout=30)
        failed = watch.until("Failed", lambda v: phase_of(v) == "Failed", timeout=60)
    finally:
        watch.stop()
    assert phase_of(first) == "Pending", first.get("status")
    reconciling = condition(pending, "Reconciling")
    assert reconciling["reason"] == "DatabaseUnreachable"
    assert "retry 1/1" in reconciling["message"]
    assert condition(failed, "Stalled")["reason"] == "DatabaseUnreachable"
    assert failed["status"]["attempts"] == 2
    for version in watch.versions:
        if version.get("status"):
            assert phase_of(version), f"a status without a phase: {version['status']}"


def test_a_secret_that_is_not_text_fails_the_backup_naming_secret_and_key(
    operator_alive: OperatorProcess, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    value = tmp_path / "uri"
    value.write_bytes(b"\xff\xfe")
    kubectl.run("create", "secret", "generic", "bad", f"--from-file=uri={value}")
    kubectl.apply(backup("binary", database={"secretRef": {"name": "bad"}}))
    obj = wait_phase(kubectl, "backup", "binary", {"Failed"}, operator_alive)
    stalled = condition(obj, "Stalled")
    assert stalled["reason"] == "SecretNotText"
    assert f"Secret {namespace}/bad key 'uri'" in stalled["message"]


# ---------------------------------------------------------------- 8: long names


def test_a_schedule_with_a_100_character_name_runs(
    operator_alive: OperatorProcess, kubectl: Kubectl, db_secret: str, fresh_database: str
) -> None:
    seed(fresh_database, rows=10)
    name = "sched-" + "a" * 94
    assert len(name) == 100
    kubectl.apply(backup(name, schedule="* * * * *"))
    parent_uid = kubectl.get("backup", name)["metadata"]["uid"]
    try:
        run = wait_for(
            "the first run",
            lambda: kubectl.get("backup", name).get("status", {}).get("recentRuns"),
            timeout=100,
            operator=operator_alive,
        )[0]
        child = wait_ready(kubectl, run, operator_alive)
        assert child["status"]["phase"] == "Succeeded"
        assert len(run) <= 253
        label = child["metadata"]["labels"][SCHEDULE_LABEL]
        assert len(label) <= 63
        owners = child["metadata"]["ownerReferences"]
        assert [(o["uid"], o.get("controller")) for o in owners] == [(parent_uid, True)]
        assert artifact_path(child).is_file()
        parent = wait_for(
            "the schedule's lastSuccessfulTime",
            lambda: (o := kubectl.get("backup", name))["status"].get("lastSuccessfulTime") and o,
            timeout=30,
            operator=operator_alive,
        )
        assert parent["status"]["phase"] == "Scheduled"
        assert condition(parent, "Ready")["status"] == "True"
    finally:
        kubectl.run("delete", "backup", name, "--wait=false", check=False)


def test_a_one_shot_backup_with_a_253_character_name_succeeds(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    db_secret: str,
    fresh_database: str,
    namespace: str,
) -> None:
    seed(fresh_database, rows=10)
    name = "long-" + "b" * 248
    assert len(name) == 253
    kubectl.apply(backup(name))
    obj = wait_ready(kubectl, name, operator_alive)
    path = artifact_path(obj)
    assert path.is_file()
    assert path.stat().st_size == obj["status"]["artifact"]["sizeBytes"]
    assert path.parent == (operator_alive.backup_root / "e2e" / namespace).resolve()
    assert path.name != f"{name}.dump"  # shortened to fit a file name
    assert len(path.name.encode()) <= 255 and path.name.startswith("long-bbbb") and path.suffix == ".dump"
    assert not [p for p in path.parent.iterdir() if "partial" in p.name]


# ---------------------------------------------------------------- 9, 10: drill scratch databases


def test_same_named_drills_in_two_namespaces_do_not_share_a_scratch_database(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    source_backup: dict[str, Any],
    fresh_database: str,
    target_database: str,
    other_namespace: Kubectl,
    pg_admin_uri: str,
) -> None:
    a, b = kubectl, other_namespace
    b.run("create", "secret", "generic", "habitat-db", f"--from-literal=uri={fresh_database}")
    b.run("create", "secret", "generic", "target-db", f"--from-literal=uri={target_database}")
    b.apply(backup("source"))
    wait_ready(b, "source", operator_alive)

    queries = [{"name": "events", "sql": "SELECT count(*) FROM events", "expect": {"min": 1000}}]
    for team in (a, b):
        team.apply(restore("drill", drill=True, verify={"queries": queries}))
    done = [finished(team, "drill", operator_alive) for team in (a, b)]
    for obj in done:
        assert obj["status"]["phase"] == "Succeeded", obj["status"]
        assert obj["status"]["verificationSummary"] == "1/1 passed"
    scratch = {obj["status"]["scratchDatabase"] for obj in done}
    assert len(scratch) == 2
    assert not scratch & scratch_databases(pg_admin_uri)
    assert tables(target_database) == []


def test_an_orphaned_scratch_database_is_dropped_by_the_next_drill(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    source_backup: dict[str, Any],
    target_database: str,
    namespace: str,
    pg_admin_uri: str,
) -> None:
    orphan = f"habitat_drill_orphan_{secrets.token_hex(4)}"
    comment = f"habitat-operator drill {namespace} {NOBODY_UID}"
    with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(orphan)))
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(orphan), sql.Literal(comment))
        )
    try:
        kubectl.apply(restore("sweeper", drill=True))
        obj = finished(kubectl, "sweeper", operator_alive)
        assert obj["status"]["phase"] == "Succeeded", obj["status"]
        assert orphan not in scratch_databases(pg_admin_uri)
        dropped = [
            e
            for e in events(kubectl)
            if e["reason"] == "ScratchDatabaseDropped" and e["involvedObject"]["name"] == "sweeper"
        ]
        assert len(dropped) == 1, dropped
        assert orphan in dropped[0]["message"]
        assert namespace in dropped[0]["message"]
    finally:
        with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(orphan)))


# ---------------------------------------------------------------- 12: a symlink at the namespace level


def test_a_namespace_directory_symlinked_out_of_the_root_is_refused(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    db_secret: str,
    fresh_database: str,
    namespace: str,
    tmp_path: Path,
) -> None:
    seed(fresh_database, rows=10)
    outside = tmp_path / namespace  # named like the namespace, so only "inside the root" tells
    outside.mkdir()
    assert not outside.resolve().is_relative_to(operator_alive.backup_root.resolve())
    sym = operator_alive.backup_root / "sym"
    sym.mkdir(parents=True, exist_ok=True)
    link = sym / namespace
    link.symlink_to(outside, target_is_directory=True)
    try:
        kubectl.apply(backup("escape", storage={"filesystem": {"path": "sym"}}))
        obj = wait_phase(kubectl, "backup", "escape", {"Failed"}, operator_alive)
        stalled = condition(obj, "Stalled")
        assert stalled["reason"] == "InvalidArtifactPath"
        assert f"namespace {namespace}" in stalled["message"]
        assert "artifact" not in obj["status"]
        assert list(outside.iterdir()) == []
        assert link.is_symlink()
    finally:
        link.unlink()


# ---------------------------------------------------------------- 13: small ones


def test_a_deleted_backups_metric_series_go(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    db_secret: str,
    fresh_database: str,
    namespace: str,
) -> None:
    seed(fresh_database, rows=10)
    kubectl.apply(backup("fleeting"))
    wait_ready(kubectl, "fleeting", operator_alive)
    labels = {"namespace": namespace, "backup": "fleeting"}
    family = "habitat_backup_last_success_timestamp_seconds"
    assert labels in metric_series(operator_alive, family)

    kubectl.run("delete", "backup", "fleeting")
    wait_for(
        "the deleted Backup's series to go",
        lambda: labels not in metric_series(operator_alive, family),
        timeout=30,
        operator=operator_alive,
    )
    assert labels not in metric_series(operator_alive, "habitat_backup_last_size_bytes")


def test_a_missing_key_is_reported_without_naming_the_secrets_other_keys(
    operator_alive: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    kubectl.run("create", "secret", "generic", "creds", "--from-literal=password=x", "--from-literal=host=y")
    kubectl.apply(backup("keyless", database={"secretRef": {"name": "creds"}}))
    result = kubectl.run("wait", "--for=condition=Stalled", "backup/keyless", "--timeout=60s", check=False)
    assert result.returncode == 0, operator_alive.log_tail()
    obj = kubectl.get("backup", "keyless")
    stalled = condition(obj, "Stalled")
    assert stalled["reason"] == "SecretKeyNotFound"
    assert f"Secret {namespace}/creds has no key 'uri'" in stalled["message"]
    for other in ("password", "host"):
        assert other not in json.dumps(obj["status"]), f"the message names the Secret's key {other!r}"
