"""Versioned SQL migrations applied to one database, with their history table.

The history table is the truth about the database's version. A migration and its history row are
written in one transaction, so a failure or a killed operator leaves either both or neither. A file
whose first line is the no-transaction marker runs statement by statement outside a transaction
(for `CREATE INDEX CONCURRENTLY`): its row is written first with `dirty = true` and cleared only
once every statement succeeded, so a failure or a kill part way leaves the version dirty, and
nothing further runs until someone resolves it.

A migration that runs in a transaction never ends it: the planner refuses a file with COMMIT,
ROLLBACK and the like, and after each statement the run checks that it is still in the transaction
it opened; if not, the version is recorded dirty, as what ran before may be committed. Each
migration starts from the session's defaults (whatever the previous one SET), with the operator's
timeouts applied again.

The caller holds the database's advisory lock (locks.py) on another session while it uses these,
so that lock never waits on a migration's own locks.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property

import psycopg
from psycopg import sql
from psycopg.errors import LockNotAvailable, UndefinedTable
from psycopg.pq import TransactionStatus

from habitat_operator.api.common import Reason
from habitat_operator.api.migration import HISTORY_SCHEMA, NO_TRANSACTION_MARKER, MigrationReason
from habitat_operator.engines.postgres.client_tools import connect
from habitat_operator.engines.postgres.statements import ParsedScript, Statement, line_of, parse
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.errors import PermanentError, RetryableError, one_line

_HISTORY_COLUMNS = "version, name, checksum, applied_at, duration_ms, applied_by, dirty, baselined"
HISTORY_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    version     bigint      PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms bigint      NOT NULL DEFAULT 0,
    applied_by  text        NOT NULL,
    dirty       boolean     NOT NULL DEFAULT false,
    baselined   boolean     NOT NULL DEFAULT false
)
"""
_TERMINATE_LEFTOVERS = """
SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
 WHERE application_name = %s AND pid <> pg_backend_pid()
"""


def checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Script:
    """One direction of one migration: its SQL and whether it runs outside a transaction.

    Its checksum and statements are computed once, on first use: hashing and parsing a large file
    is CPU-heavy, so the caller first uses them off the event loop."""

    version: int
    name: str
    sql: str
    origin: str = field(default="", compare=False)  # where it comes from, e.g. "ConfigMap sql key 1_a.up.sql"

    @property
    def no_transaction(self) -> bool:
        lines = self.sql.lstrip().splitlines()
        return bool(lines) and lines[0].strip() == NO_TRANSACTION_MARKER

    @cached_property
    def checksum(self) -> str:
        return checksum(self.sql)

    @cached_property
    def parsed(self) -> ParsedScript:
        return parse(self.sql)


@dataclass(frozen=True)
class HistoryRow:
    version: int
    name: str
    checksum: str
    applied_at: datetime
    duration_ms: int
    applied_by: str
    dirty: bool
    baselined: bool


@dataclass(frozen=True)
class Timeouts:
    """PostgreSQL settings for every migration, in milliseconds; None keeps the server's default."""

    lock_timeout_ms: int | None = None
    statement_timeout_ms: int | None = None


class MigrationFailed(PermanentError):
    """A migration's SQL failed; `dirty` when part of it may be in place: it ran outside a
    transaction, or a statement ended the transaction it ran in."""

    def __init__(self, script: Script, direction: str, what: str, dirty: bool):
        self.version, self.dirty = script.version, dirty
        message = f"version {script.version} ({script.name}) {direction} {what}"
        if not dirty:
            super().__init__(MigrationReason.MIGRATION_FAILED, f"{message}; rolled back")
            return
        super().__init__(
            MigrationReason.DIRTY,
            f"{message}; the database may be half changed: repair it by hand, then set spec.resolveDirty"
            f" {{version: {script.version}, action: markApplied or markReverted}}",
        )


class LeftTransaction(MigrationFailed):
    """A statement ended the transaction the migration ran in: what ran before it may be committed."""

    def __init__(self, script: Script, direction: str, statement: Statement):
        line, text = line_of(script.sql, statement.offset), statement.sql.splitlines()[0][:60]
        what = (
            f"stopped at line {line}: {text!r} ended the transaction the operator ran it in, so what ran"
            " before it may be committed; nothing after it ran"
        )
        super().__init__(script, direction, what, dirty=True)


