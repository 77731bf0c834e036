"""Point-in-time recovery on a private server: a base backup and WAL in an archive on the stack's S3
(through the codec, zstd and encrypted), recovered to a time, an LSN, a restore point and the
archive's end, then restored with pg_restore into a stack database."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import os
import secrets
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg
import pytest

from habitat_operator.api.common import Reason
from habitat_operator.api.restore import RestoreReason
from habitat_operator.engines.artifacts.codec import ArtifactSink
from habitat_operator.engines.artifacts.s3 import Bucket
from habitat_operator.engines.postgres import restore
from habitat_operator.engines.postgres.migrations import MigrationSession, Timeouts
from habitat_operator.engines.postgres.recovery import RecoveryRequest, recovered_dump
from habitat_operator.engines.postgres.restore import RestoreRequest
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.engines.wal.basebackup import BaseBackupEntry
from habitat_operator.engines.wal.catalog import RecoveryPlan, RecoveryTarget, plan_recovery
from habitat_operator.engines.wal.layout import ArchiveLayout, parse_lsn
from habitat_operator.engines.wal.store import BucketStore, FolderStore
from habitat_operator.errors import OperationError
from tests.harness import Stack
from tests.integration.helpers import fresh_location
from tests.integration.wal_source import SourceServer

pytestmark = pytest.mark.integration

KEY = secrets.token_bytes(32)
FIRST, SECOND = 20, 15  # rows before T, rows after T (then the table is dropped)


@dataclass(frozen=True)
class Archived:
    store: BucketStore
    layout: ArchiveLayout
    before_drop: dt.datetime  # T: every FIRST row committed before, every SECOND row after
    lsn_after_first: str
    scratch: Path  # the scratch folder's parent: traversable by the server's user


@pytest.fixture(scope="module")
def archived(stack: Stack) -> Iterator[Archived]:
    location = fresh_location(stack, "it-pitr")
    with ExitStack() as cleanup:
        bucket = cleanup.enter_context(Bucket(location))
        store, layout = BucketStore(bucket, location.key("pitr")), ArchiveLayout("source")
        source = SourceServer()
        cleanup.callback(source.stop)
        scratch = Path(tempfile.mkdtemp(prefix="habitat-pitr-scratch-"))
        os.chmod(scratch, 0o755)
        cleanup.callback(lambda: os.rmdir(scratch))
        app = source.database("app")
        with psycopg.connect(app, autocommit=True) as conn:
            conn.execute("CREATE TABLE ledger (id int PRIMARY KEY, at timestamptz NOT NULL)")
        source.base_backup(store, layout, KEY)
        with psycopg.connect(app, autocommit=True) as conn:
            for n in range(FIRST):
                conn.execute("INSERT INTO ledger VALUES (%s, clock_timestamp())", [n])
            lsn = str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])  # type: ignore[index]
            time.sleep(1.1)
            before_drop = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
            time.sleep(1.1)
            asyncio.run(_restore_point(app, "before-second"))  # as a Migration makes one
            for n in range(FIRST, FIRST + SECOND):
                conn.execute("INSERT INTO ledger VALUES (%s, clock_timestamp())", [n])
            conn.execute("DROP TABLE ledger")
            conn.execute("CREATE TABLE later (id int)")
        source.archive_wal(store, layout, KEY)
        yield Archived(store, layout, before_drop, lsn, scratch)


async def _restore_point(uri: str, name: str) -> None:
    async with MigrationSession.connect(
        ConnectionTarget(uri), "test", "history", Timeouts(None, None)
    ) as session:
        assert await session.create_restore_point(name)


LATEST = RecoveryTarget(latest=True)


def _request(archived: Archived, target: RecoveryTarget) -> RecoveryRequest:
    """Recovery to `target` as the catalog plans it."""
    return RecoveryRequest(
        store=archived.store,
        layout=archived.layout,
        plan=plan_recovery(archived.store, archived.layout, target),
        database="app",
        encryption_key=KEY,
        scratch_dir=archived.scratch,
    )


def _recover_into(request: RecoveryRequest, into: str) -> tuple[list[int] | None, object]:
    """Recovers, restores the dump into `into`, and returns the ledger's ids (None: no ledger)."""

    async def run() -> object:
        async with recovered_dump(request) as recovered:
            await restore.run_restore(RestoreRequest(target=ConnectionTarget(into), artifact=recovered.path))
            return recovered.point

    point = asyncio.run(run())
    with psycopg.connect(into) as conn:
        exists = conn.execute("SELECT to_regclass('ledger') IS NOT NULL").fetchone()[0]  # type: ignore[index]
        ids = [row[0] for row in conn.execute("SELECT id FROM ledger ORDER BY id")] if exists else None
    return ids, point


