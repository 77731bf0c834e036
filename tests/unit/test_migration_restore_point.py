"""A Migration names a restore point before it applies anything, so that a point-in-time Restore
(target.restorePoint) can undo the run's data damage; a server that refuses one only warns."""

from __future__ import annotations

import asyncio
from typing import Any

from habitat_operator.api.common import API_VERSION
from habitat_operator.api.migration import MigrationReason
from habitat_operator.config import OperatorConfig
from habitat_operator.controllers.base.slots import OperationSlots
from habitat_operator.controllers.migration.engines import MigrationEngines
from habitat_operator.controllers.migration.run import MigrationRun, restore_point_name
from habitat_operator.errors import PermanentError
from tests.unit.bodies import DB_SECRET, DB_URI, NS
from tests.unit.fake_engines import FakeLock, FakeMigrationDatabase
from tests.unit.fake_kube import FakeKube

INLINE = [
    {"version": 1, "name": "users", "up": "CREATE TABLE users (id int)"},
    {"version": 2, "name": "orders", "up": "CREATE TABLE orders (id int)"},
]


def _migrate(kube: FakeKube, config: OperatorConfig, database: FakeMigrationDatabase) -> dict[str, Any]:
    kube.put_secret(NS, DB_SECRET, {"uri": DB_URI})
    body = {
        "apiVersion": API_VERSION,
        "kind": "Migration",
        "metadata": {"name": "schema", "namespace": NS},
        "spec": {"database": {"secretRef": {"name": DB_SECRET}}, "source": {"inline": INLINE}},
    }
    kube.add("migrations", body)
    engines = MigrationEngines(connect=database.connect, lock=FakeLock(), lint=_no_findings)
    run = MigrationRun(kube.object("migrations", NS, "schema"), config, OperationSlots(), engines)
    asyncio.run(run.reconcile())
    return kube.status("migrations", NS, "schema")


async def _no_findings(scripts: Any, skip: Any = ()) -> list[Any]:
    return []


def test_a_restore_point_is_made_before_the_first_migration_and_named_in_status(
    fake_kube: FakeKube, config: OperatorConfig
) -> None:
    database = FakeMigrationDatabase()
    status = _migrate(fake_kube, config, database)
    assert status["phase"] == "Ready"
    assert status["restorePoint"] == "habitat-schema-0-to-2"
    assert database.log[:2] == ["restore point habitat-schema-0-to-2", "apply 1"]


def test_a_refused_restore_point_warns_and_the_migration_goes_on(
    fake_kube: FakeKube, config: OperatorConfig
) -> None:
    database = FakeMigrationDatabase()
    database.restore_point_error = PermanentError(
        MigrationReason.RESTORE_POINT_FAILED, "permission denied for function pg_create_restore_point"
    )
    status = _migrate(fake_kube, config, database)
    assert status["phase"] == "Ready" and "restorePoint" not in status
    assert MigrationReason.RESTORE_POINT_FAILED in fake_kube.reasons("schema")


def test_a_long_name_fits_postgresqls_63_bytes() -> None:
    name = restore_point_name("m" * 253, 20261207120000, 20261207130000)
    assert len(name.encode()) <= 63 and name.startswith("habitat-mmm")
    assert name != restore_point_name("m" * 252 + "n", 20261207120000, 20261207130000)
