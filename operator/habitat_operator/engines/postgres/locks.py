"""Database locks that hold across operator processes: PostgreSQL advisory locks.

A lock is taken on the target server's maintenance database, keyed by the target database's name,
in a session of its own that is held for the length of the operation. Two operator processes (or a
Restore and a Migration) therefore never write one database at once, and a killed operator's lock
goes with its session. The session's application_name names the holder, so a waiter can say who.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import psycopg

from habitat_operator.api.common import Reason
from habitat_operator.engines.postgres.client_tools import classify_failure
from habitat_operator.engines.postgres.restore import MAINTENANCE_DATABASE
from habitat_operator.engines.postgres.uri import ConnectionTarget

# The first half of every key: keeps our locks apart from the application's own advisory locks.
LOCK_CLASS = 0x48616269  # "Habi"
HOLDER_PREFIX = "habitat-operator lock "
_APPLICATION_NAME_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1; longer names are cut by the server

_TRY_LOCK = "SELECT pg_try_advisory_lock(%s, hashtext(%s))"
_HOLDER = """
SELECT a.application_name
  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted
   AND l.classid = %s::oid AND l.objid = hashtext(%s)::oid AND l.objsubid = 2
"""


@dataclass
class DatabaseLock:
    """The outcome of trying to lock a database: held by us, or by `holder`."""

    acquired: bool
    holder: str | None = None

    def waiting_message(self, display: str) -> str:
        """What a Restore or a Migration that did not get the lock says in its status."""
        return f"{self.holder} is writing to {display}; waiting for it to finish"


class Locker(Protocol):
    """`database_lock`, or a stand-in for it: what a controller is given to lock a database."""

    def __call__(
        self, target: ConnectionTarget, holder: str
    ) -> AbstractAsyncContextManager[DatabaseLock]: ...


def holder_name(holder: str) -> str:
    return (HOLDER_PREFIX + holder).encode()[:_APPLICATION_NAME_BYTES].decode(errors="ignore")


@asynccontextmanager
async def database_lock(target: ConnectionTarget, holder: str) -> AsyncIterator[DatabaseLock]:
    """Tries once to lock `target`'s database for `holder` (e.g. "restore ns/name"); never blocks.

    Inside the block, `acquired` says whether the lock is ours; it is released when the block ends
    (or with the session, if the process dies). Raises like classify_failure when the server
    cannot be reached.
    """
    maintenance = target.with_database(MAINTENANCE_DATABASE)
    conninfo = psycopg.conninfo.make_conninfo(maintenance.conninfo(), application_name=holder_name(holder))
    try:
        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    except psycopg.Error as error:
        raise classify_failure(
            "PostgreSQL", str(error), target, failed_reason=Reason.DATABASE_UNREACHABLE
        ) from None
    async with conn:
        key = (LOCK_CLASS, target.dbname)
        row = await (await conn.execute(_TRY_LOCK, key)).fetchone()
        if row is not None and row[0]:
            yield DatabaseLock(acquired=True)
            return  # closing the session releases the lock
        found = await (await conn.execute(_HOLDER, key)).fetchone()
        name = str(found[0]) if found and found[0] else ""
        yield DatabaseLock(acquired=False, holder=name.removeprefix(HOLDER_PREFIX) or "another session")
