"""The migration engine against a real PostgreSQL: history table, transactions, timeouts, dirty versions."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import psycopg
import pytest

from habitat_operator.api.common import Reason
from habitat_operator.api.migration import MigrationReason
from habitat_operator.engines.postgres.migrations import MigrationFailed, MigrationSession, Script, Timeouts
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.errors import RetryableError

pytestmark = pytest.mark.integration
SERVER_DEFAULTS = Timeouts()


def in_session(
    uri: str, work: Callable[[MigrationSession], Awaitable[None]], timeouts: Timeouts = SERVER_DEFAULTS
) -> None:
    async def scenario() -> None:
        async with MigrationSession.connect(
            ConnectionTarget(uri), "habitat-migration test", "h", timeouts
        ) as s:
            await s.ensure_history()
            await s.ensure_history()  # idempotent
            await work(s)

    asyncio.run(scenario())


def test_the_history_table_has_its_documented_columns(fresh_database: str) -> None:
    async def nothing(_: MigrationSession) -> None:
        pass

    in_session(fresh_database, nothing)
    with psycopg.connect(fresh_database) as conn:
        columns = conn.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
            " WHERE table_schema = 'habitat' AND table_name = 'h' ORDER BY ordinal_position"
        ).fetchall()
    assert columns == [
        ("version", "bigint", "NO"),
        ("name", "text", "NO"),
        ("checksum", "text", "NO"),
        ("applied_at", "timestamp with time zone", "NO"),
        ("duration_ms", "bigint", "NO"),
        ("applied_by", "text", "NO"),
        ("dirty", "boolean", "NO"),
        ("baselined", "boolean", "NO"),
    ]


def test_a_failure_rolls_back_with_its_line_and_a_revert_removes_the_row(fresh_database: str) -> None:
    async def work(s: MigrationSession) -> None:
        await s.apply(Script(1, "t", "CREATE TABLE t (id bigint);"), "ns/app uid=1")
        with pytest.raises(MigrationFailed) as raised:
            await s.apply(
                Script(2, "bad", "CREATE TABLE u (id bigint);\n\nALTER TABLE nope ADD COLUMN x int;"), "x"
            )
        assert raised.value.reason is MigrationReason.MIGRATION_FAILED
        assert "version 2 (bad) up failed at line 3" in raised.value.message
        assert [(r.version, r.applied_by, r.dirty) for r in await s.history()] == [(1, "ns/app uid=1", False)]
        await s.revert(Script(1, "t", "DROP TABLE t;"))
        assert await s.history() == []

    in_session(fresh_database, work)
    with psycopg.connect(fresh_database) as conn:
        assert conn.execute("SELECT to_regclass('u'), to_regclass('t')").fetchone() == (None, None)


def test_a_held_lock_times_out_as_retryable_and_a_file_may_set_its_own(fresh_database: str) -> None:
    with psycopg.connect(fresh_database, autocommit=True) as setup:
        setup.execute("CREATE TABLE busy (id bigint)")
    blocker = psycopg.connect(fresh_database)
    blocker.execute("LOCK TABLE busy IN ACCESS SHARE MODE")

    async def work(s: MigrationSession) -> None:
        with pytest.raises(RetryableError) as raised:
            await s.apply(Script(1, "add", "ALTER TABLE busy ADD COLUMN x int;"), "x")
        assert raised.value.reason is Reason.LOCK_TIMEOUT
        assert "version 1 (add) up hit lock_timeout" in raised.value.message
        own = Script(1, "add", "SET LOCAL lock_timeout = '1ms';\nALTER TABLE busy ADD COLUMN x int;")
        with pytest.raises(RetryableError):
            await s.apply(own, "x")
        assert await s.history() == []

    try:
        in_session(fresh_database, work, Timeouts(lock_timeout_ms=200))
    finally:
        blocker.close()


def test_a_no_transaction_migration_that_fails_part_way_stays_dirty(fresh_database: str) -> None:
    script = Script(
        1,
        "idx",
        "-- habitat:no-transaction\nCREATE TABLE t (id bigint);\nCREATE INDEX CONCURRENTLY t_id ON t (id);\n"
        "CREATE INDEX CONCURRENTLY t_x ON t (nope);",
    )

    async def work(s: MigrationSession) -> None:
        with pytest.raises(MigrationFailed) as raised:
            await s.apply(script, "x")
        assert raised.value.dirty and raised.value.reason is MigrationReason.DIRTY
        assert [(r.version, r.dirty) for r in await s.history()] == [(1, True)]
        await s.mark_clean(1)
        assert [(r.version, r.dirty) for r in await s.history()] == [(1, False)]

    in_session(fresh_database, work)
    with psycopg.connect(fresh_database) as conn:
        assert conn.execute("SELECT to_regclass('t_id') IS NOT NULL").fetchone() == (True,)


def test_statement_timeout_fails_the_migration_and_a_baseline_is_recorded_not_run(
    fresh_database: str,
) -> None:
    async def work(s: MigrationSession) -> None:
        await s.baseline(Script(3, "adopted", "CREATE TABLE never_run ();"), "ns/app uid=1")
        with pytest.raises(MigrationFailed) as raised:
            await s.apply(Script(4, "slow", "SELECT 1;\nSELECT pg_sleep(5);"), "x")
        assert "version 4 (slow) up failed at line 2: canceling statement due to statement timeout" in (
            raised.value.message
        )
        assert [(r.version, r.name, r.baselined) for r in await s.history()] == [(3, "adopted", True)]

    in_session(fresh_database, work, Timeouts(statement_timeout_ms=200))
    with psycopg.connect(fresh_database) as conn:
        assert conn.execute("SELECT to_regclass('never_run')").fetchone() == (None,)


@pytest.mark.parametrize(
    "ending, kept",
    [("COMMIT", [1]), ("ROLLBACK", []), ("COMMIT AND CHAIN", [1]), ("END", [1]), ("ABORT", [])],
)
def test_a_statement_that_ends_the_migrations_transaction_leaves_it_dirty_not_rolled_back(
    fresh_database: str, ending: str, kept: list[int]
) -> None:
    """The planner refuses such files; this is the second guard, for what a parser could miss."""
    ledger = Script(
        1,
        "ledger",
        "CREATE TABLE ledger (id int);\nINSERT INTO ledger VALUES (1);\n"
        f"{ending};\nINSERT INTO ledger VALUES (2);\nSELECT 1/0;",
    )

    async def work(s: MigrationSession) -> None:
        with pytest.raises(MigrationFailed) as raised:
            await s.apply(ledger, "x")
        failure = raised.value
        assert failure.dirty and failure.reason is MigrationReason.DIRTY, failure.message
        assert "rolled back" not in failure.message
        assert f"version 1 (ledger) up stopped at line 3: {ending!r} ended the transaction" in failure.message
        assert [(r.version, r.dirty) for r in await s.history()] == [(1, True)]

    in_session(fresh_database, work)
    with psycopg.connect(fresh_database) as conn:
        rows = conn.execute("SELECT id FROM ledger ORDER BY id").fetchall() if kept else []
        assert [r[0] for r in rows] == kept  # nothing after the statement ran


def test_each_migration_starts_from_the_sessions_defaults_with_the_operators_timeouts(
    fresh_database: str,
) -> None:
    with psycopg.connect(fresh_database, autocommit=True) as setup:
        setup.execute("CREATE TABLE busy (id bigint)")
    blocker = psycopg.connect(fresh_database)
    blocker.execute("LOCK TABLE busy IN ACCESS SHARE MODE")
    leaky = [
        "CREATE SCHEMA reporting;\nSET search_path TO reporting;\nSET lock_timeout = '1h';",
        "SELECT set_config('search_path', 'reporting', false);",
        "SET ROLE pg_read_all_data;",
        "-- habitat:no-transaction\nSET search_path TO reporting;\nSET statement_timeout = '1h';",
    ]

    async def work(s: MigrationSession) -> None:
        for version, text in enumerate(leaky, start=1):
            await s.apply(Script(version * 2 - 1, "leak", text), "x")
            table = Script(version * 2, "table", f"CREATE TABLE customers{version} (id bigint);")
            await s.apply(table, "x")
        with pytest.raises(RetryableError):  # the operator's lock_timeout, not the file's '1h'
            await s.apply(Script(10, "add", "ALTER TABLE busy ADD COLUMN x int;"), "x")

    try:
        in_session(fresh_database, work, Timeouts(lock_timeout_ms=200))
    finally:
        blocker.close()
    with psycopg.connect(fresh_database) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_name LIKE 'customers%' ORDER BY 2"
        ).fetchall()
    assert tables == [("public", f"customers{v}") for v in range(1, 5)]
