"""The whole point-in-time chain, as a disaster goes: a writer commits a numbered row every 50 ms
into a PostgreSQL of the test's own that a WalArchive (default settings, the stack's S3) archives;
once the archive has a base backup and streams, the server is SIGKILLed and its data folder deleted,
and the archiving operator is SIGKILLed with it (the site is lost). A Restore to `latest` from the
bucket alone (`pointInTime.storage`), in a fresh namespace, by a fresh operator process, into a
database on the stack's server recovers every row committed more than partialUploadInterval + 2 s
before the kill, as a gapless run of rows none of which is corrupted. With `synchronous: true` and
the archiver named in the server's synchronous_standby_names, the server alone is lost (the
operator lives on) and every row whose commit returned comes back. Restores of a WalArchive to an
LSN and to a restore point stop there; one to a time inside a gap is refused."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import psycopg
import pytest

from habitat_operator.engines.postgres.replication import application_name
from tests.conftest import database_uri
from tests.e2e.conftest import OPERATOR_NAMESPACE, OperatorProcess, service_account_kubeconfig
from tests.e2e.helpers import (
    PrivateServer,
    condition,
    create_s3_secret,
    finished,
    restore,
    s3_storage,
    wait_for,
    walarchive,
)
from tests.harness import Kubectl, Stack

# These tests run operators of their own, whose scratch folder the recovery server may reach.
pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("shared_operator_stopped")]

NAME = "ledger"
PARTIAL_UPLOAD_SECONDS = 5  # the WalArchive default
RPO_SECONDS = PARTIAL_UPLOAD_SECONDS + 2
WRITE_EVERY_SECONDS = 0.05
STREAM_TIMEOUT = 240  # a look every 5s on two shared cores


class Writer(threading.Thread):
    """Commits row n (its payload md5(n)) every 50 ms until stopped or the server goes; keeps the
    wall time each commit returned at, and the server's clock inside the last one (its commit
    record's time is later)."""

    def __init__(self, uri: str) -> None:
        super().__init__(daemon=True)
        self.uri = uri
        self.committed: dict[int, float] = {}
        self.last_clock: dt.datetime | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        with suppress(psycopg.Error), psycopg.connect(self.uri, autocommit=True) as conn:
            n = 0
            while not self.halt.is_set():
                n += 1
                insert = "INSERT INTO ledger VALUES (%s, md5(%s::text)) RETURNING clock_timestamp()"
                clock = conn.execute(insert, [n, n]).fetchone()
                self.committed[n] = time.time()
                self.last_clock = clock[0] if clock else None
                time.sleep(WRITE_EVERY_SECONDS)


def _kill(server: PrivateServer) -> None:
    """SIGKILL the postmaster and every process it started: no shutdown checkpoint, no last WAL."""
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    children = []
    for proc in Path("/proc").glob("[0-9]*"):
        with suppress(OSError, IndexError, ValueError):
            if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                children.append(int(proc.name))
    for pid in (postmaster, *children):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _operator(stack: Stack, folder: Path, namespace: str, *extra: str) -> OperatorProcess:
    folder.mkdir()
    kubeconfig = service_account_kubeconfig(stack, Kubectl(stack, OPERATOR_NAMESPACE), folder / "kubeconfig")
    process = OperatorProcess(
        kubeconfig, folder / "backups", folder / "operator.log", namespaces=(namespace,), extra_args=extra
    )
    process.start()
    return process


def _archiving_operator(
    stack: Stack, kubectl: Kubectl, server: PrivateServer, folder: Path, *extra: str
) -> OperatorProcess:
    """The Secrets a WalArchive of `server` in the stack's S3 needs, and an operator of its own."""
    kubectl.run("create", "secret", "generic", "habitat-db", f"--from-literal=uri={server.uri}")
    create_s3_secret(kubectl, stack)
    return _operator(stack, folder, kubectl.namespace, *extra)


@pytest.fixture
def reachable_scratch() -> Iterator[Path]:
    """A scratch folder the recovery server's user (postgres: the tests run as root) may reach."""
    folder = Path(tempfile.mkdtemp(prefix="habitat-e2e-chain-"))
    folder.chmod(0o755)
    yield folder
    leftovers = list(folder.iterdir())
    shutil.rmtree(folder, ignore_errors=True)
    assert leftovers == []  # the private recovery server's files are gone


def _streaming_with_a_base_backup(kubectl: Kubectl, operator: OperatorProcess) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        found = kubectl.get("walarchive", NAME)
        status = found.get("status") or {}
        if status.get("phase") != "Ready" or not status.get("lastBaseBackup"):
            return None
        return status if condition(found, "Ready")["reason"] == "Streaming" else None

    return wait_for(f"WalArchive {NAME} to stream", ready, STREAM_TIMEOUT, operator)  # type: ignore[no-any-return]


