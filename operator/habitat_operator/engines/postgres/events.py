"""Reading the event store: a selector turned into one parameterised query, read in id order.

Identifiers (the table, the mapped columns) are quoted with `sql.Identifier` and every value is
bound as a parameter, so nothing of the spec is ever formatted into SQL. Events are read in pages
by keyset (`id > last AND id <= upper ORDER BY id LIMIT n`), never OFFSET: each page costs the same
however far the replay has gone. A page is also cut where its payloads and headers pass a byte
budget (the server sums their sizes before sending any), so memory holds at most that many bytes of
events a page, whatever their sizes; a single event larger than the budget is a page of its own.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from habitat_operator.api.common import Reason
from habitat_operator.api.replayjob import (
    LIST_OPERATORS,
    OPTIONAL_COLUMNS,
    ColumnMap,
    EventSelector,
    WhereClause,
    WhereOperator,
)
from habitat_operator.engines.postgres import client_tools
from habitat_operator.engines.postgres.client_tools import classify_failure, meaningful_line
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.errors import OperationError, PermanentError, RetryableError

BEFORE_FIRST_ID = -(2**63)  # below every bigint: "after nothing"
FIRST_PAGE = 100  # events the first page of a byte-bounded read asks for

_COMPARISONS = {
    WhereOperator.EQ: "=",
    WhereOperator.NE: "IS DISTINCT FROM",
    WhereOperator.LT: "<",
    WhereOperator.LTE: "<=",
    WhereOperator.GT: ">",
    WhereOperator.GTE: ">=",
    WhereOperator.LIKE: "LIKE",
    WhereOperator.IN: "IN",
    WhereOperator.NOT_IN: "NOT IN",
    WhereOperator.IS_NULL: "IS NULL",
    WhereOperator.IS_NOT_NULL: "IS NOT NULL",
}
# The where filter's column names (the contract's, camelCase) and ColumnMap's fields.
_CONTRACT = {
    "id": "id",
    "eventType": "event_type",
    "occurredAt": "occurred_at",
    "routingKey": "routing_key",
    "correlationId": "correlation_id",
    "payload": "payload",
    "headers": "headers",
}


class Event(NamedTuple):  # a tuple: a page of a thousand is built at a fraction of a dataclass's cost
    id: int
    event_type: str
    occurred_at: datetime
    payload: bytes  # the stored JSON as text, UTF-8; empty for SQL NULL
    routing_key: str | None
    correlation_id: str | None
    headers: dict[str, Any] | None


@dataclass(frozen=True)
class Snapshot:
    """The selection at the start: how many events, and the highest id (None when empty)."""

    count: int
    upper: int | None


@dataclass(frozen=True)
class Bound:
    """The selection's highest id, and the transactions open when it was read (their ids)."""

    upper: int | None
    open_transactions: tuple[int, ...]


