"""Drill scratch databases: marked with whose they are, so that orphans can be found and dropped.

A drill restores into a database of its own on the target's server and drops it at the end. A
drill cut off for good (its Restore deleted while the operator was down) would leave it behind,
hundreds of megabytes each; the database's comment names its owner (namespace and uid) so a later
sweep can tell which scratch databases nobody owns any more.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from habitat_operator.api.common import Reason
from habitat_operator.engines.postgres.client_tools import classify_failure
from habitat_operator.engines.postgres.restore import MAINTENANCE_DATABASE
from habitat_operator.engines.postgres.uri import ConnectionTarget

_MARK = "habitat-operator drill"

_LIST = r"""
SELECT d.datname, shobj_description(d.oid, 'pg_database')
  FROM pg_database d
 WHERE d.datname LIKE 'habitat\_drill\_%'
"""


@dataclass(frozen=True)
class ScratchDatabase:
    name: str
    namespace: str
    uid: str


def owner_comment(namespace: str, uid: str) -> str:
    return f"{_MARK} {namespace} {uid}"


def parse_owner(name: str, comment: str | None) -> ScratchDatabase | None:
    """The owner a scratch database's comment names; None for anything this operator did not mark."""
    parts = (comment or "").removeprefix(_MARK).split()
    if not (comment or "").startswith(_MARK) or len(parts) != 2:
        return None
    return ScratchDatabase(name, parts[0], parts[1])


async def mark_owner(target: ConnectionTarget, namespace: str, uid: str) -> None:
    """Records the owner on `target`'s (scratch) database."""
    statement = sql.SQL("COMMENT ON DATABASE {} IS {}").format(
        sql.Identifier(target.dbname), sql.Literal(owner_comment(namespace, uid))
    )
    await _execute(target.with_database(MAINTENANCE_DATABASE), statement)


async def list_scratch_databases(target: ConnectionTarget) -> list[ScratchDatabase]:
    """The marked scratch databases on `target`'s server."""
    rows = await _execute(target.with_database(MAINTENANCE_DATABASE), _LIST)
    return [found for name, comment in rows if (found := parse_owner(str(name), comment))]


async def _execute(target: ConnectionTarget, statement: str | sql.Composed) -> list[tuple[str, str | None]]:
    try:
        async with await psycopg.AsyncConnection.connect(target.conninfo(), autocommit=True) as conn:
            cursor = await conn.execute(statement)
            return list(await cursor.fetchall()) if cursor.description else []
    except psycopg.Error as error:
        raise classify_failure(
            "PostgreSQL", str(error), target, failed_reason=Reason.DATABASE_UNREACHABLE
        ) from None
