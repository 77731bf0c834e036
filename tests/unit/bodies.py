"""Objects as `kubectl apply` would send them, and one reconcile step as a handler runs it."""

from __future__ import annotations

import asyncio
from typing import Any

from habitat_operator.api.common import API_VERSION
from habitat_operator.config import OperatorConfig
from habitat_operator.controllers.backup.run import BackupEngines, BackupRun, Dumper
from habitat_operator.controllers.base.lifecycle import RetryLater
from habitat_operator.controllers.base.slots import OperationSlots
from habitat_operator.controllers.restore.engines import RestoreEngines
from habitat_operator.controllers.restore.run import RestoreRun
from tests.unit.fake_engines import FakeLock, FakePostgres, FakeScratch
from tests.unit.fake_kube import FakeKube, JsonDict

NS = "team-a"
DB_SECRET = "app-db"
DB_URI = "postgresql://backup:hunter2@db.example:5432/app"
DB_DISPLAY = "db.example:5432/app"


def backup_body(name: str = "nightly", namespace: str = NS, **spec: Any) -> JsonDict:
    return {
        "apiVersion": API_VERSION,
        "kind": "Backup",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "database": {"secretRef": {"name": DB_SECRET}},
            "storage": {"filesystem": {"path": "app"}},
            **spec,
        },
    }


def restore_body(name: str = "restore", namespace: str = NS, **spec: Any) -> JsonDict:
    return {
        "apiVersion": API_VERSION,
        "kind": "Restore",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "source": {"backupRef": {"name": "nightly"}},
            "target": {"database": {"secretRef": {"name": DB_SECRET}}},
            **spec,
        },
    }


def reconcile_backup(
    kube: FakeKube, config: OperatorConfig, dump: Dumper, name: str, namespace: str = NS
) -> RetryLater | None:
    """One step with the body as stored now, as Kopf hands it to the handler; `dump` stands in
    for pg_dump."""
    run = BackupRun(kube.object("backups", namespace, name), config, OperationSlots(), BackupEngines(dump))
    return asyncio.run(run.reconcile())


def reconcile_restore(
    kube: FakeKube,
    config: OperatorConfig,
    postgres: FakePostgres,
    lock: FakeLock,
    name: str,
    namespace: str = NS,
) -> RetryLater | None:
    """One step of the Restore `name`; `postgres` and `lock` stand in for PostgreSQL and the database lock."""
    engines = RestoreEngines(restore=postgres, scratch=FakeScratch(postgres), lock=lock)
    run = RestoreRun(kube.object("restores", namespace, name), config, OperationSlots(), engines)
    return asyncio.run(run.reconcile())


def conditions(status: JsonDict) -> dict[str, tuple[str, str]]:
    """Each condition's (status, reason) by type."""
    return {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions", [])}


def condition_messages(status: JsonDict) -> set[str]:
    return {c["message"] for c in status.get("conditions", [])}
