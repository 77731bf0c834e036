"""Database locks and drill scratch databases against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from habitat_operator.api.common import Reason
from habitat_operator.engines.postgres import restore, scratch
from habitat_operator.engines.postgres.dump import BackupRequest, run_backup
from habitat_operator.engines.postgres.locks import database_lock
from habitat_operator.engines.postgres.restore import RestoreRequest
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.errors import RetryableError

pytestmark = pytest.mark.integration


def test_a_database_lock_is_held_until_its_block_ends_and_names_its_holder(fresh_database: str) -> None:
    target = ConnectionTarget(fresh_database)

    async def scenario() -> None:
        async with database_lock(target, "restore team-a/first") as first:
            assert first.acquired
            async with database_lock(target, "restore team-b/second") as second:
                assert not second.acquired
                assert second.holder == "restore team-a/first"
            # Another database of the same server is not affected.
            async with database_lock(target.with_database("postgres"), "migration x/y") as other:
                assert other.acquired
        async with database_lock(target, "restore team-b/second") as again:
            assert again.acquired

    asyncio.run(scenario())


def test_a_lock_goes_with_its_session(fresh_database: str, pg_admin_uri: str) -> None:
    """A killed operator's session ends, and with it the lock: no stale lock survives a crash."""
    target = ConnectionTarget(fresh_database)

    async def scenario() -> None:
        async with database_lock(target, "restore team-a/crashed") as held:
            assert held.acquired
            with psycopg.connect(pg_admin_uri, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE %s",
                    ["habitat-operator lock restore team-a/crashed%"],
                )
            async with database_lock(target, "restore team-b/next") as after:
                assert after.acquired

    asyncio.run(scenario())


def test_scratch_databases_name_their_owner(pg_admin_uri: str) -> None:
    name = f"habitat_drill_t_{secrets.token_hex(4)}"
    unmarked = f"habitat_drill_u_{secrets.token_hex(4)}"
    target = ConnectionTarget(pg_admin_uri).with_database(name)

    async def scenario() -> list[scratch.ScratchDatabase]:
        await restore.create_database(target)
        await restore.create_database(target.with_database(unmarked))
        await scratch.mark_owner(target, "team-a", "1234-uid")
        return await scratch.list_scratch_databases(target)

    try:
        found = asyncio.run(scenario())
        assert scratch.ScratchDatabase(name, "team-a", "1234-uid") in found
        assert unmarked not in {database.name for database in found}
    finally:
        with psycopg.connect(pg_admin_uri, autocommit=True) as admin:
            for database in (name, unmarked):
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(database)))


def test_a_restore_blocked_by_another_sessions_lock_fails_over_to_a_retry(
    fresh_database: str, pg_admin_uri: str, tmp_path: Path
) -> None:
    """lock_timeout reaches pg_restore: a held lock ends the attempt as LockTimeout, retryable."""
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY)")
    source = ConnectionTarget(fresh_database)
    artifact = tmp_path / "source.dump"
    asyncio.run(run_backup(BackupRequest(target=source, destination=artifact)))
    blocker = psycopg.connect(fresh_database)
    try:
        blocker.execute("LOCK TABLE accounts IN ACCESS SHARE MODE")  # --clean must drop it, and waits
        request = RestoreRequest(target=source, artifact=artifact, clean=True, lock_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(RetryableError) as failure:
            asyncio.run(restore.run_restore(request))
        assert time.monotonic() - started < 30
    finally:
        blocker.close()
    assert failure.value.reason is Reason.LOCK_TIMEOUT
    assert "held by pid" in failure.value.message