class EventStore:
    """One table of the event store and the names of its columns (an optional one left out has the
    contract's name); `absent` are optional columns the table does not have, read as NULL."""

    def __init__(self, table: str, columns: ColumnMap, absent: frozenset[str] = frozenset()) -> None:
        self.table_name = table
        self.table = sql.Identifier(*table.split("."))
        self.columns = columns
        self.absent = absent

    def has(self, field: str) -> bool:
        return field not in self.absent

    def name(self, field: str) -> str:
        return str(getattr(self.columns, field) or OPTIONAL_COLUMNS[field])

    def column(self, field: str) -> sql.Composable:
        return sql.SQL("NULL") if field in self.absent else sql.Identifier(self.name(field))

    def check_selector(self, selector: EventSelector) -> None:
        """Names the selector field that needs an optional column the table does not have."""
        if selector.correlation_ids is not None and not self.has("correlation_id"):
            raise self._missing("spec.selector.correlationIds", "correlation_id")
        for index, clause in enumerate(selector.where or []):
            field = _CONTRACT[clause.column.partition(".")[0]]
            if not self.has(field):
                raise self._missing(f"spec.selector.where[{index}].column", field)

    def _missing(self, where: str, field: str) -> PermanentError:
        alias = ColumnMap.model_fields[field].alias
        return PermanentError(
            Reason.INVALID_SPEC,
            f"{where}: table {self.table_name!r} has no {OPTIONAL_COLUMNS[field]!r} column"
            f" (name it in spec.source.columns.{alias})",
        )

    def _where_column(self, name: str) -> tuple[sql.Composable, list[Any]]:
        head, _, key = name.partition(".")
        column = self.column(_CONTRACT[head])
        if key:
            return sql.SQL("({} ->> %s)").format(column), [key]
        return column, []

    def _where_clause(self, clause: WhereClause) -> tuple[sql.Composable, list[Any]]:
        column, params = self._where_column(clause.column)
        operator = sql.SQL(_COMPARISONS[clause.operator])
        if clause.operator in LIST_OPERATORS:
            values = clause.values or []
            holders = sql.SQL(", ").join([sql.Placeholder()] * len(values))
            return sql.SQL("{} {} ({})").format(column, operator, holders), [*params, *values]
        if clause.value is None:
            return sql.SQL("{} {}").format(column, operator), params
        return sql.SQL("{} {} %s").format(column, operator), [*params, clause.value]

    def condition(self, selector: EventSelector) -> tuple[sql.Composed, list[Any]]:
        """The selector as a WHERE condition (every criterion ANDed) and its parameters."""
        parts: list[sql.Composable] = []
        params: list[Any] = []
        criteria = (
            ("id", "= ANY(%s)", selector.event_ids),
            ("event_type", "= ANY(%s)", selector.types),
            ("occurred_at", ">= %s", selector.from_),
            ("occurred_at", "< %s", selector.to),
            ("correlation_id", "= ANY(%s)", selector.correlation_ids),
        )
        for field, comparison, value in criteria:
            if value is not None:
                parts.append(sql.SQL("{} ").format(self.column(field)) + sql.SQL(comparison))
                params.append(value)
        for clause in selector.where or []:
            part, values = self._where_clause(clause)
            parts.append(part)
            params.extend(values)
        return sql.SQL(" AND ").join(parts or [sql.SQL("TRUE")]), params

    def select_events(self) -> sql.Composed:
        c = self.column
        # the payload as UTF-8 bytes (the message body as it goes out: no str in between); headers as
        # text: json.loads of a str costs less than psycopg's jsonb loader; text columns cast, so
        # that a varchar or an enum column reads as str in binary results too
        return sql.SQL(
            "SELECT {}, {}::text, {}, convert_to({}::text, 'UTF8'), {}::text, {}::text, {}::text FROM {}"
        ).format(
            c("id"),
            c("event_type"),
            c("occurred_at"),
            c("payload"),
            c("routing_key"),
            c("correlation_id"),
            c("headers"),
            self.table,
        )

    def size(self) -> sql.Composed:
        """The bytes an event brings into memory: its payload, headers and text columns, as text
        (a 2 MB routing key, which AMQP cannot even carry, is still read before it is refused)."""
        fields = ("payload", "headers", "event_type", "routing_key", "correlation_id")
        return sql.SQL(" + ").join(
            sql.SQL("coalesce(octet_length({}::text), 0)").format(self.column(field)) for field in fields
        )


@contextmanager
def _classified(target: ConnectionTarget) -> Iterator[None]:
    """psycopg's errors as OperationErrors: a server that cannot be reached is retried; a query the
    table or a where value makes invalid is the spec's fault."""
    try:
        yield
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as error:
        raise PermanentError(
            Reason.INVALID_SPEC, f"spec.source.table: {error.diag.message_primary}"
        ) from None
    except psycopg.errors.UndefinedColumn as error:
        raise PermanentError(
            Reason.INVALID_SPEC, f"spec.source.columns: {error.diag.message_primary}"
        ) from None
    except (psycopg.DataError, psycopg.errors.UndefinedFunction) as error:
        raise PermanentError(
            Reason.INVALID_SPEC, f"spec.selector.where: {error.diag.message_primary}"
        ) from None
    except psycopg.OperationalError as error:
        classified = classify_failure(
            "PostgreSQL", str(error), target, failed_reason=Reason.DATABASE_UNREACHABLE
        )
        if classified.retryable:
            raise classified from None
        # A session ended under us (a restart, a terminated backend): the replay resumes from its checkpoint.
        line = meaningful_line(target.redact(str(error)))
        raise RetryableError(
            Reason.DATABASE_UNREACHABLE, f"lost the connection to {target.display}: {line}"
        ) from None


