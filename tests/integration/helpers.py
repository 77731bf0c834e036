"""What the integration tests of the backup engine share: a seeded database (schemas, an identity
column, sequences), its snapshot, more empty databases, and a free port. Test modules import from here,
never from one another (tests/unit/test_test_imports.py checks)."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from habitat_operator.engines.artifacts.s3 import Bucket, S3Location
from tests.harness import Stack

SEED = """
CREATE SCHEMA app;
CREATE SCHEMA audit;
CREATE TABLE app.customers (id serial PRIMARY KEY, name text NOT NULL, tier int NOT NULL);
CREATE TABLE app.orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id int NOT NULL REFERENCES app.customers,
    amount numeric(10, 2) NOT NULL
);
CREATE SEQUENCE app.invoice_numbers START 1000;
CREATE TABLE audit.events (id serial PRIMARY KEY, payload jsonb NOT NULL);
INSERT INTO app.customers (name, tier) SELECT 'customer ' || i, i % 3 FROM generate_series(1, 50) i;
INSERT INTO app.orders (customer_id, amount) SELECT 1 + i % 50, i * 1.25 FROM generate_series(1, 200) i;
SELECT nextval('app.invoice_numbers') FROM generate_series(1, 7);
INSERT INTO audit.events (payload) SELECT jsonb_build_object('n', i) FROM generate_series(1, 30) i;
"""
SEQUENCES = ("app.customers_id_seq", "app.orders_id_seq", "app.invoice_numbers", "audit.events_id_seq")
TABLES = ("app.customers", "app.orders", "audit.events")


def database_uri(admin_uri: str, name: str) -> str:
    parts = urlsplit(admin_uri)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


@pytest.fixture
def new_database(pg_admin_uri: str) -> Iterator[Callable[[], str]]:
    """Makes more empty databases (restore targets), dropped after the test."""
    names: list[str] = []

    def make() -> str:
        name = f"t_{secrets.token_hex(6)}"
        with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        names.append(name)
        return database_uri(pg_admin_uri, name)

    yield make
    with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def seeded_database(fresh_database: str) -> str:
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(SEED)
    return fresh_database


def snapshot(uri: str) -> dict[str, object]:
    """Every row of the seeded tables and every sequence position."""
    with psycopg.connect(uri) as conn:
        state: dict[str, object] = {}
        for table in TABLES:
            query = sql.SQL("SELECT * FROM {} ORDER BY 1").format(sql.Identifier(*table.split(".")))
            state[table] = conn.execute(query).fetchall()
        for sequence in SEQUENCES:
            query = sql.SQL("SELECT last_value, is_called FROM {}").format(
                sql.Identifier(*sequence.split("."))
            )
            state[sequence] = conn.execute(query).fetchone()
        return state


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # free once closed: nothing listens there


def fresh_location(stack: Stack, prefix_head: str = "it") -> S3Location:
    """A fresh prefix in the stack's test bucket."""
    return S3Location(
        bucket=stack.s3_bucket,
        prefix=f"{prefix_head}-{secrets.token_hex(4)}",
        endpoint=stack.s3_endpoint,
        force_path_style=True,
        access_key_id=stack.s3_access_key,
        secret_access_key=stack.s3_secret_key,
    )


@pytest.fixture
def location(stack: Stack) -> S3Location:
    """A fresh prefix in the stack's test bucket."""
    return fresh_location(stack)


@pytest.fixture
def bucket(location: S3Location) -> Iterator[Bucket]:
    with Bucket(location) as opened:
        yield opened
