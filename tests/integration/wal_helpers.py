"""What the integration tests of WAL streaming share: a role with REPLICATION on the stack's
PostgreSQL, a fresh prefix of the stack's bucket as an archive store, and WAL made on demand."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import replace
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from habitat_operator.engines.artifacts.s3 import Bucket, S3Location
from habitat_operator.engines.wal.fetch import FetchSource
from habitat_operator.engines.wal.layout import ArchiveLayout
from habitat_operator.engines.wal.store import BucketStore
from tests.harness import Stack
from tests.integration.helpers import fresh_location


def role_uri(admin_uri: str, role: str, password: str) -> str:
    parts = urlsplit(admin_uri)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{role}:{password}@{host}", parts.path, parts.query, ""))


def _role(admin_uri: str, *, replication: bool) -> Iterator[str]:
    role, password = f"t_repl_{secrets.token_hex(4)}", secrets.token_hex(12)
    options = sql.SQL("LOGIN REPLICATION" if replication else "LOGIN")
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} {} PASSWORD {}").format(
                sql.Identifier(role), options, sql.Literal(password)
            )
        )
    yield role_uri(admin_uri, role, password)
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        for (slot,) in conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 't\\_slot\\_%'"
        ).fetchall():
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
def replication_uri(pg_admin_uri: str) -> Iterator[str]:
    """URI of a fresh role with LOGIN REPLICATION (no superuser), dropped after the test with the
    test slots (`t_slot_*`) left behind."""
    yield from _role(pg_admin_uri, replication=True)


@pytest.fixture
def plain_role_uri(pg_admin_uri: str) -> Iterator[str]:
    """URI of a fresh role with LOGIN only."""
    yield from _role(pg_admin_uri, replication=False)


def slot_name() -> str:
    return f"t_slot_{secrets.token_hex(4)}"


def make_wal(admin_uri: str, rows: int = 1000) -> str:
    """Write `rows` rows, commit, and switch to a new WAL segment; the LSN of the switch."""
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        table = f"t_wal_{secrets.token_hex(4)}"
        conn.execute(sql.SQL("CREATE TABLE {} (n int, pad text)").format(sql.Identifier(table)))
        conn.execute(
            sql.SQL("INSERT INTO {} SELECT i, repeat('x', 200) FROM generate_series(1, %s) i").format(
                sql.Identifier(table)
            ),
            (rows,),
        )
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
        row = conn.execute("SELECT pg_switch_wal()::text").fetchone()
    assert row is not None
    return str(row[0])


NAMESPACE = "team-a"
ARCHIVE = ArchiveLayout("ledger")


@pytest.fixture
def archive_location(stack: Stack) -> S3Location:
    """A fresh prefix of the stack's bucket."""
    return fresh_location(stack, "it-wal")


@pytest.fixture
def archive_store(archive_location: S3Location) -> Iterator[BucketStore]:
    """A store rooted at NAMESPACE's part of `archive_location`, as a WalArchive's."""
    with Bucket(archive_location) as bucket:
        yield BucketStore(bucket, archive_location.key(NAMESPACE))


def fetch_source(location: S3Location, key: bytes | None) -> FetchSource:
    """What `wal fetch` needs to read ARCHIVE in `archive_store`."""
    base = location.key(NAMESPACE)
    return FetchSource(ARCHIVE.archive, location=replace(location, prefix=""), base=base, encryption_key=key)