@asynccontextmanager
async def connect(target: ConnectionTarget) -> AsyncIterator[EventReader]:
    """A read-only session on the event store."""
    conn = await client_tools.connect(target, Reason.DATABASE_UNREACHABLE)
    async with conn:
        yield EventReader(conn, target)


class EventReader:
    """Queries of one session; each raises OperationErrors (see `_classified`)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], target: ConnectionTarget) -> None:
        self.conn = conn
        self.target = target

    async def _rows(self, query: sql.Composed | sql.SQL, params: list[Any]) -> list[tuple[Any, ...]]:
        with _classified(self.target):
            rows: list[tuple[Any, ...]] = await (await self.conn.execute(query, params)).fetchall()
            return rows

    async def check_columns(self, store: EventStore) -> EventStore:
        """The store with its optional columns resolved: one left out of spec.source.columns is the
        contract's name if the table has it, else none. Names the spec field of a mapped column the
        table lacks, before any query trips on it."""
        schema, _, table = store.table_name.rpartition(".")
        rows = await self._rows(
            sql.SQL(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name = %s AND table_schema = COALESCE(%s, current_schema())"
            ),
            [table, schema or None],
        )
        if not rows:
            raise PermanentError(
                Reason.INVALID_SPEC, f"spec.source.table: table {store.table_name!r} not found"
            )
        present = {row[0] for row in rows}
        absent = set()
        for field, name in store.columns.model_dump().items():
            if name is None and OPTIONAL_COLUMNS[field] not in present:
                absent.add(field)
            elif name is not None and name not in present:
                alias = ColumnMap.model_fields[field].alias
                raise PermanentError(
                    Reason.INVALID_SPEC,
                    f"spec.source.columns.{alias}: column {name!r} not found in table {store.table_name!r}",
                )
        return EventStore(store.table_name, store.columns, frozenset(absent))

    async def snapshot(self, store: EventStore, selector: EventSelector) -> Snapshot:
        condition, params = store.condition(selector)
        query = sql.SQL("SELECT count(*), max({}) FROM {} WHERE {}").format(
            store.column("id"), store.table, condition
        )
        count, upper = (await self._rows(query, params))[0]
        return Snapshot(int(count), None if upper is None else int(upper))

    async def bound(self, store: EventStore, selector: EventSelector) -> Bound:
        """The selection's highest id and the transactions open when it was read that may still
        commit ids below it: ids are taken from a sequence when a row is inserted, before its
        transaction commits. Every transaction with an id holds the lock on that id until it ends
        (pg_locks), including those at or past the snapshot's xmax, which pg_snapshot_xip leaves
        out. One shown to be of another database, or to have written nothing (no RowExclusiveLock
        held: it only read or locked), cannot commit an event; one that cannot be told (a
        prepared transaction, which has no session) is waited for."""
        condition, params = store.condition(selector)
        query = sql.SQL(
            "SELECT max({}), ARRAY("
            " SELECT DISTINCT x.transactionid::text::bigint FROM pg_locks x"
            " WHERE x.locktype = 'transactionid' AND x.mode = 'ExclusiveLock'"
            " AND x.pid IS DISTINCT FROM pg_backend_pid()"
            " AND NOT EXISTS (SELECT FROM pg_stat_activity a WHERE a.pid = x.pid"
            "  AND (a.datname IS DISTINCT FROM current_database() OR NOT EXISTS"
            "   (SELECT FROM pg_locks l WHERE l.pid = a.pid AND l.mode = 'RowExclusiveLock'))))"
            " FROM {} WHERE {}"
        ).format(store.column("id"), store.table, condition)
        upper, xids = (await self._rows(query, params))[0]
        return Bound(None if upper is None else int(upper), tuple(sorted(xids)))

    async def still_open(self, transactions: tuple[int, ...]) -> tuple[int, ...]:
        """Those of `transactions` still in progress: their id's lock is still held."""
        rows = await self._rows(
            sql.SQL(
                "SELECT DISTINCT transactionid::text::bigint AS xid FROM pg_locks"
                " WHERE locktype = 'transactionid' AND mode = 'ExclusiveLock'"
                " AND transactionid::text::bigint = ANY(%s) ORDER BY xid"
            ),
            [list(transactions)],
        )
        return tuple(row[0] for row in rows)

    async def count_between(
        self, store: EventStore, selector: EventSelector, after: int, through: int
    ) -> int:
        """Selected events with after < id <= through."""
        condition, params = store.condition(selector)
        query = sql.SQL("SELECT count(*) FROM {} WHERE ({}) AND {} > %s AND {} <= %s").format(
            store.table, condition, store.column("id"), store.column("id")
        )
        return int((await self._rows(query, [*params, after, through]))[0][0])

    async def page(
        self,
        store: EventStore,
        selector: EventSelector,
        after: int,
        through: int,
        limit: int,
        max_bytes: int | None = None,
    ) -> list[Event]:
        """The next `limit` selected events with after < id <= through, in id order; with
        `max_bytes`, only as many as fit in it (at least one): the server sums the sizes first."""
        condition, params = store.condition(selector)
        id_ = store.column("id")
        last: sql.Composable = sql.SQL("%s")
        last_params: list[Any] = [through]
        if max_bytes is not None:
            last = sql.SQL(
                "(SELECT max(id) FROM (SELECT id, sum(size) OVER (ORDER BY id) - size AS before"
                " FROM (SELECT {} AS id, {} AS size FROM {} WHERE ({}) AND {} > %s AND {} <= %s"
                " ORDER BY {} LIMIT %s) candidates) running WHERE before < %s)"
            ).format(id_, store.size(), store.table, condition, id_, id_, id_)
            last_params = [*params, after, through, limit, max_bytes]
        query = sql.SQL("{} WHERE ({}) AND {} > %s AND {} <= {} ORDER BY {} LIMIT %s").format(
            store.select_events(), condition, id_, id_, last, id_
        )
        # binary: the payload's bytes arrive as they are, not hex-encoded
        with _classified(self.target):
            cursor = await self.conn.execute(query, [*params, after, *last_params, limit], binary=True)
            rows = await cursor.fetchall()
        loads = json.loads
        return [
            Event(r[0], r[1], r[2], r[3] or b"", r[4], r[5], (loads(r[6]) or None) if r[6] else None)
            for r in rows
        ]

    async def pages(
        self,
        store: EventStore,
        selector: EventSelector,
        after: int,
        through: int,
        limit: int,
        max_bytes: int | None = None,
    ) -> AsyncIterator[list[Event]]:
        """Every selected event after `after` up to `through`, page by page (keyset, never OFFSET).
        The next page is read while the caller works on this one. With `max_bytes`, a page asks for
        at most twice as many events as the last one held (from FIRST_PAGE up to `limit`): the server
        sizes only those, not `limit` large payloads of which a few fit."""

        def read(after: int, count: int) -> asyncio.Future[list[Event]]:
            return asyncio.ensure_future(self.page(store, selector, after, through, count, max_bytes))

        pending = read(after, limit if max_bytes is None else min(limit, FIRST_PAGE))
        try:
            while events := await pending:
                pending = read(events[-1].id, min(limit, 2 * len(events)))
                yield events
        finally:
            if not pending.done():
                pending.cancel()
            with suppress(asyncio.CancelledError, OperationError):
                await pending
