"""Base backups of the stack's PostgreSQL into the stack's S3 and into a folder: streamed through the
codec, verified, catalogued last; pg_verifybackup agrees with the stored tar; a kill mid-upload
leaves nothing listed as a base backup."""

from __future__ import annotations

import asyncio
import glob
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, cast

import psycopg
import pytest
from psycopg import sql

from habitat_operator.engines.artifacts.codec import PlaintextReader
from habitat_operator.engines.artifacts.s3 import Bucket, S3Location
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.engines.wal.basebackup import BaseBackupEntry, take_base_backup
from habitat_operator.engines.wal.catalog import RecoveryTarget, plan_recovery, read_catalog
from habitat_operator.engines.wal.layout import ArchiveLayout, format_lsn, segment_name
from habitat_operator.engines.wal.store import BucketStore, FolderStore, ObjectStore
from habitat_operator.errors import OperationError, PermanentError
from tests.harness import REPO, Stack
from tests.integration.helpers import bucket, location

pytestmark = pytest.mark.integration
__all__ = ["bucket", "location"]  # fixtures, imported to be used here

KEY = os.urandom(32)
LAYOUT = ArchiveLayout("orders")
BACKUP_ID = "20261207T171500Z"


@pytest.fixture(params=["s3", "folder"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "folder":
        return FolderStore(tmp_path / "archive")
    bucket: Bucket = request.getfixturevalue("bucket")
    return BucketStore(bucket, bucket.location.key("team-a"))


def system_identifier(pg_uri: str) -> str:
    with psycopg.connect(pg_uri) as conn:
        row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
    assert row is not None
    return str(row[0])


def pg_verifybackup() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_verifybackup"))
    assert found, "pg_verifybackup is not installed"
    return found[-1]


def extract(store: ObjectStore, key: str, encryption_key: bytes | None, into: Path) -> None:
    reader = PlaintextReader(store.open(key), encryption_key)
    try:
        source = cast("IO[bytes]", _Chunks(reader.read))
        with tarfile.open(fileobj=source, mode="r|") as tar:
            tar.extractall(into, filter="fully_trusted")
    finally:
        reader.close()


class _Chunks:
    def __init__(self, read: Callable[[], bytes]) -> None:
        self._read = read

    def read(self, size: int = -1, /) -> bytes:
        return self._read()


@pytest.mark.parametrize(("zstd", "encrypted"), [(True, True), (False, False)])
def test_a_base_backup_is_stored_verified_and_catalogued(
    stack: Stack, store: ObjectStore, tmp_path: Path, zstd: bool, encrypted: bool
) -> None:
    key = KEY if encrypted else None
    entry = asyncio.run(take_base_backup(ConnectionTarget(stack.pg_uri), store, LAYOUT, key, zstd, BACKUP_ID))

    assert entry.system_identifier == system_identifier(stack.pg_uri)
    assert 150000 <= entry.server_version < 160000
    assert entry.start_lsn <= entry.end_lsn and entry.timeline >= 1
    assert entry.encrypted is encrypted and entry.compression == ("zstd" if zstd else "none")
    assert entry.started_at <= entry.completed_at
    listed = [stored.key for stored in store.list(LAYOUT.base_prefix)]
    assert listed == [LAYOUT.base_backup_entry(BACKUP_ID), LAYOUT.base_backup(BACKUP_ID)]
    stream = store.open(LAYOUT.base_backup_entry(BACKUP_ID))
    assert BaseBackupEntry.from_json(json.loads(stream.read())) == entry
    stream.close()
    assert read_catalog(store, LAYOUT).base_backups == (entry,)

    # An independent check: PostgreSQL's own pg_verifybackup on the stored tar, unpacked.
    unpacked = tmp_path / "unpacked"
    extract(store, LAYOUT.base_backup(BACKUP_ID), key, unpacked)
    verified = subprocess.run(
        [pg_verifybackup(), "--no-parse-wal", "--quiet", str(unpacked)], capture_output=True, text=True
    )
    assert verified.returncode == 0, verified.stderr

    # No WAL archived yet: a plan refuses, naming the first segment it needs.
    with pytest.raises(PermanentError, match="is missing from the archive"):
        plan_recovery(store, LAYOUT, RecoveryTarget(latest=True))


def test_a_refused_connection_is_one_readable_line(stack: Stack, store: ObjectStore) -> None:
    wrong = ConnectionTarget(stack.pg_uri.replace("://postgres:", "://postgres:wrong", 1))
    with pytest.raises(Exception) as caught:
        asyncio.run(take_base_backup(wrong, store, LAYOUT, None, True, BACKUP_ID))
    message = str(caught.value)
    assert "authentication" in message.lower() and "\n" not in message
    assert "wrong" not in message
    assert store.list(LAYOUT.base_prefix) == []


_TAKE = """
import asyncio, os, sys
from pathlib import Path
from habitat_operator.engines.artifacts.s3 import Bucket, S3Location
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.engines.wal.basebackup import take_base_backup
from habitat_operator.engines.wal.layout import ArchiveLayout, format_lsn, segment_name
from habitat_operator.engines.wal.store import BucketStore, FolderStore

kind, where = sys.argv[1], sys.argv[2]
if kind == "folder":
    store = FolderStore(Path(where))
else:
    location = S3Location(
        bucket=os.environ["T_BUCKET"], prefix=where, endpoint=os.environ["T_ENDPOINT"], force_path_style=True,
        access_key_id=os.environ["T_ACCESS"], secret_access_key=os.environ["T_SECRET"],
    )
    store = BucketStore(Bucket(location), location.key("team-a"))
target = ConnectionTarget(os.environ["T_PG"])
asyncio.run(take_base_backup(target, store, ArchiveLayout("orders"), None, False, "20261207T171500Z"))
"""


def test_a_kill_mid_upload_leaves_no_base_backup(
    stack: Stack, store: ObjectStore, tmp_path: Path, location: S3Location, bucket: Bucket
) -> None:
    folder = isinstance(store, FolderStore)
    env = os.environ | {
        "T_PG": stack.pg_uri,
        "T_BUCKET": location.bucket,
        "T_ENDPOINT": location.endpoint or "",
        "T_ACCESS": location.access_key_id,
        "T_SECRET": location.secret_access_key,
    }
    where = str(tmp_path / "archive") if folder else location.prefix
    child = subprocess.Popen([sys.executable, "-c", _TAKE, "folder" if folder else "s3", where], env=env)
    try:
        deadline = time.monotonic() + 30
        while not uploading(bucket, tmp_path / "archive" / LAYOUT.base_prefix, folder):
            assert child.poll() is None, "the base backup ended before it could be killed"
            assert time.monotonic() < deadline, "the upload never started"
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert store.list(LAYOUT.base_prefix) == []
    assert read_catalog(store, LAYOUT).base_backups == ()
    with pytest.raises(PermanentError, match="holds no base backup"):
        plan_recovery(store, LAYOUT, RecoveryTarget(latest=True))


def uploading(bucket: Bucket, base: Path, folder: bool) -> bool:
    """Whether the child's tar is on its way: a partial file with bytes in it, or a multipart upload."""
    if folder:
        return uploading_to_folder(base)
    answer = bucket.client.list_multipart_uploads(Bucket=bucket.location.bucket, Prefix=bucket.location.key())
    return bool(answer.get("Uploads"))


def uploading_to_folder(base: Path) -> bool:
    return any(path.stat().st_size > 0 for path in base.glob(".*.partial-*")) if base.is_dir() else False


def test_catalog_list_shows_base_backups_and_the_window(stack: Stack, bucket: Bucket, tmp_path: Path) -> None:
    store = BucketStore(bucket, bucket.location.key("team-a"))
    entry = asyncio.run(take_base_backup(ConnectionTarget(stack.pg_uri), store, LAYOUT, KEY, True, BACKUP_ID))
    identity = {"systemIdentifier": entry.system_identifier, "serverVersion": entry.server_version}
    with store.writer(LAYOUT.identity) as out:
        out.write(
            json.dumps(identity | {"segmentSize": 16 << 20, "createdAt": "2026-12-07T17:15:00Z"}).encode()
        )
    # The segments of the backup, as the uploader stores them (the catalog reads names and metadata).
    first = entry.start_lsn // (16 << 20)
    for number in range(first, entry.end_lsn // (16 << 20) + 1):
        with store.writer(
            LAYOUT.wal(segment_name(1, number << 24)), {"lastCommitAt": "2026-12-07T18:00:00Z"}
        ) as out:
            out.write(b"wal")
    where = bucket.location
    env = os.environ | {
        "AWS_ACCESS_KEY_ID": where.access_key_id,
        "AWS_SECRET_ACCESS_KEY": where.secret_access_key,
    }
    command = [str(REPO / ".venv" / "bin" / "habitat-operator"), "catalog", "list", "--bucket", where.bucket]
    command += ["--prefix", where.prefix, "--endpoint", str(where.endpoint), "--force-path-style"]

    listed = json.loads(
        subprocess.run([*command, "-o", "json"], env=env, capture_output=True, check=True).stdout
    )
    assert listed == [
        {
            "kind": "WalArchive",
            "key": where.key("team-a", "orders"),
            "namespace": "team-a",
            "archive": "orders",
            "systemIdentifier": entry.system_identifier,
            "recoveryWindow": {"from": entry.to_json()["completedAt"], "to": "2026-12-07T18:00:00Z"},
            "endLsn": format_lsn((entry.end_lsn // (16 << 20) + 1) << 24),
            "baseBackups": [entry.to_json()],
            "gaps": [],
        }
    ]
    table = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    assert table[2].split() == [
        "ARCHIVE",
        "SYSTEM",
        "IDENTIFIER",
        "WINDOW-FROM",
        "WINDOW-TO",
        "ENDS",
        "AT",
        "GAPS",
    ]
    assert table[3].split()[:4] == [
        "team-a/orders",
        entry.system_identifier,
        entry.to_json()["completedAt"],
        "2026-12-07T18:00:00Z",
    ]
    assert table[6].split()[0] == f"team-a/orders/{BACKUP_ID}"


def test_a_cancelled_base_backup_leaves_nothing_behind(stack: Stack, tmp_path: Path) -> None:
    root = tmp_path / "archive"
    store = FolderStore(root)

    async def cancel_mid_upload() -> None:
        task = asyncio.create_task(
            take_base_backup(ConnectionTarget(stack.pg_uri), store, LAYOUT, KEY, True, BACKUP_ID)
        )
        while not uploading_to_folder(root / LAYOUT.base_prefix):
            assert not task.done(), "the base backup ended before it could be cancelled"
            await asyncio.sleep(0.002)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_mid_upload())
    assert store.list(LAYOUT.base_prefix) == []
    assert list((root / LAYOUT.base_prefix).iterdir()) == []  # no partial file either
    with psycopg.connect(stack.pg_uri) as conn:  # pg_basebackup was killed: its walsender goes
        deadline = time.monotonic() + 10
        while conn.execute("SELECT count(*) FROM pg_stat_progress_basebackup").fetchone() != (0,):
            assert time.monotonic() < deadline, "pg_basebackup's walsender outlived the cancellation"
            time.sleep(0.05)


def test_a_role_without_replication_is_refused_by_name(stack: Stack, tmp_path: Path) -> None:
    role, password = f"norepl_{secrets.token_hex(3)}", secrets.token_hex(8)
    with psycopg.connect(stack.pg_uri, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password))
        )
    try:
        uri = re.sub(r"://[^@]*@", f"://{role}:{password}@", stack.pg_uri)
        with pytest.raises(OperationError) as caught:
            asyncio.run(
                take_base_backup(ConnectionTarget(uri), FolderStore(tmp_path), LAYOUT, None, True, BACKUP_ID)
            )
    finally:
        with psycopg.connect(stack.pg_uri, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    assert caught.value.reason == "ReplicationRefused"
    assert caught.value.message.startswith("127.0.0.1:")
    assert "refuses replication to this role" in caught.value.message
    assert (
        "must be superuser or replication role" in caught.value.message
        and password not in caught.value.message
    )
