"""An archiver (pg_receivewal + the uploader) killed with SIGKILL mid-stream loses no WAL: its
pg_receivewal dies with it, the slot keeps what was not archived, and the next archiver on the same
spool completes the sequence. Nothing unfinished is listed in the bucket, and every segment comes
back through `wal fetch` with its checksums."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from habitat_operator.engines.artifacts.s3 import S3Location
from habitat_operator.engines.wal.fetch import fetch
from habitat_operator.engines.wal.layout import SEGMENT_NAME, parse_lsn, segment_name, segment_start
from habitat_operator.engines.wal.store import BucketStore
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

LAYOUT = ARCHIVE
KEY = os.urandom(32)
APPLICATION = "habitat-walarchive-it-kill"

ARCHIVER = """
import asyncio, os
from pathlib import Path
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.engines.wal.fetch import FetchSource
from habitat_operator.engines.wal.layout import ArchiveLayout
from habitat_operator.engines.wal.receiver import WalReceiver
from habitat_operator.engines.wal.uploader import upload_partial, upload_ready

async def main():
    source = FetchSource.from_environment(os.environ)
    layout, spool = ArchiveLayout(source.archive), Path(os.environ["SPOOL"])
    target = ConnectionTarget(os.environ["REPLICATION_URI"])
    receiver = WalReceiver(target, os.environ["SLOT"], spool, os.environ["APPLICATION"], create_slot=True)
    await receiver.start()
    previous = None
    with source.store() as store:
        while True:
            await upload_ready(spool, store, layout, source.encryption_key, True)
            previous = await upload_partial(spool, store, layout, source.encryption_key, True, previous)
            print("pass", flush=True)
            await asyncio.sleep(0.1)

asyncio.run(main())
"""


def start_archiver(env: dict[str, str]) -> subprocess.Popen[str]:
    archiver = subprocess.Popen(
        [sys.executable, "-c", ARCHIVER], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert archiver.stdout is not None
    assert archiver.stdout.readline() == "pass\n", archiver.stderr.read() if archiver.stderr else ""
    return archiver


def receivers(admin_uri: str) -> int:
    with psycopg.connect(admin_uri) as conn:
        query = "SELECT count(*) FROM pg_stat_replication WHERE application_name = %s"
        row = conn.execute(query, (APPLICATION,)).fetchone()
    return int(row[0]) if row else 0


def current_segment(admin_uri: str) -> str:
    """The segment being written. Not pg_walfile_name(): right after a switch the position is a
    segment's first byte, which it names as the end of the segment before."""
    with psycopg.connect(admin_uri) as conn:
        row = conn.execute(
            "SELECT timeline_id, pg_current_wal_lsn()::text FROM pg_control_checkpoint()"
        ).fetchone()
    assert row is not None
    return segment_name(int(row[0]), parse_lsn(row[1]))


def test_a_killed_archiver_loses_no_wal(
    pg_admin_uri: str,
    replication_uri: str,
    archive_location: S3Location,
    archive_store: BucketStore,
    tmp_path: Path,
) -> None:
    source = fetch_source(archive_location, KEY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HABITAT_WAL_")} | source.environment()
    env |= {"SPOOL": str(tmp_path / "spool"), "REPLICATION_URI": replication_uri, "SLOT": slot_name()}
    env |= {"APPLICATION": APPLICATION}
    with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
        conn.execute("CHECKPOINT")  # a new slot starts at the last redo point

    first = start_archiver(env)
    try:
        for _ in range(3):
            make_wal(pg_admin_uri, rows=20_000)
        time.sleep(0.3)
        first.send_signal(signal.SIGKILL)  # mid-stream, and most likely mid-upload
    finally:
        first.kill()
        first.wait()
    deadline = time.monotonic() + 30
    while receivers(pg_admin_uri):  # its pg_receivewal died with it (PR_SET_PDEATHSIG)
        assert time.monotonic() < deadline, "pg_receivewal outlived the killed archiver"
        time.sleep(0.1)
    for _ in range(2):
        make_wal(pg_admin_uri, rows=20_000)  # written while no archiver runs: the slot keeps it

    second = start_archiver(env)
    try:
        make_wal(pg_admin_uri, rows=20_000)
        writing = current_segment(pg_admin_uri)
        deadline = time.monotonic() + 90
        while not archive_store.metadata(LAYOUT.wal(f"{writing}.partial")):
            assert time.monotonic() < deadline, f"{writing} never reached the archive"
            time.sleep(0.2)
    finally:
        second.kill()
        second.wait()

    names = [o.key.removeprefix(LAYOUT.wal_prefix) for o in archive_store.list(LAYOUT.wal_prefix)]
    segments = [name for name in names if SEGMENT_NAME.match(name)]
    numbers = [segment_start(name)[1] // (16 << 20) for name in segments]
    assert len(segments) >= 5  # six switches; the first segment may have begun before the slot
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), f"a hole in {segments}"
    assert numbers[-1] + 1 == segment_start(writing)[1] // (16 << 20)  # up to the one being written
    assert names == [*segments, f"{writing}.partial"]  # the segments' partial objects went with them
    for name in [*segments, writing]:
        assert fetch(archive_store, LAYOUT, name, tmp_path / "RECOVERYXLOG", KEY), name