def _failure(request: RecoveryRequest) -> OperationError:
    """The error recovered_dump raises for `request` (the test fails if it recovers instead)."""

    async def run() -> None:
        async with recovered_dump(request):
            pytest.fail(f"recovered {request.plan.target.describe()}")

    with pytest.raises(OperationError) as failure:
        asyncio.run(run())
    return failure.value


def test_recovery_to_a_time_restores_exactly_the_rows_committed_by_then(
    archived: Archived, fresh_database: str
) -> None:
    ids, point = _recover_into(_request(archived, RecoveryTarget(time=archived.before_drop)), fresh_database)
    assert ids == list(range(FIRST))
    assert point.time is not None and point.time <= archived.before_drop  # type: ignore[attr-defined]
    assert not list(archived.scratch.iterdir())


def test_recovery_to_an_lsn(archived: Archived, fresh_database: str) -> None:
    ids, _ = _recover_into(
        _request(archived, RecoveryTarget(lsn=parse_lsn(archived.lsn_after_first))), fresh_database
    )
    assert ids == list(range(FIRST))


def test_recovery_to_a_restore_point(archived: Archived, fresh_database: str) -> None:
    ids, _ = _recover_into(_request(archived, RecoveryTarget(restore_point="before-second")), fresh_database)
    assert ids == list(range(FIRST))


def test_recovery_to_the_end_of_the_archive_sees_the_drop(archived: Archived, fresh_database: str) -> None:
    into = fresh_database
    ids, point = _recover_into(_request(archived, LATEST), into)
    assert ids is None  # dropped
    assert point.lsn  # type: ignore[attr-defined]
    with psycopg.connect(into) as conn:
        assert conn.execute("SELECT to_regclass('later') IS NOT NULL").fetchone()[0]  # type: ignore[index]


def test_a_target_past_the_archive_fails_and_says_where_the_archive_ends(archived: Archived) -> None:
    """The recovery's own guard, for an archive whose end the catalog could not place."""
    future = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    request = _request(archived, LATEST)
    request = replace(request, plan=replace(request.plan, target=RecoveryTarget(time=future)))

    error = _failure(request)
    assert error.reason is RestoreReason.RECOVERY_TARGET_NOT_REACHED
    assert "the archive ends at " in error.message, error.message
    assert not list(archived.scratch.iterdir())


def test_a_restore_point_that_does_not_exist_is_not_reached(archived: Archived) -> None:
    request = _request(archived, RecoveryTarget(restore_point="never-made"))

    error = _failure(request)
    assert error.reason is RestoreReason.RECOVERY_TARGET_NOT_REACHED


def test_cancellation_stops_the_server_and_removes_its_files(archived: Archived) -> None:
    request = _request(archived, LATEST)

    async def run() -> None:
        recovering = asyncio.ensure_future(_hold(request))
        deadline = time.monotonic() + 60
        while not list(archived.scratch.glob("*/data/postmaster.pid")):
            assert time.monotonic() < deadline and not recovering.done()
            await asyncio.sleep(0.05)
        pid = int(next(archived.scratch.glob("*/data/postmaster.pid")).read_text().split()[0])
        recovering.cancel()
        with pytest.raises(asyncio.CancelledError):
            await recovering
        assert not Path(f"/proc/{pid}").exists()

    asyncio.run(run())
    assert not list(archived.scratch.iterdir())


async def _hold(request: RecoveryRequest) -> None:
    async with recovered_dump(request):
        await asyncio.sleep(3600)


