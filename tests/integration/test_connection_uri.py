"""Passwords with the characters that move a URI's boundaries, against the real PostgreSQL.

Percent-encoded, such a password reaches the server intact through both ways the operator
connects: psycopg (ConnectionTarget.conninfo) and the libpq tools (ConnectionTarget.env).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import psycopg
import pytest
from psycopg import sql

from habitat_operator.engines.postgres.dump import BackupRequest, run_backup, server_version
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.errors import OperationError

pytestmark = pytest.mark.integration

# `/` `@` `#` `?` `%` each broke the URI unencoded; `:` `&` `=` and a space for good measure.
SPECIAL = "Sl/ash@Pw#9?9%x:&= 1"


@pytest.fixture
def special_login(pg_admin_uri: str) -> Iterator[tuple[str, str]]:
    """A login role whose password holds every special character; dropped after the test."""
    role = f"u_{secrets.token_hex(6)}"
    password = f"{SPECIAL}-{secrets.token_hex(4)}"
    with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password))
        )
    yield role, password
    with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def login_uri(database_uri: str, role: str, password: str, *, encode: bool = True) -> str:
    parts = urlsplit(database_uri)
    secret = quote(password, safe="") if encode else password
    return f"postgresql://{role}:{secret}@{parts.hostname}:{parts.port}{parts.path}"


def test_percent_encoded_special_password_connects(
    fresh_database: str, special_login: tuple[str, str], tmp_path: Path
) -> None:
    role, password = special_login
    uri = login_uri(fresh_database, role, password)
    target = ConnectionTarget(uri)
    parts = urlsplit(fresh_database)
    assert target.display == f"{parts.hostname}:{parts.port}{parts.path}"
    assert target.env()["PGPASSWORD"] == password
    for shown in (target.display, repr(target)):
        assert password not in shown and quote(password, safe="") not in shown

    # psycopg, with the connection string ConnectionTarget makes.
    with psycopg.connect(target.conninfo()) as conn:
        row = conn.execute("SELECT current_user").fetchone()
    assert row is not None and row[0] == role
    assert asyncio.run(server_version(target))

    # A libpq tool, with the PG* environment ConnectionTarget makes.
    result = asyncio.run(run_backup(BackupRequest(target=target, destination=tmp_path / "db.dump")))
    assert result.verified
    assert (tmp_path / "db.dump").stat().st_size == result.size_bytes


def test_percent_encoded_special_password_as_query_parameter_connects(
    fresh_database: str, special_login: tuple[str, str]
) -> None:
    role, password = special_login
    parts = urlsplit(fresh_database)
    uri = f"postgresql://{role}@{parts.hostname}:{parts.port}{parts.path}?password={quote(password, safe='')}"
    target = ConnectionTarget(uri)
    with psycopg.connect(target.conninfo()) as conn:
        row = conn.execute("SELECT current_user").fetchone()
    assert row is not None and row[0] == role


def test_the_same_password_unencoded_is_refused_unseen(
    fresh_database: str, special_login: tuple[str, str]
) -> None:
    role, password = special_login
    with pytest.raises(OperationError) as caught:
        ConnectionTarget(login_uri(fresh_database, role, password, encode=False))
    assert caught.value.reason == "InvalidConnectionUri"
    assert "percent-encode" in caught.value.message
    for piece in ("Sl", "ash", "Pw", password.rsplit("-", 1)[1]):
        assert piece not in str(caught.value)
