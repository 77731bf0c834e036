"""What a WalArchive asks a PostgreSQL server about replication: who it is, and its physical slots.

`server_identity` goes over the replication protocol (IDENTIFY_SYSTEM, then SHOW), so it needs
exactly what pg_receivewal needs (a role with REPLICATION and a `replication` line in pg_hba.conf)
and proves it: a refusal is ReplicationRefused. The slot functions are SQL on the target's
database (`pg_replication_slots`, `pg_create_physical_replication_slot`, `pg_drop_replication_slot`).
Slot names are checked against PostgreSQL's own rule before they reach a statement, and statements
take them as parameters.
"""

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from habitat_operator.api.common import Reason
from habitat_operator.api.wal import WalReason
from habitat_operator.engines.postgres.client_tools import classify_failure, connect, meaningful_line
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.engines.threads import in_thread
from habitat_operator.engines.wal.layout import parse_lsn
from habitat_operator.errors import OperationError, PermanentError, RetryableError

NAME_LIMIT = 63  # NAMEDATALEN - 1: PostgreSQL truncates application_name and refuses longer slot names
SLOT_NAME = re.compile(r"^[a-z0-9_]{1,63}$")
_NOT_SLOT_CHARACTERS = re.compile(r"[^a-z0-9_]")
# The server's refusal to replicate to a role (no REPLICATION, no pg_hba.conf line), as psycopg,
# pg_receivewal and pg_basebackup report it.
REPLICATION_REFUSED = re.compile(
    r"must be superuser or replication role|permission denied to start WAL sender"
    r"|must be superuser or have replication role|to use replication slots"
    r"|no pg_hba\.conf entry for replication connection|pg_hba\.conf rejects replication connection",
    re.IGNORECASE,
)
DROP_WAIT_SECONDS = 10.0


@dataclass(frozen=True)
class ServerIdentity:
    system_identifier: str
    server_version: int  # server_version_num, e.g. 150020
    timeline: int
    segment_size: int  # bytes


@dataclass(frozen=True)
class SlotState:
    name: str
    restart_lsn: int | None  # None until the slot has reserved WAL
    active: bool
    retained_bytes: int  # pg_current_wal_lsn() - restart_lsn: WAL the slot holds back on the server
    wal_status: str | None  # reserved, extended, unreserved or lost (its WAL was removed: a gap)


def default_slot_name(namespace: str, name: str) -> str:
    """`habitat_<namespace>_<name>`, lowercased, anything but [a-z0-9_] as `_`, at most 63 bytes."""
    return _NOT_SLOT_CHARACTERS.sub("_", f"habitat_{namespace}_{name}".lower())[:NAME_LIMIT]


def application_name(namespace: str, name: str) -> str:
    """The streaming connection's name, the one a user lists in `synchronous_standby_names`."""
    return f"habitat-walarchive-{namespace}-{name}".encode()[:NAME_LIMIT].decode(errors="ignore")


def check_slot_name(slot: str) -> str:
    if not SLOT_NAME.match(slot):
        raise PermanentError(
            Reason.INVALID_SPEC,
            f"slot name {slot!r} is not valid: 1 to 63 lower-case letters, digits or underscores",
        )
    return slot


def _failure(error: psycopg.Error, target: ConnectionTarget) -> OperationError:
    text = str(error)
    if REPLICATION_REFUSED.search(text):
        return PermanentError(
            WalReason.REPLICATION_REFUSED,
            f"{target.display} refuses replication to this role: {meaningful_line(target.redact(text))}",
        )
    return classify_failure("PostgreSQL", text, target, failed_reason=WalReason.REPLICATION_REFUSED)


def _identify(target: ConnectionTarget) -> ServerIdentity:
    conninfo = psycopg.conninfo.make_conninfo(target.conninfo(), replication="true")
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            row = conn.execute("IDENTIFY_SYSTEM").fetchone()
            version = conn.execute("SHOW server_version_num").fetchone()
            segment = conn.execute("SHOW wal_segment_size").fetchone()
    except psycopg.Error as error:
        raise _failure(error, target) from None
    assert row is not None and version is not None and segment is not None
    return ServerIdentity(
        system_identifier=_text(row[0]),
        server_version=int(_text(version[0])),
        timeline=int(_text(row[1])),
        segment_size=_size(_text(segment[0])),
    )


def _text(value: Any) -> str:
    """A value of a replication command's answer: bytes, since psycopg knows none of its types."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _size(shown: str) -> int:
    """`16MB` (SHOW's unit) or a plain number of bytes."""
    units = {"kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
    for unit, factor in units.items():
        if shown.endswith(unit):
            return int(shown.removesuffix(unit)) * factor
    return int(shown)


async def server_identity(target: ConnectionTarget) -> ServerIdentity:
    """System identifier, version, current timeline and WAL segment size, over a replication connection."""
    return await in_thread(_identify, target)


_CURRENT_LSN = "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END"


async def slot_state(target: ConnectionTarget, slot: str) -> SlotState | None:
    """The physical slot `slot`, or None when the server has no such slot."""
    check_slot_name(slot)
    query = f"""
        SELECT restart_lsn::text, active, wal_status,
               coalesce(pg_wal_lsn_diff({_CURRENT_LSN}, restart_lsn), 0)::bigint, slot_type
        FROM pg_replication_slots WHERE slot_name = %s"""
    async with await connect(target, WalReason.REPLICATION_REFUSED) as conn:
        row = await (await conn.execute(query, (slot,))).fetchone()
    if row is None:
        return None
    restart, active, wal_status, retained, slot_type = row
    if slot_type != "physical":
        raise PermanentError(Reason.INVALID_SPEC, f"slot {slot} on {target.display} is a {slot_type} slot")
    return SlotState(
        slot, parse_lsn(restart) if restart else None, bool(active), max(int(retained), 0), wal_status
    )


async def create_slot(target: ConnectionTarget, slot: str) -> bool:
    """Create the physical slot `slot`, holding WAL from now on; False when it already existed."""
    check_slot_name(slot)
    async with await connect(target, WalReason.REPLICATION_REFUSED) as conn:
        try:
            await conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (slot,))
        except psycopg.errors.DuplicateObject:
            return False
        except psycopg.Error as error:
            raise _failure(error, target) from None
    return True


async def drop_slot(target: ConnectionTarget, slot: str, wait_seconds: float = DROP_WAIT_SECONDS) -> bool:
    """Drop the slot `slot`; False when there was none. A slot still in use (a walsender that has
    not noticed its receiver left) is waited for up to `wait_seconds`, then RetryableError."""
    check_slot_name(slot)
    deadline = time.monotonic() + wait_seconds
    async with await connect(target, WalReason.REPLICATION_REFUSED) as conn:
        while True:
            try:
                await conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                return True
            except psycopg.errors.UndefinedObject:
                return False
            except psycopg.errors.ObjectInUse:
                if time.monotonic() >= deadline:
                    raise RetryableError(
                        Reason.TIMEOUT, f"slot {slot} on {target.display} is still in use"
                    ) from None
                await asyncio.sleep(0.2)
            except psycopg.Error as error:
                raise _failure(error, target) from None


async def current_lsn(target: ConnectionTarget) -> int:
    """Where the server's WAL ends now (on a standby: how far it has received)."""
    async with await connect(target, WalReason.REPLICATION_REFUSED) as conn:
        row = await (await conn.execute(f"SELECT ({_CURRENT_LSN})::text")).fetchone()
    assert row is not None
    return parse_lsn(row[0])
