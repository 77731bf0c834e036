"""What Flux sees: kstatus (sigs.k8s.io/cli-utils, built beside the control plane) computed from
live objects of every kind, in the states the operator really puts them in."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from habitat_operator.api import ALL_KINDS
from habitat_operator.engines.postgres.locks import LOCK_CLASS, holder_name
from sample_database import create_events
from tests.conftest import database_uri
from tests.e2e.conftest import OperatorProcess
from tests.e2e.helpers import (
    backup,
    deployment,
    drill,
    inline,
    migration,
    policy,
    replayjob,
    seed,
    wait_phase,
    walarchive,
)
from tests.harness import Kubectl, Stack

pytestmark = pytest.mark.e2e

# (kind, name) -> the kstatus it must reach
EXPECTED = {
    ("Backup", "done"): "Current",
    ("Backup", "dumping"): "InProgress",  # pg_dump waits for a table lock the test holds
    ("Backup", "no-secret"): "Failed",
    ("Restore", "drill"): "Current",
    ("Restore", "after-dumping"): "InProgress",  # its Backup is still running
    ("Restore", "no-backup"): "Failed",
    ("Migration", "applied"): "Current",
    ("Migration", "locked"): "InProgress",  # another holder has the database's lock
    ("Migration", "broken"): "Failed",
    ("ReplayJob", "replayed"): "Current",
    ("ReplayJob", "slow"): "InProgress",  # one event a second, for a minute
    ("ReplayJob", "too-many"): "Failed",  # more events than maxEvents
    ("ScalePolicy", "scaling"): "Current",
    ("ScalePolicy", "no-target"): "Failed",
    ("WalArchive", "no-secret"): "Failed",  # a missing Secret: Stalled
}


def kstatus(stack: Stack, kubectl: Kubectl) -> dict[tuple[str, str], dict[str, str]]:
    plurals = ",".join(kind.plural for kind in ALL_KINDS)
    listing = kubectl.run("get", plurals, "-o", "json").stdout
    binary = Path(stack.kubectl_path).with_name("kstatus")
    out = subprocess.run([str(binary)], input=listing, capture_output=True, text=True, check=True).stdout
    results = [json.loads(line) for line in out.splitlines()]
    return {(r["kind"], r["name"]): r for r in results}


@pytest.fixture
def spare_databases(pg_admin_uri: str) -> Iterator[tuple[str, str]]:
    """One database for Migrations that run, one whose lock the test holds."""
    names = [f"gitops_{secrets.token_hex(4)}" for _ in range(2)]
    with psycopg.connect(pg_admin_uri, autocommit=True) as admin:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')
    yield database_uri(pg_admin_uri, names[0]), database_uri(pg_admin_uri, names[1])
    with psycopg.connect(pg_admin_uri, autocommit=True) as admin:
        for name in names:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_kstatus_of_every_kind_in_each_state(
    stack: Stack,
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    db_secret: str,
    fresh_database: str,
    spare_databases: tuple[str, str],
    pg_admin_uri: str,
    amqp_uri: str,
    fresh_queue: str,
) -> None:
    assert {kind for kind, _ in EXPECTED} == {info.kind for info in ALL_KINDS}
    seed(fresh_database, rows=100)
    with psycopg.connect(fresh_database) as conn:
        create_events(conn, 60, table="ledger")
    kubectl.run("create", "secret", "generic", "events-db", f"--from-literal=uri={fresh_database}")
    kubectl.run("create", "secret", "generic", "broker", f"--from-literal=uri={amqp_uri}")
    migrations_db, locked_db = spare_databases
    kubectl.run("create", "secret", "generic", "migrations-db", f"--from-literal=uri={migrations_db}")
    kubectl.run("create", "secret", "generic", "locked-db", f"--from-literal=uri={locked_db}")
    # The database lock lives in the server's maintenance database, keyed by the target's name.
    lock_holder = psycopg.connect(pg_admin_uri, autocommit=True, application_name=holder_name("restore x/y"))
    table_lock = psycopg.connect(fresh_database)
    try:
        kubectl.apply(backup("done"))
        wait_phase(kubectl, "backup", "done", {"Succeeded"}, operator_alive)
        locked_name = locked_db.rsplit("/", 1)[1]
        lock_holder.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (LOCK_CLASS, locked_name))
        table_lock.execute("LOCK TABLE audit IN ACCESS EXCLUSIVE MODE")
        for manifest in objects(fresh_queue):
            kubectl.apply(manifest)
        deadline = time.monotonic() + 120
        while (states := kstatus(stack, kubectl)) and time.monotonic() < deadline:
            wrong = {
                key: states.get(key)
                for key, want in EXPECTED.items()
                if states.get(key, {}).get("status") != want
            }
            if not wrong:
                break
            time.sleep(1)
        assert not wrong, f"kstatus not as expected: {wrong}\n{operator_alive.log_tail()}"
        assert states[("Backup", "no-secret")]["message"]  # Flux shows the Stalled message
    finally:
        table_lock.close()
        lock_holder.close()


def objects(queue: str) -> list[dict[str, Any]]:
    schedule_trigger = {
        "name": "office_hours",
        "type": "schedule",
        "schedule": {"start": "0 0 * * *", "duration": "24h", "timezone": "UTC", "minReplicas": 2},
    }
    to_queue = {"queue": {"name": queue}}
    elsewhere = {"secretRef": {"name": "migrations-db"}}  # not the Backups' database, whose slot is busy
    ledger = {"database": {"secretRef": {"name": "events-db"}}, "table": "ledger"}
    return [
        backup("dumping"),
        backup("no-secret", database={"secretRef": {"name": "absent"}}),
        drill("drill", "done"),
        drill("after-dumping", "dumping"),
        drill("no-backup", "absent"),
        migration("applied", database=elsewhere, source=inline((1, "init", "CREATE TABLE gitops (id int)"))),
        migration("broken", database=elsewhere, source=inline((1, "typo", "CREAT TABLE gitops (id int)"))),
        migration(
            "locked",
            database={"secretRef": {"name": "locked-db"}},
            source=inline((1, "init", "CREATE TABLE gitops (id int)")),
        ),
        replayjob("replayed", {"eventIds": [1, 2, 3]}, to_queue, source=ledger),
        replayjob("slow", {"eventIds": list(range(1, 61))}, to_queue, source=ledger, rateLimit=1),
        replayjob("too-many", {"eventIds": list(range(1, 21))}, to_queue, source=ledger, maxEvents=5),
        deployment("workers"),
        policy("scaling", "workers", [schedule_trigger]),
        policy("no-target", "absent", [schedule_trigger]),
        walarchive("no-secret", database={"secretRef": {"name": "absent"}}),
    ]
