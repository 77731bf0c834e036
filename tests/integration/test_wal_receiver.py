"""The supervised pg_receivewal against the stack's PostgreSQL, as a role with REPLICATION."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from habitat_operator.api.wal import WalReason
from habitat_operator.engines.postgres import replication
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.engines.wal.layout import SEGMENT_NAME
from habitat_operator.engines.wal.receiver import WalReceiver
from habitat_operator.engines.wal.waldump import summarize
from tests.integration.wal_helpers import make_wal, replication_uri, slot_name

pytestmark = pytest.mark.integration
__all__ = ["replication_uri"]  # fixtures, imported to be used here

APP = "habitat-walarchive-it-receiver"


async def eventually(check: Callable[[], object], seconds: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


def streaming_as(admin_uri: str, application: str) -> tuple[str, str] | None:
    """(state, sync_state) of the walsender serving `application`, as a superuser sees it."""
    with psycopg.connect(admin_uri) as conn:
        query = "SELECT state, sync_state FROM pg_stat_replication WHERE application_name = %s"
        row = conn.execute(query, (application,)).fetchone()
    return (str(row[0]), str(row[1])) if row else None


def completed_segments(spool: Path) -> list[str]:
    return sorted(p.name for p in spool.iterdir() if SEGMENT_NAME.match(p.name))


def test_streams_completed_segments_under_its_application_name(
    replication_uri: str, pg_admin_uri: str, tmp_path: Path
) -> None:
    target, slot, spool = ConnectionTarget(replication_uri), slot_name(), tmp_path / "spool"
    receiver = WalReceiver(target, slot, spool, APP, synchronous=True, create_slot=True, first_backoff=0.2)

    async def scenario() -> None:
        await receiver.start()
        try:
            await eventually(lambda: receiver.running)
            assert receiver._process is not None
            pid = receiver._process.pid
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert b"--synchronous" in cmdline and slot.encode() in cmdline
            password = replication_uri.split(":")[2].split("@")[0]
            assert not any(password.encode() in part for part in cmdline)
            await eventually(lambda: streaming_as(pg_admin_uri, APP) == ("streaming", "async"))
            await asyncio.to_thread(make_wal, pg_admin_uri)
            await eventually(lambda: completed_segments(spool))
            state = await replication.slot_state(target, slot)
            assert state is not None and state.active
            assert receiver.last_error is None
        finally:
            await receiver.stop()
        assert not receiver.running and not os.path.exists(f"/proc/{pid}")
        assert receiver.last_error is None and receiver.restarts == 0  # SIGINT: a clean exit
        for _ in range(100):  # the walsender notices its receiver left
            state = await replication.slot_state(target, slot)
            if state is not None and not state.active:
                break
            await asyncio.sleep(0.1)
        assert state is not None and not state.active

    asyncio.run(scenario())


def test_restarts_after_the_child_is_killed(replication_uri: str, tmp_path: Path) -> None:
    receiver = WalReceiver(
        ConnectionTarget(replication_uri), slot_name(), tmp_path, APP, create_slot=True, first_backoff=0.2
    )

    async def scenario() -> None:
        await receiver.start()
        try:
            await eventually(lambda: receiver.running)
            assert receiver._process is not None
            first = receiver._process.pid
            os.kill(first, signal.SIGKILL)
            await eventually(
                lambda: receiver.running and receiver._process is not None and receiver._process.pid != first
            )
            assert receiver.restarts == 1
        finally:
            await receiver.stop()

    asyncio.run(scenario())


def test_a_missing_slot_is_reported_not_created(replication_uri: str, tmp_path: Path) -> None:
    target, slot = ConnectionTarget(replication_uri), slot_name()
    receiver = WalReceiver(target, slot, tmp_path, APP, first_backoff=0.1, max_backoff=0.2)

    async def scenario() -> None:
        await receiver.start()
        try:
            await eventually(lambda: receiver.restarts >= 2)
        finally:
            await receiver.stop()
        assert receiver.last_error is not None
        assert receiver.last_error.reason == WalReason.SLOT_MISSING
        assert receiver.last_error.message == f"slot {slot} does not exist on {target.display}"
        assert await replication.slot_state(target, slot) is None

    asyncio.run(scenario())


def test_synchronous_commits_return_only_once_the_spool_holds_them(
    replication_uri: str, pg_admin_uri: str, tmp_path: Path
) -> None:
    """With the receiver's application_name in synchronous_standby_names, a commit that returned is
    already in the spool: RPO 0 for what reaches the uploader."""
    target, slot, spool = ConnectionTarget(replication_uri), slot_name(), tmp_path / "spool"
    application = f"habitat-walarchive-it-sync-{slot[-8:]}"
    receiver = WalReceiver(target, slot, spool, application, synchronous=True, create_slot=True)

    def configure(names: str) -> None:
        with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(sql.Literal(names))
            )
            conn.execute("SELECT pg_reload_conf()")

    def commit() -> dt.datetime:
        with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
            conn.execute("SET statement_timeout = '30s'")  # a commit waiting on a dead receiver fails
            conn.execute("CREATE TEMP TABLE synced AS SELECT now() AS t")
            row = conn.execute("SELECT t FROM synced").fetchone()
        assert row is not None
        return row[0]  # type: ignore[no-any-return]

    async def scenario() -> None:
        await receiver.start()
        try:
            await eventually(lambda: streaming_as(pg_admin_uri, application) == ("streaming", "sync"))
            for _ in range(3):
                committed = await asyncio.to_thread(commit)
                partial = next(p for p in spool.iterdir() if p.name.endswith(".partial"))
                snapshot = tmp_path / partial.name.removesuffix(".partial")
                shutil.copyfile(partial, snapshot)
                summary = await asyncio.to_thread(summarize, snapshot)
                assert summary.last_commit_at is not None and summary.last_commit_at >= committed
        finally:
            await receiver.stop()

    configure(f'"{application}"')  # quoted: a standby name with hyphens is not an identifier
    try:
        asyncio.run(scenario())
    finally:
        configure("")
