"""The supervised pg_receivewal against the stack's PostgreSQL, as a role with REPLICATION."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from habitat_operator.api.wal import WalReason
from habitat_operator.engines.postgres import replication
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.engines.wal.layout import SEGMENT_NAME
from habitat_operator.engines.wal.receiver import WalReceiver
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