def _ledger(server: PrivateServer) -> str:
    """A database `app` with the writer's table on `server`; its URI."""
    server.execute("CREATE DATABASE app")
    app = database_uri(server.admin_uri, "app")
    with psycopg.connect(app, autocommit=True) as conn:
        conn.execute("CREATE TABLE ledger (id int PRIMARY KEY, payload text NOT NULL)")
    return app


def _unfinalize(kubectl: Kubectl) -> None:
    """The WalArchive's finalizer would drop a slot on a server that is gone, with no operator left."""
    unfinalized = '{"metadata":{"finalizers":[]}}'
    kubectl.run("patch", "walarchive", NAME, "--type=merge", "-p", unfinalized, check=False)


def _recover_from_the_bucket(
    stack: Stack,
    archived_from: str,
    disaster: Kubectl,
    prefix: str,
    scratch: Path,
    pg_admin_uri: str,
    folder: Path,
) -> tuple[list[int], dict[str, Any]]:
    """A Restore to `latest` of the database `app` of the archive that namespace `archived_from`
    wrote under `prefix`, from the bucket alone (`pointInTime.storage`), in the fresh namespace
    `disaster`, by a fresh operator, into a new database on the stack's server: the ids of its
    ledger, checked to be a gapless run of uncorrupted rows, and the Restore's status."""
    create_s3_secret(disaster, stack)
    target = f"chain_{secrets.token_hex(4)}"
    disaster.run(
        "create", "secret", "generic", "target-db", f"--from-literal=uri={database_uri(pg_admin_uri, target)}"
    )
    storage = {**s3_storage(stack, prefix), "archive": NAME, "namespace": archived_from}
    source = {"pointInTime": {"storage": storage, "target": {"latest": True}, "database": "app"}}
    recovering = _operator(stack, folder, disaster.namespace, f"--scratch-dir={scratch}")
    try:
        disaster.apply(restore("after-the-disaster", source=source, mode={"createDatabase": True}))
        status = finished(disaster, "after-the-disaster", recovering, timeout=300)["status"]
        assert status["phase"] == "Succeeded", status.get("message")
        with psycopg.connect(database_uri(pg_admin_uri, target)) as conn:
            rows = conn.execute("SELECT id, payload, md5(id::text) FROM ledger ORDER BY id").fetchall()
    finally:
        recovering.stop()
        with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')
    recovered = [row[0] for row in rows]
    assert [row for row in rows if row[1] != row[2]] == []  # no row corrupted
    assert recovered == list(range(1, len(recovered) + 1))  # commits are sequential: no hole
    return recovered, status


def test_a_restore_to_latest_from_the_bucket_alone_loses_no_row_older_than_the_partial_interval(
    stack: Stack,
    installed: None,
    kubectl: Kubectl,
    other_namespace: Kubectl,
    private_server: PrivateServer,
    reachable_scratch: Path,
    pg_admin_uri: str,
    tmp_path: Path,
) -> None:
    app = _ledger(private_server)
    prefix = f"e2e-chain-{secrets.token_hex(4)}"
    archiving = _archiving_operator(stack, kubectl, private_server, tmp_path / "archiving")
    writer = Writer(app)
    try:
        writer.start()
        kubectl.apply(walarchive(NAME, storage=s3_storage(stack, prefix)))
        _streaming_with_a_base_backup(kubectl, archiving)
        time.sleep(3 * PARTIAL_UPLOAD_SECONDS)  # WAL after the base backup, partial uploads among it
        assert writer.is_alive(), "the writer stopped before the kill"
        _kill(private_server)
        killed_at = time.time()
        archiving.kill()  # the site is lost: whatever was not uploaded by now is gone
        shutil.rmtree(private_server.data)
        writer.halt.set()
        writer.join(timeout=10)
    finally:
        archiving.stop()
        _unfinalize(kubectl)
    committed = dict(writer.committed)
    required = {n for n, at in committed.items() if at <= killed_at - RPO_SECONDS}
    assert len(required) > 100, f"only {len(required)} rows to check"

    recovered, status = _recover_from_the_bucket(
        stack,
        kubectl.namespace,
        other_namespace,
        prefix,
        reachable_scratch,
        pg_admin_uri,
        tmp_path / "recovering",
    )
    assert set(recovered) <= set(committed)
    lost = sorted(required - set(recovered))
    assert lost == [], (
        f"{len(lost)} rows committed more than {RPO_SECONDS}s before the kill are missing (from {lost[0]});"
        f" recovered {len(recovered)} of {len(committed)} committed; recoveredTo {status.get('recoveredTo')}"
    )


