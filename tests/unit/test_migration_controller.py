"""MigrationRun against the fake apiserver and a fake database: status, Events, retries, waits and
failures of one Migration. The run is given its engines (MigrationEngines), nothing is patched."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest
from kopf._cogs.aiokits.aioenums import FlagSetter
from prometheus_client import REGISTRY

from habitat_operator.api.common import API_VERSION, Reason
from habitat_operator.config import OperatorConfig
from habitat_operator.controllers.base.convergent import STOPPED_SECONDS
from habitat_operator.controllers.base.core import Recheck, RetryLater
from habitat_operator.controllers.base.slots import OperationSlots
from habitat_operator.controllers.migration.engines import MigrationEngines
from habitat_operator.controllers.migration.run import IDLE_SECONDS, MigrationRun
from habitat_operator.engines.postgres.migrations import MigrationFailed, Script
from habitat_operator.errors import RetryableError
from habitat_operator.handlers.driver import drive
from tests.unit.bodies import DB_DISPLAY, DB_SECRET, DB_URI, NS, conditions
from tests.unit.fake_engines import FakeLock, FakeMigrationDatabase
from tests.unit.fake_kube import FakeKube, JsonDict

MIGRATIONS = "migrations"
INLINE = [
    {"version": 1, "name": "users", "up": "CREATE TABLE users (id int)", "down": "DROP TABLE users"},
    {"version": 2, "name": "orders", "up": "CREATE TABLE orders (id int)", "down": "DROP TABLE orders"},
]


def migration_body(name: str = "schema", **spec: Any) -> JsonDict:
    return {
        "apiVersion": API_VERSION,
        "kind": "Migration",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"database": {"secretRef": {"name": DB_SECRET}}, "source": {"inline": INLINE}, **spec},
    }


class Harness:
    def __init__(self, kube: FakeKube, config: OperatorConfig) -> None:
        self.kube, self.config = kube, config
        self.database = FakeMigrationDatabase()
        self.lock = FakeLock()
        self.findings: list[Any] = []
        self.engines = MigrationEngines(connect=self.database.connect, lock=self.lock, lint=self._lint)

    async def _lint(self, scripts: Any, skip: Any = ()) -> list[Any]:
        return list(self.findings)

    def run(self, name: str = "schema") -> MigrationRun:
        return MigrationRun(
            self.kube.object(MIGRATIONS, NS, name), self.config, OperationSlots(), self.engines
        )

    def reconcile(self, name: str = "schema") -> RetryLater | None:
        return asyncio.run(self.run(name).reconcile())

    def status(self, name: str = "schema") -> JsonDict:
        return self.kube.status(MIGRATIONS, NS, name)


@pytest.fixture
def harness(fake_kube: FakeKube, config: OperatorConfig) -> Harness:
    fake_kube.put_secret(NS, DB_SECRET, {"uri": DB_URI})
    return Harness(fake_kube, config)


def runs_counted(result: str) -> float:
    labels = {"namespace": NS, "migration": "schema", "result": result}
    return REGISTRY.get_sample_value("habitat_migration_runs_total", labels) or 0.0


def test_pending_versions_are_applied_and_the_migration_is_ready(harness: Harness) -> None:
    harness.kube.add(MIGRATIONS, migration_body())

    assert harness.reconcile() == Recheck(IDLE_SECONDS)

    status = harness.status()
    assert status["phase"] == "Ready"
    assert conditions(status)["Ready"] == ("True", "AtTarget")
    assert (status["currentVersion"], status["targetVersion"], status["pendingCount"]) == (2, 2, 0)
    assert status["database"] == DB_DISPLAY
    assert [a["version"] for a in status["applied"]] == [1, 2]
    assert harness.database.applied == [1, 2]
    assert harness.lock.held == set()
    assert harness.kube.reasons("schema") == ["Started", "Succeeded"]
    assert "hunter2" not in str(harness.kube.objects) + str(harness.kube.events)

    assert harness.reconcile() == Recheck(IDLE_SECONDS)  # converged: nothing runs, nothing is written
    assert harness.database.applied == [1, 2]
    assert harness.kube.reasons("schema") == ["Started", "Succeeded"]


def test_an_invalid_spec_fails_naming_the_field_once(harness: Harness) -> None:
    harness.kube.add(MIGRATIONS, migration_body(source={}), validate=False)

    assert harness.reconcile() == Recheck(STOPPED_SECONDS)

    status = harness.status()
    assert status["phase"] == "Failed"
    assert conditions(status)["Stalled"] == ("True", "InvalidSpec")
    assert status["message"].startswith("spec.source")
    assert harness.reconcile() == Recheck(STOPPED_SECONDS)
    assert harness.kube.reasons("schema") == ["InvalidSpec"]  # one Event, not one per look
    assert harness.database.sessions == []


def test_a_lock_timeout_is_retried_then_fails_and_waits_for_a_change(harness: Harness) -> None:
    harness.kube.add(MIGRATIONS, migration_body(retry={"limit": 1, "backoff": "1s"}))
    timeout = RetryableError(Reason.LOCK_TIMEOUT, "version 1 (users) up hit lock_timeout")
    harness.database.apply_errors = [timeout, timeout]
    failures = runs_counted("failure")

    assert harness.reconcile() == RetryLater(1.0)
    status = harness.status()
    assert (status["phase"], status["attempts"]) == ("Pending", 1)
    assert conditions(status)["Reconciling"] == ("True", "LockTimeout")
    assert "retry 1/1 in 1s" in status["message"]
    assert runs_counted("failure") == failures  # a retry is not a failed run

    assert harness.reconcile() == Recheck(STOPPED_SECONDS)
    status = harness.status()
    assert status["phase"] == "Failed"
    assert conditions(status)["Stalled"] == ("True", "LockTimeout")
    assert status["message"].endswith("; no retries left")
    assert "attempts" not in status
    assert runs_counted("failure") == failures + 1

    patches = len(harness.kube.patches)
    assert harness.reconcile() == Recheck(STOPPED_SECONDS)  # the same spec and source: not again
    assert len(harness.kube.patches) == patches
    assert harness.database.applied == []

    harness.kube.edit_spec(MIGRATIONS, NS, "schema", retry={"limit": 2, "backoff": "1s"})
    assert harness.reconcile() == Recheck(IDLE_SECONDS)  # a new spec runs again
    assert harness.status()["phase"] == "Ready"


def test_a_failed_migration_outside_a_transaction_is_dirty(harness: Harness) -> None:
    harness.kube.add(MIGRATIONS, migration_body())
    script = Script(2, "orders", "CREATE INDEX CONCURRENTLY ...")
    harness.database.apply_errors = [
        None,
        MigrationFailed(script, "up", "failed outside a transaction at line 1: boom", dirty=True),
    ]

    assert harness.reconcile() == Recheck(STOPPED_SECONDS)

    status = harness.status()
    assert status["phase"] == "Failed"
    assert conditions(status)["Stalled"] == ("True", "Dirty")
    assert status["dirtyVersion"] == 2
    assert status["currentVersion"] == 1  # version 1 went in before 2 failed
    assert "spec.resolveDirty" in status["message"]
    assert harness.kube.reasons("schema") == ["Started", "Dirty"]


def test_a_missing_secret_is_waited_for(harness: Harness) -> None:
    harness.kube.add(MIGRATIONS, migration_body(database={"secretRef": {"name": "later"}}))

    assert harness.reconcile() == RetryLater(30.0)

    status = harness.status()
    assert status["phase"] == "Pending"
    assert conditions(status)["Stalled"] == ("True", "SecretNotFound")
    assert harness.database.sessions == []


def test_a_secret_the_operator_may_not_read_says_so(harness: Harness) -> None:
    harness.kube.add(MIGRATIONS, migration_body())
    harness.kube.forbid_secret(NS, DB_SECRET)

    assert harness.reconcile() == RetryLater(30.0)

    stalled = conditions(harness.status())["Stalled"]
    assert stalled == ("True", "SecretForbidden")
    assert "not allowed to read Secret" in harness.status()["conditions"][0]["message"]


def test_a_held_database_lock_is_waited_for(harness: Harness) -> None:
    harness.kube.add(MIGRATIONS, migration_body())
    harness.lock.holder = "habitat-operator lock restore team-a/r"

    assert harness.reconcile() == RetryLater(2.0)

    status = harness.status()
    assert (status["phase"], status["waitingFor"]) == ("Pending", "habitat-operator lock restore team-a/r")
    assert conditions(status)["Reconciling"] == ("True", "WaitingForLock")
    assert harness.database.applied == []

    harness.lock.holder = None
    assert harness.reconcile() == Recheck(IDLE_SECONDS)
    assert "waitingFor" not in harness.status()


def test_backup_before_waits_for_its_backup_and_a_failed_one_stops_it(harness: Harness) -> None:
    storage = {"filesystem": {"path": "before"}}
    harness.kube.add(MIGRATIONS, migration_body(backupBefore={"storage": storage}))

    assert harness.reconcile() == RetryLater(2.0)
    [backup] = [n for n in harness.kube.names("backups", NS)]
    assert harness.status()["backup"] == backup
    assert conditions(harness.status())["Reconciling"] == ("True", "WaitingForBackup")
    assert harness.database.applied == []

    harness.kube.set_status("backups", NS, backup, {"phase": "Failed", "message": "disk full"})
    assert harness.reconcile() == Recheck(STOPPED_SECONDS)
    status = harness.status()
    assert conditions(status)["Stalled"] == ("True", "BackupFailed")
    assert status["message"] == f"Backup {backup} failed (disk full); nothing was applied"


def test_backup_before_that_succeeded_lets_the_migration_run(harness: Harness) -> None:
    harness.kube.add(MIGRATIONS, migration_body(backupBefore={"storage": {"filesystem": {"path": "b"}}}))
    assert harness.reconcile() == RetryLater(2.0)
    [backup] = harness.kube.names("backups", NS)
    harness.kube.set_status("backups", NS, backup, {"phase": "Succeeded"})

    assert harness.reconcile() == Recheck(IDLE_SECONDS)
    assert harness.database.applied == [1, 2]
    assert harness.status()["backup"] == backup


def test_deleting_the_migration_mid_step_cancels_the_migration_and_frees_the_lock(harness: Harness) -> None:
    harness.kube.add(MIGRATIONS, migration_body())
    harness.database.gate = asyncio.Event()  # never set: the first migration runs until cancelled
    stopper: FlagSetter[Any] = FlagSetter()
    raw = harness.kube.object(MIGRATIONS, NS, "schema")

    async def scenario() -> None:
        daemon = asyncio.create_task(
            drive(
                "Migration",
                kopf.Body(raw),  # type: ignore[arg-type]
                stopper.async_waiter,
                lambda body: MigrationRun(body, harness.config, OperationSlots(), harness.engines),
            )
        )
        await harness.database.started.wait()
        assert harness.status()["phase"] == "Running"
        stopper.set(reason=kopf.DaemonStoppingReason.RESOURCE_DELETED)
        async with asyncio.timeout(2):
            await daemon

    asyncio.run(scenario())
    assert harness.database.cancelled == 1
    assert harness.database.applied == []
    assert harness.lock.held == set()
