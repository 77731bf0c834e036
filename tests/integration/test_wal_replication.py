"""Replication probes and physical slots against the stack's PostgreSQL, as a role with REPLICATION
(not a superuser), the way a WalArchive reaches a server it does not own."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from habitat_operator.api.common import Reason
from habitat_operator.api.wal import WalReason
from habitat_operator.engines.postgres import replication
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.engines.wal.layout import parse_lsn
from habitat_operator.errors import OperationError
from tests.integration.wal_helpers import make_wal, plain_role_uri, replication_uri, slot_name

pytestmark = pytest.mark.integration
__all__ = ["plain_role_uri", "replication_uri"]  # fixtures, imported to be used here


def test_server_identity_over_the_replication_protocol(replication_uri: str, pg_admin_uri: str) -> None:
    identity = asyncio.run(replication.server_identity(ConnectionTarget(replication_uri)))

    with psycopg.connect(pg_admin_uri) as conn:
        row = conn.execute(
            "SELECT system_identifier::text, current_setting('server_version_num')::int,"
            " timeline_id FROM pg_control_system(), pg_control_checkpoint()"
        ).fetchone()
    assert row is not None
    assert (identity.system_identifier, identity.server_version, identity.timeline) == row
    assert identity.segment_size == 16 << 20


def test_a_role_without_replication_is_refused_in_one_line(plain_role_uri: str) -> None:
    target = ConnectionTarget(plain_role_uri)
    with pytest.raises(OperationError) as caught:
        asyncio.run(replication.server_identity(target))

    assert caught.value.reason == WalReason.REPLICATION_REFUSED
    assert "replication" in caught.value.message
    assert plain_role_uri.split(":")[2].split("@")[0] not in caught.value.message  # the password


def test_slot_create_state_retention_and_drop(replication_uri: str, pg_admin_uri: str) -> None:
    target, slot = ConnectionTarget(replication_uri), slot_name()

    async def scenario() -> None:
        assert await replication.slot_state(target, slot) is None
        assert await replication.create_slot(target, slot) is True
        assert await replication.create_slot(target, slot) is False  # already there: kept as is
        created = await replication.slot_state(target, slot)
        assert created is not None and created.restart_lsn is not None  # holds WAL from creation
        assert not created.active and created.wal_status == "reserved"

        switched_at = parse_lsn(await asyncio.to_thread(make_wal, pg_admin_uri))
        held = await replication.slot_state(target, slot)
        assert held is not None and held.restart_lsn == created.restart_lsn
        now = await replication.current_lsn(target)
        assert now >= switched_at
        assert held.retained_bytes >= switched_at - created.restart_lsn > 0

        assert await replication.drop_slot(target, slot) is True
        assert await replication.drop_slot(target, slot) is False
        assert await replication.slot_state(target, slot) is None

    asyncio.run(scenario())


def test_slot_names_are_checked_before_any_statement(replication_uri: str) -> None:
    with pytest.raises(OperationError) as caught:
        asyncio.run(replication.create_slot(ConnectionTarget(replication_uri), "x'); DROP TABLE t; --"))
    assert caught.value.reason == Reason.INVALID_SPEC