def _failed(
    script: Script, direction: str, error: psycopg.Error, offset: int, dirty: bool
) -> MigrationFailed:
    detail = one_line(error.diag.message_primary or str(error))
    outside = "outside a transaction " if dirty else ""
    line = _line_of(script.sql, error, offset)
    return MigrationFailed(script, direction, f"failed {outside}at line {line}: {detail}", dirty)


def _line_of(text: str, error: psycopg.Error, offset: int) -> int:
    """The 1-based line of `text` that PostgreSQL's error position points at in the statement that
    starts `offset` characters in; the statement's first line of code when the error has no position."""
    position = error.diag.statement_position
    if position:
        return line_of(text, offset + int(position) - 1)
    line = line_of(text, offset)
    for code in text[offset:].splitlines():
        if code.strip() and not code.strip().startswith("--"):
            break
        line += 1
    return line


class MigrationSession:
    """A session on the target database that reads the history and runs migrations."""

    def __init__(self, conn: psycopg.AsyncConnection[tuple[object, ...]], table: str, timeouts: Timeouts):
        self.conn = conn
        self.table = sql.Identifier(HISTORY_SCHEMA, table)
        self.timeouts = timeouts

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, target: ConnectionTarget, application_name: str, table: str, timeouts: Timeouts
    ) -> AsyncIterator[MigrationSession]:
        conn = await connect(target.with_application_name(application_name), Reason.DATABASE_UNREACHABLE)
        conn.prepare_threshold = None  # nothing prepared: DISCARD ALL between migrations would drop it
        async with conn:
            yield cls(conn, table, timeouts)

    async def end_leftovers(self, application_name: str) -> None:
        """Ends sessions of a killed operator's run of this object, which may still be executing (and
        holding locks) until their server notices: the caller holds the database lock, so they are stale."""
        await self.conn.execute(_TERMINATE_LEFTOVERS, (application_name,))

    async def ensure_history(self) -> None:
        await self.conn.execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(HISTORY_SCHEMA))
        )
        await self.conn.execute(sql.SQL(HISTORY_DDL).format(table=self.table))

    async def history(self) -> list[HistoryRow]:
        """Every row, by version; none when the table does not exist yet."""
        query = sql.SQL("SELECT {} FROM {} ORDER BY version").format(sql.SQL(_HISTORY_COLUMNS), self.table)
        try:
            async with self.conn.transaction():
                rows = await (await self.conn.execute(query)).fetchall()
        except UndefinedTable:
            return []
        return [HistoryRow(*row) for row in rows]  # type: ignore[arg-type]

    async def baseline(self, script: Script, applied_by: str) -> None:
        """A row for a version that the database already had when it was adopted: never run."""
        await self.conn.execute(
            sql.SQL(
                "INSERT INTO {} (version, name, checksum, applied_by, baselined)"
                " VALUES (%s, %s, %s, %s, true)"
            ).format(self.table),
            (script.version, script.name, script.checksum, applied_by),
        )

    async def mark_clean(self, version: int) -> None:
        """A dirty version repaired by hand: its changes are in place."""
        await self.conn.execute(
            sql.SQL("UPDATE {} SET dirty = false WHERE version = %s").format(self.table), (version,)
        )

    async def forget(self, version: int) -> None:
        await self.conn.execute(sql.SQL("DELETE FROM {} WHERE version = %s").format(self.table), (version,))

    async def create_restore_point(self, name: str) -> str:
        """pg_create_restore_point(name); its LSN. PermanentError RestorePointFailed when the server
        refuses (the role may not execute it, wal_level is minimal, the server is a standby)."""
        try:
            cursor = await self.conn.execute("SELECT pg_create_restore_point(%s)::text", (name,))
            row = await cursor.fetchone()
        except psycopg.Error as error:
            detail = error.diag.message_primary or str(error)
            raise PermanentError(MigrationReason.RESTORE_POINT_FAILED, one_line(detail)) from None
        return str(row[0]) if row else ""

    async def apply(self, script: Script, applied_by: str) -> int:
        """Runs an up script and records it; returns its duration in milliseconds."""
        insert = sql.SQL(
            "INSERT INTO {} (version, name, checksum, duration_ms, applied_by, dirty)"
            " VALUES (%s, %s, %s, %s, %s, %s)"
        ).format(self.table)
        dirty_row = (script.version, script.name, script.checksum, 0, applied_by, True)
        started = time.monotonic()
        await self._reset_session()
        if not script.no_transaction:
            async with self._transaction(insert, dirty_row):
                await self._run_statements(script, "up")
                elapsed = _ms(started)
                await self._as_operator()
                await self.conn.execute(
                    insert, (script.version, script.name, script.checksum, elapsed, applied_by, False)
                )
            return elapsed
        await self.conn.execute(insert, dirty_row)
        await self._set_timeouts(local=False)
        await self._run_statements(script, "up")
        elapsed = _ms(started)
        await self._as_operator()
        await self.conn.execute(
            sql.SQL("UPDATE {} SET dirty = false, duration_ms = %s WHERE version = %s").format(self.table),
            (elapsed, script.version),
        )
        return elapsed

    async def revert(self, down: Script) -> int:
        """Runs a down script and removes the version's row; returns its duration in milliseconds."""
        delete = sql.SQL("DELETE FROM {} WHERE version = %s").format(self.table)
        mark_dirty = sql.SQL("UPDATE {} SET dirty = true WHERE version = %s").format(self.table)
        started = time.monotonic()
        await self._reset_session()
        if not down.no_transaction:
            async with self._transaction(mark_dirty, (down.version,)):
                await self._run_statements(down, "down")
                await self._as_operator()
                await self.conn.execute(delete, (down.version,))
            return _ms(started)
        await self.conn.execute(mark_dirty, (down.version,))
        await self._set_timeouts(local=False)
        await self._run_statements(down, "down")
        await self._as_operator()
        await self.conn.execute(delete, (down.version,))
        return _ms(started)

    @asynccontextmanager
    async def _transaction(self, mark_dirty: sql.Composed, row: tuple[object, ...]) -> AsyncIterator[None]:
        """A migration's transaction: an exception out of the block rolls it back, but when a statement
        ended the transaction the version is marked dirty (`mark_dirty` with `row`), as part of it may
        be committed."""
        try:
            async with self.conn.transaction():
                await self._set_timeouts(local=True)
                yield
        except LeftTransaction:
            await self._reset_session()
            await self.conn.execute(mark_dirty, row)
            raise

    async def _run_statements(self, script: Script, direction: str) -> None:
        dirty = script.no_transaction  # outside a transaction, what ran before the failure stays
        transaction: str | None = None
        for statement in script.parsed.statements:
            try:
                await self.conn.execute(statement.sql)
            except psycopg.errors.DatabaseError as error:
                if isinstance(error, LockNotAvailable) and not dirty:
                    raise _lock_timeout(script, direction, error) from None
                raise _failed(script, direction, error, statement.offset, dirty) from None
            if not dirty:
                transaction = await self._same_transaction(transaction, script, direction, statement)

    async def _same_transaction(
        self, transaction: str | None, script: Script, direction: str, statement: Statement
    ) -> str:
        """The id of the transaction the migration runs in, the same after each statement; a statement
        that committed, rolled back or chained it (which the planner refuses) raises LeftTransaction."""
        if self.conn.info.transaction_status is TransactionStatus.INTRANS:
            cursor = await self.conn.execute("SELECT pg_current_xact_id()::text")
            current = str((await cursor.fetchone() or ("",))[0])
            if transaction in (None, current):
                return current
        raise LeftTransaction(script, direction, statement)

    async def _reset_session(self) -> None:
        """The session's defaults, whatever the previous migration changed (SET, set_config(), SET ROLE,
        temporary tables, prepared statements); between migrations the session is outside any
        transaction, where DISCARD ALL may run."""
        await self.conn.execute("DISCARD ALL")

    async def _as_operator(self) -> None:
        """The history is written as the session's own user, whatever role the migration took."""
        await self.conn.execute("SET SESSION AUTHORIZATION DEFAULT")
        await self.conn.execute("RESET ROLE")

    async def _set_timeouts(self, local: bool) -> None:
        """Ours, or the server's default; within a migration, a file may still SET its own."""
        scope = sql.SQL("SET LOCAL" if local else "SET")
        for name, value in (
            ("lock_timeout", self.timeouts.lock_timeout_ms),
            ("statement_timeout", self.timeouts.statement_timeout_ms),
        ):
            setting = sql.Literal(f"{value}ms") if value is not None else sql.SQL("DEFAULT")
            await self.conn.execute(sql.SQL("{} {} TO {}").format(scope, sql.Identifier(name), setting))


def _lock_timeout(script: Script, direction: str, error: psycopg.Error) -> RetryableError:
    detail = one_line(error.diag.message_primary or str(error))
    return RetryableError(
        Reason.LOCK_TIMEOUT,
        f"version {script.version} ({script.name}) {direction} hit lock_timeout: {detail}",
    )


def _ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
