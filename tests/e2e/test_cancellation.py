"""Deleting a running Backup or Restore stops it; a finished one carries no finalizer.

A session holding a table lock keeps pg_dump (or pg_restore) waiting, so the operation is still
Running when the object is deleted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.e2e.conftest import OperatorProcess
from tests.e2e.helpers import backup, restore, seed, snapshot, wait_for, wait_phase, wait_ready
from tests.harness import Kubectl

pytestmark = pytest.mark.e2e

FINALIZER = "ops.habitat.dev/finalizer"


def gone(kubectl: Kubectl, kind: str, name: str, operator: OperatorProcess, timeout: float = 60) -> None:
    wait_for(
        f"{kind} {name} to be deleted",
        lambda: kubectl.run("get", kind, name, check=False).returncode != 0,
        timeout=timeout,
        operator=operator,
    )


def events(kubectl: Kubectl, name: str) -> list[dict[str, Any]]:
    listing = kubectl.run("get", "events", f"--field-selector=involvedObject.name={name}", "-o", "json")
    return list(json.loads(listing.stdout)["items"])


def client_tools_running(tool: str, database: str) -> bool:
    """Whether a pg_dump/pg_restore of `database` is still alive (its environment names the database)."""
    for proc in Path("/proc").iterdir():
        try:
            if Path(proc, "comm").read_text().strip() != tool:
                continue
            if f"PGDATABASE={database}".encode() in Path(proc, "environ").read_bytes():
                return True
        except OSError:
            continue
    return False


def test_deleting_a_running_backup_stops_it_and_leaves_no_partial_file(
    operator_alive: OperatorProcess, kubectl: Kubectl, db_secret: str, fresh_database: str
) -> None:
    seed(fresh_database, rows=1000)
    database = fresh_database.rsplit("/", 1)[1]
    blocker = psycopg.connect(fresh_database)
    try:
        blocker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        kubectl.apply(backup("doomed"))
        running = wait_phase(kubectl, "backup", "doomed", {"Running"}, operator_alive)
        assert FINALIZER in running["metadata"]["finalizers"]
        wait_for("pg_dump to start", lambda: client_tools_running("pg_dump", database), timeout=30)

        kubectl.run("delete", "backup", "doomed", "--wait=false")
        gone(kubectl, "backup", "doomed", operator_alive)
    finally:
        blocker.close()
    assert not client_tools_running("pg_dump", database)
    folder = operator_alive.backup_root / "e2e" / kubectl.namespace
    assert [p.name for p in folder.iterdir()] == [] if folder.exists() else True
    cancelled = [e for e in events(kubectl, "doomed") if e["reason"] == "Cancelled"]
    assert cancelled and "stopped" in cancelled[0]["message"]
    scraped = operator_alive.scrape()
    assert 'habitat_operator_operations_cancelled_total{kind="Backup"}' in scraped
    assert f'backup="doomed",namespace="{kubectl.namespace}"' not in scraped  # its series went with it


def test_deleting_a_running_restore_stops_it_before_it_commits(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    source_backup: dict[str, Any],
    target_database: str,
) -> None:
    seed(target_database, rows=5)
    before = snapshot(target_database)
    database = target_database.rsplit("/", 1)[1]
    blocker = psycopg.connect(target_database)
    try:
        blocker.execute("LOCK TABLE events IN ACCESS SHARE MODE")  # pg_restore --clean waits to drop it
        kubectl.apply(restore("wrong-target", mode={"force": True, "clean": True}, preRestoreBackup=False))
        wait_phase(kubectl, "restore", "wrong-target", {"Running"}, operator_alive)
        wait_for("pg_restore to start", lambda: client_tools_running("pg_restore", database), timeout=30)

        kubectl.run("delete", "restore", "wrong-target", "--wait=false")
        gone(kubectl, "restore", "wrong-target", operator_alive)
        assert not client_tools_running("pg_restore", database)
    finally:
        blocker.rollback()
        blocker.close()
    time.sleep(2)  # had pg_restore survived, it would commit now that the lock is gone
    assert snapshot(target_database) == before
    assert any(e["reason"] == "Cancelled" for e in events(kubectl, "wrong-target"))


def test_finished_objects_carry_no_finalizer(
    operator_alive: OperatorProcess, kubectl: Kubectl, db_secret: str, fresh_database: str
) -> None:
    seed(fresh_database, rows=10)
    kubectl.apply(backup("done"))
    wait_ready(kubectl, "done", operator_alive)
    wait_for(
        "the finalizer to go once the run ended",
        lambda: FINALIZER not in (kubectl.get("backup", "done")["metadata"].get("finalizers") or []),
        timeout=30,
        operator=operator_alive,
    )
    operator_alive.stop()  # an uninstalled operator must not leave finished objects undeletable
    try:
        kubectl.run("delete", "backup", "done", "--timeout=20s")
    finally:
        operator_alive.start()
