"""The replay's gap-safe bound against a real PostgreSQL: which open transactions it waits for."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from habitat_operator.api.replayjob import ColumnMap, EventSelector
from habitat_operator.engines.postgres.events import Bound, EventReader, EventStore
from habitat_operator.engines.postgres.uri import ConnectionTarget
from sample_database import create_events
from tests.conftest import database_uri


def bound(uri: str) -> Bound:
    async def read() -> Bound:
        async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
            reader = EventReader(conn, ConnectionTarget(uri))
            selector = EventSelector.model_validate({"from": "2000-01-01T00:00:00Z"})
            return await reader.bound(EventStore("events", ColumnMap()), selector)

    return asyncio.run(read())


@pytest.fixture
def store(fresh_database: str) -> Iterator[str]:
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        create_events(conn, 10)
        conn.execute("CREATE TABLE audit (id int)")
    yield fresh_database


def open_transaction(uri: str, *statements: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(uri)
    for statement in statements:
        conn.execute(statement)
    conn.execute("SELECT pg_current_xact_id()")  # an id, as a writing transaction has
    return conn


def xid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
    assert row is not None
    return int(row[0])


def test_the_bound_waits_for_a_writer_of_its_database_only(store: str, pg_admin_uri: str) -> None:
    writer = open_transaction(
        store, "INSERT INTO events (event_type, occurred_at, payload) VALUES ('late', now(), '{}')"
    )
    locker = open_transaction(store, "LOCK TABLE audit IN ACCESS EXCLUSIVE MODE")
    elsewhere = open_transaction(database_uri(pg_admin_uri, "postgres"), "CREATE TEMP TABLE t (id int)")
    try:
        waited = bound(store).open_transactions
        assert xid(writer) in waited  # it may still commit an id below the bound
        assert xid(locker) not in waited  # it only locked a table: no event can come of it
        assert xid(elsewhere) not in waited  # another database cannot hold this table's rows
    finally:
        for conn in (writer, locker, elsewhere):
            conn.rollback()
            conn.close()
