"""The whole stream: real WAL from the stack's PostgreSQL through pg_receivewal and the uploader
into the stack's S3, and back through `habitat-operator wal fetch`, byte for byte."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from habitat_operator.engines.artifacts.s3 import S3Location
from habitat_operator.engines.postgres import replication
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.engines.wal.fetch import EXIT_FAILED, EXIT_NOT_ARCHIVED, FetchSource
from habitat_operator.engines.wal.layout import SEGMENT_NAME, segment_name, segment_start
from habitat_operator.engines.wal.receiver import WalReceiver
from habitat_operator.engines.wal.store import BucketStore
from habitat_operator.engines.wal.uploader import (
    LAST_COMMIT_AT,
    PLAINTEXT_SHA256,
    SHA256,
    metadata_value,
    upload_partial,
    upload_ready,
)
from tests.harness import Stack
from tests.integration.wal_helpers import (
    ARCHIVE,
    archive_location,
    archive_store,
    fetch_source,
    make_wal,
    replication_uri,
    slot_name,
)

pytestmark = pytest.mark.integration
__all__ = ["archive_location", "archive_store", "replication_uri"]  # fixtures, imported to be used here

KEY = os.urandom(32)
LAYOUT = ARCHIVE


def wal_fetch(source: FetchSource, name: str, destination: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HABITAT_WAL_", "AWS_"))}
    return subprocess.run(
        [sys.executable, "-m", "habitat_operator", "wal", "fetch", name, str(destination)],
        env=env | source.environment(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def checkpoint(admin_uri: str) -> None:
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def commit_marker(admin_uri: str) -> dt.datetime:
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE marker (t timestamptz)")
        row = conn.execute("INSERT INTO marker VALUES (now()) RETURNING t").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def test_streamed_wal_comes_back_byte_identical(
    replication_uri: str,
    pg_admin_uri: str,
    archive_location: S3Location,
    archive_store: BucketStore,
    tmp_path: Path,
) -> None:
    spool, kept = tmp_path / "spool", tmp_path / "kept"
    kept.mkdir()
    receiver = WalReceiver(
        ConnectionTarget(replication_uri), slot_name(), spool, "habitat-walarchive-it", create_slot=True
    )

    async def stream() -> list[str]:
        await asyncio.to_thread(checkpoint, pg_admin_uri)  # a new slot starts at the last redo point
        await receiver.start()
        try:
            for _ in range(2):
                await asyncio.to_thread(make_wal, pg_admin_uri)
            # The slot starts at the last checkpoint's redo: wait until the stream caught up.
            writing = segment_name(1, await replication.current_lsn(ConnectionTarget(pg_admin_uri)))
            deadline = asyncio.get_running_loop().time() + 60
            while not (spool / f"{writing}.partial").exists():
                assert asyncio.get_running_loop().time() < deadline, f"{writing} never started"
                await asyncio.sleep(0.1)
            completed = sorted(p.name for p in spool.iterdir() if SEGMENT_NAME.match(p.name))
            assert len(completed) >= 2
            for name in completed:
                shutil.copyfile(spool / name, kept / name)
            result = await upload_ready(spool, archive_store, LAYOUT, KEY, zstd=True)
            assert result.segments >= 2 and result.bytes > 0
            assert result.newest_segment == completed[-1]
            assert result.archived_lsn == segment_start(completed[-1])[1] + (16 << 20)
            assert result.last_commit_at is not None
            assert not {p.name for p in spool.iterdir()} & set(completed)  # removed once archived
            again = await upload_ready(spool, archive_store, LAYOUT, KEY, zstd=True)
            assert (again.segments, again.bytes) == (0, 0)

            committed = await asyncio.to_thread(commit_marker, pg_admin_uri)
            uploaded = None
            for _ in range(100):
                uploaded = await upload_partial(
                    spool, archive_store, LAYOUT, KEY, zstd=True, previous=uploaded
                )
                if uploaded and uploaded.last_commit_at and uploaded.last_commit_at >= committed:
                    break
                await asyncio.sleep(0.2)
            assert uploaded is not None and uploaded.last_commit_at is not None
            assert abs(uploaded.last_commit_at - committed) < dt.timedelta(seconds=1)
            return completed
        finally:
            await receiver.stop()

    completed = asyncio.run(stream())
    for name in completed:
        metadata = archive_store.metadata(LAYOUT.wal(name))
        assert metadata is not None
        assert metadata_value(metadata, SHA256) and metadata_value(metadata, PLAINTEXT_SHA256)
    newest_commit = metadata_value(archive_store.metadata(LAYOUT.wal(completed[-1])) or {}, LAST_COMMIT_AT)
    assert newest_commit is not None and newest_commit.endswith("Z")

    fetched = tmp_path / "RECOVERYXLOG"
    source = fetch_source(archive_location, KEY)
    for name in completed:
        done = wal_fetch(source, name, fetched)
        assert done.returncode == 0, done.stderr
        assert fetched.read_bytes() == (kept / name).read_bytes()

    # The segment being written comes from its .partial, up to where the stream had reached.
    partial = next(p for p in spool.iterdir() if p.name.endswith(".partial"))
    segment = partial.name.removesuffix(".partial")
    done = wal_fetch(source, segment, fetched)
    assert done.returncode == 0, done.stderr
    assert fetched.stat().st_size == 16 << 20
    received = partial.read_bytes()
    archived = fetched.read_bytes()
    written = len(archived.rstrip(b"\0"))
    assert written > 0 and archived[:written] == received[:written]

    missing = wal_fetch(source, "0000000100000FFF000000FF", fetched)
    assert (missing.returncode, missing.stderr) == (EXIT_NOT_ARCHIVED, "")
    assert wal_fetch(source, "00000009.history", fetched).returncode == EXIT_NOT_ARCHIVED


def test_a_wrong_key_stops_recovery_and_says_why(
    stack: Stack, archive_location: S3Location, archive_store: BucketStore, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "000000010000000000000001").write_bytes(os.urandom(1 << 20))
    asyncio.run(upload_ready(spool, archive_store, LAYOUT, KEY, zstd=False))

    other_key = os.urandom(32)
    done = wal_fetch(fetch_source(archive_location, other_key), "000000010000000000000001", tmp_path / "x")
    assert done.returncode == EXIT_FAILED
    assert done.stderr.count("\n") == 1 and "DecryptionFailed" in done.stderr
    for secret in (stack.s3_secret_key, stack.s3_access_key, other_key.hex(), KEY.hex()):
        assert secret not in done.stderr
    assert not (tmp_path / "x").exists()