def test_a_base_backup_of_a_version_without_its_server_is_refused(archived: Archived) -> None:
    request = _request(archived, LATEST)
    request = replace(
        request,
        plan=replace(request.plan, base_backup=replace(request.plan.base_backup, server_version=130009)),
    )

    error = _failure(request)
    assert error.reason is RestoreReason.SERVER_VERSION_UNSUPPORTED
    assert "PostgreSQL 13" in error.message and "15" in error.message


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root operator runs the server as another user")
def test_a_scratch_folder_the_server_user_cannot_reach_is_refused_clearly(
    archived: Archived, tmp_path: Path
) -> None:
    hidden = tmp_path / "hidden"
    hidden.mkdir(mode=0o700)
    request = replace(_request(archived, LATEST), scratch_dir=hidden)

    error = _failure(request)
    assert error.reason is RestoreReason.RECOVERY_FAILED
    assert "give the operator a --scratch-dir that every user may traverse" in error.message
    assert not list(hidden.iterdir())


def test_a_copy_whose_superuser_is_not_named_postgres_is_dumped_as_its_own(
    stack: Stack, archived: Archived, fresh_database: str
) -> None:
    """initdb -U alice: the copy has no role postgres; a single-user backend names its superuser."""
    source = SourceServer(superuser="alice")
    try:
        app = source.database("app")
        with psycopg.connect(app, autocommit=True) as conn:
            conn.execute("CREATE TABLE ledger (id int PRIMARY KEY, at timestamptz NOT NULL)")
        layout = ArchiveLayout("alice")
        source.base_backup(archived.store, layout, KEY)
        with psycopg.connect(app, autocommit=True) as conn:
            conn.execute("INSERT INTO ledger SELECT n, clock_timestamp() FROM generate_series(1, 5) n")
        source.archive_wal(archived.store, layout, KEY)
    finally:
        source.stop()
    request = replace(_request(replace(archived, layout=layout), LATEST), database="app")
    ids, point = _recover_into(request, fresh_database)
    assert ids == [1, 2, 3, 4, 5]
    assert point.lsn and point.time  # type: ignore[attr-defined]  # from the log: nobody could ask


def _tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        version = tarfile.TarInfo("PG_VERSION")
        version.size = 3
        tar.addfile(version, io.BytesIO(b"15\n"))
        tar.addfile(member, io.BytesIO(data) if data else None)
    return out.getvalue()


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A scratch folder the server's user may reach (pytest's own folders are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="habitat-pitr-scratch-"))
    folder.chmod(0o755)
    yield folder
    os.rmdir(folder)  # empty: recovery left nothing


def _folder_archive(tmp_path: Path, scratch: Path, tar: bytes, sha256: str | None) -> RecoveryRequest:
    store, layout = FolderStore(tmp_path / "store"), ArchiveLayout("hostile")
    with store.writer(layout.base_backup("20261207T000000Z")) as out:
        sink = ArtifactSink(out, None, zstd=True)
        sink.write(tar)
        sink.finish()
    at = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)
    base = BaseBackupEntry(
        "20261207T000000Z", 0x1000028, 0x1000100, 1, at, at, 150004, "7", len(tar),
        sha256 or sink.sha256.hexdigest(), False, "zstd",
    )  # fmt: skip
    return RecoveryRequest(store, layout, RecoveryPlan(base, (), LATEST), "app", scratch_dir=scratch)


@pytest.mark.parametrize(
    "member",
    [
        tarfile.TarInfo("pg_tblspc/16384"),  # made a symlink below
        tarfile.TarInfo("../outside"),
    ],
)
def test_a_base_backup_with_links_or_paths_outside_its_folder_is_refused(
    tmp_path: Path, scratch: Path, member: tarfile.TarInfo
) -> None:
    if member.name.startswith("pg_tblspc"):
        member.type, member.linkname = tarfile.SYMTYPE, "/etc"
    request = _folder_archive(tmp_path, scratch, _tar_with(member), None)
    error = _failure(request)
    assert error.reason is Reason.VERIFICATION_FAILED, error.message
    assert "is not usable" in error.message
    assert not (scratch.parent / "outside").exists()


def test_a_base_backup_that_does_not_match_its_entry_is_refused(tmp_path: Path, scratch: Path) -> None:
    request = _folder_archive(tmp_path, scratch, _tar_with(tarfile.TarInfo("global/")), "00" * 32)
    error = _failure(request)
    assert error.reason is Reason.CHECKSUM_MISMATCH and "does not match its entry's SHA-256" in error.message