def _newest_archived_commit(operator: OperatorProcess, namespace: str) -> float:
    family = operator.metrics().get("habitat_walarchive_last_archived_commit_timestamp_seconds")
    samples = family.samples if family else []
    return max((s.value for s in samples if s.labels.get("namespace") == namespace), default=0.0)


def test_a_synchronous_archive_named_in_synchronous_standby_names_loses_no_returned_commit(
    stack: Stack,
    installed: None,
    kubectl: Kubectl,
    other_namespace: Kubectl,
    private_server: PrivateServer,
    reachable_scratch: Path,
    pg_admin_uri: str,
    tmp_path: Path,
) -> None:
    """RPO 0 for the server's loss (docs/pitr.md): with `synchronous: true` and the archiver in the
    server's synchronous_standby_names, a commit returns only once the archiver has flushed it; the
    server is SIGKILLed and its data folder deleted while the operator lives on and uploads its
    spool; every row whose commit returned is recovered from the bucket alone."""
    app = _ledger(private_server)
    prefix = f"e2e-sync-{secrets.token_hex(4)}"
    archiving = _archiving_operator(stack, kubectl, private_server, tmp_path / "archiving")
    writer = Writer(app)
    try:
        kubectl.apply(walarchive(NAME, storage=s3_storage(stack, prefix), synchronous=True))
        _streaming_with_a_base_backup(kubectl, archiving)
        standby = application_name(kubectl.namespace, NAME)  # hyphens: double-quoted in the list
        private_server.execute(f"ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 (\"{standby}\")'")
        private_server.execute("SELECT pg_reload_conf()")
        state = "SELECT sync_state FROM pg_stat_replication WHERE application_name = %s"
        wait_for(
            "the archiver as the synchronous standby",
            lambda: private_server.execute(state, standby) == ("sync",),
            30,
        )
        writer.start()
        time.sleep(3)  # commits that each waited for the archiver's flush
        assert writer.is_alive() and len(writer.committed) > 10, "the writer stopped or was blocked"
        _kill(private_server)
        shutil.rmtree(private_server.data)
        writer.halt.set()
        writer.join(timeout=10)
        last = writer.last_clock
        assert last is not None
        wait_for(  # the operator lives: its spool goes up within partialUploadInterval
            "the last returned commit archived",
            lambda: _newest_archived_commit(archiving, kubectl.namespace) >= last.timestamp(),
            60,
            archiving,
        )
    finally:
        archiving.stop()
        _unfinalize(kubectl)
    committed = set(writer.committed)

    recovered, status = _recover_from_the_bucket(
        stack,
        kubectl.namespace,
        other_namespace,
        prefix,
        reachable_scratch,
        pg_admin_uri,
        tmp_path / "recovering",
    )
    lost = sorted(committed - set(recovered))
    assert lost == [], (
        f"{len(lost)} rows whose commit returned are missing (from {lost[0]}); recovered {len(recovered)}"
        f" of {len(committed)}; recoveredTo {status.get('recoveredTo')}"
    )
    assert set(recovered) <= committed | {max(committed) + 1}  # at most the commit cut off by the kill


