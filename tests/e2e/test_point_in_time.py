"""Point-in-time Restores end to end: the operator process recovers an archive in the stack's S3
(a base backup and WAL of a private PostgreSQL, put there by hand: an archive whose WAL carries no
commit times, so a target past its end is caught by the recovery itself; test_pitr_chain.py has
a WalArchive write one) on a private server, and moves the database into a stack database: to a
time before a DROP TABLE, as a drill to the archive's end, and refused past the archive's end with
the target untouched."""

from __future__ import annotations

import datetime as dt
import secrets
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from habitat_operator import timestamps
from habitat_operator.engines.artifacts.s3 import Bucket, S3Location
from habitat_operator.engines.wal.layout import ArchiveLayout
from habitat_operator.engines.wal.store import BucketStore
from tests.conftest import database_uri
from tests.e2e.conftest import OperatorProcess, service_account_kubeconfig
from tests.e2e.helpers import finished, restore, wait_for
from tests.harness import Kubectl, Stack
from tests.integration.wal_source import SourceServer

# These tests run operators of their own, whose scratch folder the recovery server may reach.
pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("shared_operator_stopped")]

KEY = secrets.token_hex(32)
ARCHIVE = "ledger-db"


@pytest.fixture
def recovering_operator(
    stack: Stack, installed: None, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """An operator of the test's own whose scratch folder the server's user (postgres, since the
    tests run as root) may reach: pytest's temporary folders are private to root."""
    scratch = Path(tempfile.mkdtemp(prefix="habitat-e2e-pitr-"))
    scratch.chmod(0o755)
    kubeconfig = service_account_kubeconfig(stack, Kubectl(stack, "habitat-system"), tmp_path / "kubeconfig")
    process = OperatorProcess(
        kubeconfig,
        tmp_path / "backups",
        tmp_path / "operator.log",
        namespaces=(namespace,),
        extra_args=(f"--scratch-dir={scratch}",),
    )
    process.start()
    yield process
    process.stop()
    leftovers = list(scratch.iterdir())
    shutil.rmtree(scratch, ignore_errors=True)
    assert leftovers == []  # the private server's files are gone


@dataclass(frozen=True)
class Archive:
    source: dict[str, Any]  # spec.source.pointInTime without its target
    before_drop: dt.datetime


@dataclass(frozen=True)
class Source:
    """A private server, database `app` on it, and the archive of it in the stack's bucket."""

    server: SourceServer
    app: str  # the database's URI
    store: BucketStore
    layout: ArchiveLayout
    storage: dict[str, Any]  # spec.source.pointInTime.storage

    def base_backup(self) -> None:
        self.server.base_backup(self.store, self.layout, KEY.encode())

    def archive_wal(self) -> None:
        self.server.archive_wal(self.store, self.layout, KEY.encode())


@contextmanager
def _archived(stack: Stack, kubectl: Kubectl, namespace: str) -> Iterator[Source]:
    """A fresh prefix of the stack's bucket with the Secrets to read it, and a private server to
    archive there; the server is removed on leaving."""
    prefix = f"e2e-pitr-{secrets.token_hex(4)}"
    location = S3Location(
        bucket=stack.s3_bucket,
        prefix=prefix,
        endpoint=stack.s3_endpoint,
        force_path_style=True,
        access_key_id=stack.s3_access_key,
        secret_access_key=stack.s3_secret_key,
    )
    kubectl.run(
        "create",
        "secret",
        "generic",
        "archive-s3",
        f"--from-literal=accessKeyId={stack.s3_access_key}",
        f"--from-literal=secretAccessKey={stack.s3_secret_key}",
    )
    kubectl.run("create", "secret", "generic", "archive-key", f"--from-literal=key={KEY}")
    storage = {
        "s3": {
            "bucket": stack.s3_bucket,
            "prefix": prefix,
            "endpoint": stack.s3_endpoint,
            "forcePathStyle": True,
            "credentialsSecretRef": {"name": "archive-s3"},
        },
        "archive": ARCHIVE,
        "encryptionKeySecretRef": {"name": "archive-key"},
    }
    server = SourceServer()
    try:
        with Bucket(location) as bucket:
            store = BucketStore(bucket, location.key(namespace))
            yield Source(server, server.database("app"), store, ArchiveLayout(ARCHIVE), storage)
    finally:
        server.stop()


@pytest.fixture
def archive(stack: Stack, kubectl: Kubectl, namespace: str) -> Iterator[Archive]:
    with _archived(stack, kubectl, namespace) as source:
        with psycopg.connect(source.app, autocommit=True) as conn:
            conn.execute("CREATE TABLE ledger (id int PRIMARY KEY, at timestamptz NOT NULL)")
        source.base_backup()
        with psycopg.connect(source.app, autocommit=True) as conn:
            for n in range(10):
                conn.execute("INSERT INTO ledger VALUES (%s, clock_timestamp())", [n])
            time.sleep(1.2)
            before_drop = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
            time.sleep(1.2)
            conn.execute("INSERT INTO ledger VALUES (99, clock_timestamp())")
            conn.execute("DROP TABLE ledger")
        source.archive_wal()
        yield Archive({"storage": source.storage, "database": "app"}, before_drop)


def _corrupt_index_order(relation: Path, block: int = 1, item: int = 10) -> None:
    """Overwrites one key of a B-tree leaf page of an int4 index on disk with the largest int4, so
    that the page's keys are out of order: what bt_index_check reports. PostgreSQL reads the page
    as it is (the test servers have no data checksums)."""
    with relation.open("r+b") as file:
        file.seek(block * 8192)
        page = file.read(8192)
        line_pointer = struct.unpack_from("<I", page, 24 + 4 * (item - 1))[0]
        offset = line_pointer & 0x7FFF  # lp_off; the tuple's key follows its 8-byte header
        file.seek(block * 8192 + offset + 8)
        file.write(struct.pack("<i", 2**31 - 1))


@pytest.fixture
def corrupted_archive(stack: Stack, kubectl: Kubectl, namespace: str) -> Iterator[dict[str, Any]]:
    """An archive whose base backup holds the source's B-tree index as the source had it on disk:
    corrupted (on purpose, before the backup) while every query on the source still answers."""
    with _archived(stack, kubectl, namespace) as source:
        with psycopg.connect(source.app, autocommit=True) as conn:
            conn.execute("CREATE TABLE ledger (id int PRIMARY KEY, note text)")
            conn.execute("INSERT INTO ledger SELECT g, 'n' || g FROM generate_series(1, 2000) g")
            conn.execute("CHECKPOINT")  # the index's pages on disk, where the backup reads them
            path = conn.execute("SELECT pg_relation_filepath('ledger_pkey')").fetchone()[0]  # type: ignore[index]
        _corrupt_index_order(source.server.data / path)
        source.base_backup()
        source.archive_wal()
        yield {"storage": source.storage, "database": "app"}


def _target_secret(kubectl: Kubectl, pg_admin_uri: str) -> str:
    """A Secret `target-db` naming a database that does not exist yet; returns its name."""
    name = f"pitr_{secrets.token_hex(4)}"
    uri = database_uri(pg_admin_uri, name)
    kubectl.run("create", "secret", "generic", "target-db", f"--from-literal=uri={uri}")
    return name


def _whole_second_before(moment: dt.datetime) -> str:
    """The API's times have whole seconds: the last whole second at or before `moment`."""
    return timestamps.rfc3339(moment.replace(microsecond=0))


def test_restore_to_a_time_before_a_drop_table_brings_the_rows_back(
    recovering_operator: OperatorProcess, kubectl: Kubectl, archive: Archive, pg_admin_uri: str
) -> None:
    name = _target_secret(kubectl, pg_admin_uri)
    when = _whole_second_before(archive.before_drop)
    source = {"pointInTime": {**archive.source, "target": {"time": when}}}
    kubectl.apply(restore("to-time", source=source, mode={"createDatabase": True}))
    try:
        done = finished(kubectl, "to-time", recovering_operator)
        status = done["status"]
        assert status["phase"] == "Succeeded", status.get("message")
        with psycopg.connect(database_uri(pg_admin_uri, name)) as conn:
            assert [r[0] for r in conn.execute("SELECT id FROM ledger ORDER BY id")] == list(range(10))
        recovered = status["recoveredTo"]
        assert recovered["target"] == f"time {when}" and recovered["lsn"] and recovered["recoverySeconds"] > 0
        assert timestamps.parse(recovered["lastCommitTime"]) <= timestamps.parse(when)
        assert status["restoredFrom"]["archive"] == ARCHIVE
    finally:
        with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_drill_to_latest_records_the_recovery_point_and_the_time_to_recover(
    recovering_operator: OperatorProcess,
    kubectl: Kubectl,
    archive: Archive,
    db_secret: str,
    fresh_database: str,
) -> None:
    source = {"pointInTime": {**archive.source, "target": {"latest": True}}}
    body = restore(
        "drill", source=source, drill=True, target={"database": {"secretRef": {"name": db_secret}}}
    )
    dropped = "SELECT count(*) FROM pg_tables WHERE tablename = 'ledger'"
    body["spec"]["verify"] = {"queries": [{"name": "dropped", "sql": dropped, "expect": {"equals": "0"}}]}
    kubectl.apply(body)
    status = finished(kubectl, "drill", recovering_operator)["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["verificationSummary"] == "1/1 passed"
    assert timestamps.parse(status["recoveredTo"]["lastCommitTime"]) > archive.before_drop
    scraped = recovering_operator.scrape()
    labels = f'{{namespace="{kubectl.namespace}",restore="drill"}}'
    assert f"habitat_restore_recovery_point_timestamp_seconds{labels}" in scraped
    assert f"habitat_restore_time_to_recover_seconds{labels}" in scraped


def test_a_target_past_the_archive_fails_readably_and_leaves_the_target_untouched(
    recovering_operator: OperatorProcess, kubectl: Kubectl, archive: Archive, pg_admin_uri: str
) -> None:
    name = _target_secret(kubectl, pg_admin_uri)
    future = timestamps.rfc3339(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    source = {"pointInTime": {**archive.source, "target": {"time": future}}}
    kubectl.apply(restore("too-far", source=source, mode={"createDatabase": True}))
    status = finished(kubectl, "too-far", recovering_operator)["status"]
    assert status["phase"] == "Failed"
    assert "is past the end of the archive: the archive ends at " in status["message"], status["message"]
    assert status["message"].endswith("; the target was not touched")
    with psycopg.connect(pg_admin_uri) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
    assert exists is None  # not even created


def _processes_under(folder: Path) -> list[int]:
    """Processes whose command line names something under `folder` (the private server's)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if str(folder) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_an_operator_killed_mid_recovery_leaves_no_server_behind_and_the_restore_succeeds(
    recovering_operator: OperatorProcess, kubectl: Kubectl, archive: Archive, pg_admin_uri: str
) -> None:
    name = _target_secret(kubectl, pg_admin_uri)
    scratch = Path(recovering_operator.extra_args[0].split("=", 1)[1])
    source = {
        "pointInTime": {**archive.source, "target": {"time": _whole_second_before(archive.before_drop)}}
    }
    kubectl.apply(restore("killed", source=source, mode={"createDatabase": True}))
    try:
        deadline = time.monotonic() + 120
        while not list(scratch.glob("habitat-restore-*/data")):  # a recovery lasts seconds: look often
            assert time.monotonic() < deadline, recovering_operator.log_tail()
            time.sleep(0.01)
        recovering_operator.kill()
        assert list(scratch.glob("habitat-restore-*")), "the recovery finished before the kill"
        wait_for(
            "the private server to die with the operator", lambda: not _processes_under(scratch), timeout=20
        )
        recovering_operator.start()  # sweeps the cut-off scratch folder, then recovers again
        status = finished(kubectl, "killed", recovering_operator)["status"]
        assert status["phase"] == "Succeeded", status.get("message")
        with psycopg.connect(database_uri(pg_admin_uri, name)) as conn:
            assert [r[0] for r in conn.execute("SELECT id FROM ledger ORDER BY id")] == list(range(10))
    finally:
        with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_drill_with_amcheck_fails_on_an_index_corrupted_in_the_source(
    recovering_operator: OperatorProcess,
    kubectl: Kubectl,
    corrupted_archive: dict[str, Any],
    db_secret: str,
    fresh_database: str,
) -> None:
    source = {"pointInTime": {**corrupted_archive, "target": {"latest": True}}}
    target = {"database": {"secretRef": {"name": db_secret}}}
    kubectl.apply(restore("checked", source=source, drill=True, target=target, verify={"amcheck": True}))
    status = finished(kubectl, "checked", recovering_operator)["status"]
    assert status["phase"] == "Failed", status
    failed = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert failed["reason"] == "CorruptionFound", failed
    assert "pg_amcheck found corruption in" in status["message"]
    assert 'btree index "app.public.ledger_pkey"' in status["message"], status["message"]
    # Without the check the same archive restores: pg_dump reads the table, not the index.
    kubectl.apply(restore("unchecked", source=source, drill=True, target=target))
    assert finished(kubectl, "unchecked", recovering_operator)["status"]["phase"] == "Succeeded"