def test_restores_to_an_lsn_and_to_a_restore_point_of_a_walarchive_stop_there(
    stack: Stack,
    installed: None,
    kubectl: Kubectl,
    private_server: PrivateServer,
    reachable_scratch: Path,
    pg_admin_uri: str,
    tmp_path: Path,
) -> None:
    """Rows 1-10, then the LSN; rows 11-20, then pg_create_restore_point; rows 21-30: a Restore to
    the LSN has rows 1-10, one to the restore point rows 1-20."""
    app = _ledger(private_server)
    operator = _archiving_operator(
        stack, kubectl, private_server, tmp_path / "operator", f"--scratch-dir={reachable_scratch}"
    )
    targets = {"to-lsn": f"lsn_{secrets.token_hex(4)}", "to-point": f"point_{secrets.token_hex(4)}"}
    try:
        kubectl.apply(walarchive(NAME, storage=s3_storage(stack, f"e2e-targets-{secrets.token_hex(4)}")))
        _streaming_with_a_base_backup(kubectl, operator)
        insert = "INSERT INTO ledger SELECT g, md5(g::text) FROM generate_series(%s::int, %s::int) g"
        with psycopg.connect(app, autocommit=True) as conn:
            conn.execute(insert, [1, 10])
            lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]  # type: ignore[index]
            conn.execute(insert, [11, 20])
            conn.execute("SELECT pg_create_restore_point('before-the-damage')")
            clock = conn.execute(insert + " RETURNING clock_timestamp()", [21, 30]).fetchone()[0]  # type: ignore[index]
        wait_for(
            "the last commit archived",
            lambda: _newest_archived_commit(operator, kubectl.namespace) >= clock.timestamp(),
            STREAM_TIMEOUT,
            operator,
        )
        for name, target in zip(targets, ({"lsn": lsn}, {"restorePoint": "before-the-damage"}), strict=True):
            secret = f"{name}-db"
            uri = database_uri(pg_admin_uri, targets[name])
            kubectl.run("create", "secret", "generic", secret, f"--from-literal=uri={uri}")
            source = {"pointInTime": {"walArchiveRef": {"name": NAME}, "target": target, "database": "app"}}
            into = {"database": {"secretRef": {"name": secret}}}
            kubectl.apply(restore(name, source=source, target=into, mode={"createDatabase": True}))
        recovered = {}
        for name, database in targets.items():
            status = finished(kubectl, name, operator, timeout=STREAM_TIMEOUT)["status"]
            assert status["phase"] == "Succeeded", status.get("message")
            with psycopg.connect(database_uri(pg_admin_uri, database)) as conn:
                recovered[name] = [row[0] for row in conn.execute("SELECT id FROM ledger ORDER BY id")]
        assert recovered == {"to-lsn": list(range(1, 11)), "to-point": list(range(1, 21))}
    finally:
        kubectl.run("delete", "walarchive", NAME, "--wait=false", check=False)
        wait_for("the WalArchive's slot dropped", lambda: not _has_walarchive(kubectl), 60, operator)
        operator.stop()
        with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
            for database in targets.values():
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_a_restore_to_a_time_inside_a_gap_is_refused_and_the_target_untouched(
    stack: Stack,
    installed: None,
    kubectl: Kubectl,
    private_server: PrivateServer,
    reachable_scratch: Path,
    pg_admin_uri: str,
    tmp_path: Path,
) -> None:
    """The walarchive e2e's gap (the slot dropped while the operator is away, rows written then),
    and a Restore to a time among those rows: refused by the archive's catalog, before any server."""
    operator = _archiving_operator(
        stack, kubectl, private_server, tmp_path / "operator", f"--scratch-dir={reachable_scratch}"
    )
    try:
        kubectl.apply(walarchive(NAME, storage=s3_storage(stack, f"e2e-gap-{secrets.token_hex(4)}")))
        found = _streaming_with_a_base_backup(kubectl, operator)
        slot, first = found["slot"], found["lastBaseBackup"]["name"]
        private_server.execute("CREATE TABLE ledger (id int PRIMARY KEY)")
        private_server.execute("INSERT INTO ledger SELECT generate_series(1, 100)")
        time.sleep(2 * PARTIAL_UPLOAD_SECONDS)  # archived, as a partial at least

        operator.stop()
        released = "SELECT NOT active FROM pg_replication_slots WHERE slot_name = %s"
        wait_for("the slot released", lambda: (private_server.execute(released, slot) or [False])[0], 30)
        private_server.execute("SELECT pg_drop_replication_slot(%s)", slot)
        time.sleep(1.1)  # a whole second past the last archived commit
        private_server.execute("INSERT INTO ledger SELECT generate_series(101, 200)")  # never archived
        lost_at = private_server.execute("SELECT date_trunc('second', clock_timestamp())")[0]
        time.sleep(1.1)
        private_server.execute("SELECT pg_switch_wal()")
        operator.start()

        def renewed() -> bool:
            status = kubectl.get("walarchive", NAME).get("status") or {}
            return bool(status.get("gaps")) and (status.get("lastBaseBackup") or {}).get("name") != first

        wait_for("a gap and a base backup after it", renewed, STREAM_TIMEOUT, operator)

        target = f"gap_{secrets.token_hex(4)}"
        uri = database_uri(pg_admin_uri, target)
        kubectl.run("create", "secret", "generic", "target-db", f"--from-literal=uri={uri}")
        source = {
            "pointInTime": {
                "walArchiveRef": {"name": NAME},
                "target": {"time": lost_at.strftime("%Y-%m-%dT%H:%M:%SZ")},
                "database": "postgres",
            }
        }
        kubectl.apply(restore("into-the-gap", source=source, mode={"createDatabase": True}))
        done = finished(kubectl, "into-the-gap", operator)
        status = done["status"]
        assert status["phase"] == "Failed", status
        assert condition(done, "Stalled")["reason"] == "TargetNotRecoverable"
        assert "it is inside the gap detected at " in status["message"], status["message"]
        assert "recoveredTo" not in status
        with psycopg.connect(pg_admin_uri) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [target]).fetchone()
        assert exists is None  # not even created
    finally:
        kubectl.run("delete", "walarchive", NAME, "--wait=false", check=False)
        wait_for("the WalArchive's slot dropped", lambda: not _has_walarchive(kubectl), 60, operator)
        operator.stop()


def _has_walarchive(kubectl: Kubectl) -> bool:
    found = kubectl.run("get", "walarchive", NAME, "--ignore-not-found", "-o", "name", check=False)
    return bool(found.stdout.strip())
