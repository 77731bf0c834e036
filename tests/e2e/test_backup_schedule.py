"""Scheduled Backups end to end: runs as child objects, no overlap, retention, suspend."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from tests.e2e.conftest import OperatorProcess
from tests.e2e.helpers import (
    NEVER_IN_THIS_TEST,
    artifact_path,
    backup,
    condition,
    run_by_hand,
    runs_of,
    seed,
    wait_for,
    wait_phase,
    wait_ready,
)
from tests.harness import Kubectl

pytestmark = pytest.mark.e2e

EVERY_MINUTE = "* * * * *"


def sleep_past_next_minute() -> None:
    now = dt.datetime.now(dt.UTC)
    time.sleep(60 - now.second - now.microsecond / 1e6 + 5)


def test_each_run_is_a_child_backup_owned_by_the_schedule(
    operator_alive: OperatorProcess, kubectl: Kubectl, db_secret: str, fresh_database: str
) -> None:
    seed(fresh_database, rows=100)
    kubectl.apply(backup("nightly", schedule=EVERY_MINUTE))
    parent = wait_phase(kubectl, "backup", "nightly", {"Scheduled"}, operator_alive)
    assert condition(parent, "Ready")["status"] == "True"
    assert parent["status"]["nextScheduleTime"]

    children = wait_for(
        "the first run", lambda: runs_of(kubectl, "nightly"), timeout=90, operator=operator_alive
    )
    child = children[0]
    assert child["metadata"]["name"].startswith("nightly-")
    owner = child["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Backup", "nightly", parent["metadata"]["uid"])
    assert "schedule" not in child["spec"] and "retention" not in child["spec"]
    wait_ready(kubectl, child["metadata"]["name"], operator_alive)

    parent = wait_for(
        "lastSuccessfulTime",
        lambda: (o := kubectl.get("backup", "nightly"))["status"].get("lastSuccessfulTime") and o,
        timeout=30,
        operator=operator_alive,
    )
    assert parent["status"]["recentRuns"][0] == child["metadata"]["name"]
    assert parent["status"]["lastScheduleTime"]


def test_a_run_never_starts_while_another_is_active(
    operator_alive: OperatorProcess, kubectl: Kubectl, db_secret: str
) -> None:
    # An earlier run that cannot finish: its Secret does not exist, so it stays Pending.
    kubectl.apply(backup("busy", schedule=EVERY_MINUTE, suspend=True))
    parent = kubectl.get("backup", "busy")
    kubectl.apply(run_by_hand("busy-20200101000000", parent, database={"secretRef": {"name": "absent"}}))
    kubectl.run("patch", "backup", "busy", "--type=merge", "-p", '{"spec":{"suspend":false}}')
    parent = wait_for(
        "a scheduled time to pass",
        lambda: (o := kubectl.get("backup", "busy")).get("status", {}).get("lastScheduleTime") and o,
        timeout=90,
        operator=operator_alive,
    )
    assert parent["status"]["missedRuns"] >= 1
    assert parent["status"]["activeRun"] == "busy-20200101000000"
    assert [r["metadata"]["name"] for r in runs_of(kubectl, "busy")] == ["busy-20200101000000"]
    events = kubectl.run("get", "events", "--field-selector=involvedObject.name=busy").stdout
    assert "RunSkipped" in events


def test_retention_expires_old_runs_and_their_artifacts(
    operator_alive: OperatorProcess, kubectl: Kubectl, db_secret: str, fresh_database: str
) -> None:
    seed(fresh_database, rows=100)
    kubectl.apply(backup("kept", schedule=NEVER_IN_THIS_TEST, retention={"keepLast": 1}))
    parent = kubectl.get("backup", "kept")
    kubectl.apply(run_by_hand("kept-20200101000000", parent))
    older = artifact_path(wait_ready(kubectl, "kept-20200101000000", operator_alive))
    assert older.exists()  # the only run is kept
    kubectl.apply(run_by_hand("kept-20200102000000", parent))
    newer = artifact_path(wait_ready(kubectl, "kept-20200102000000", operator_alive))

    wait_for(
        "the older run to expire",
        lambda: [r["metadata"]["name"] for r in runs_of(kubectl, "kept")] == ["kept-20200102000000"],
        timeout=60,
        operator=operator_alive,
    )
    assert not older.exists()
    assert newer.exists()


def test_a_suspended_schedule_starts_nothing(
    operator_alive: OperatorProcess, kubectl: Kubectl, db_secret: str
) -> None:
    kubectl.apply(backup("paused", schedule=EVERY_MINUTE, suspend=True))
    parent = wait_phase(kubectl, "backup", "paused", {"Suspended"}, operator_alive)
    assert "nextScheduleTime" not in parent["status"]
    sleep_past_next_minute()
    assert runs_of(kubectl, "paused") == []
    assert kubectl.get("backup", "paused")["status"]["phase"] == "Suspended"


def test_a_spec_edit_takes_effect_at_once(
    operator_alive: OperatorProcess, kubectl: Kubectl, db_secret: str
) -> None:
    """The daemon sleeps until the next run (here months away), but a new generation wakes it."""
    kubectl.apply(backup("edited", schedule=NEVER_IN_THIS_TEST))
    wait_phase(kubectl, "backup", "edited", {"Scheduled"}, operator_alive)

    kubectl.run("patch", "backup", "edited", "--type=merge", "-p", '{"spec":{"suspend":true}}')
    wait_phase(kubectl, "backup", "edited", {"Suspended"}, operator_alive, timeout=5)

    patch = '{"spec":{"suspend":false,"schedule":"* * * * *"}}'
    kubectl.run("patch", "backup", "edited", "--type=merge", "-p", patch)
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=61)
    wait_for(
        "the next run within a minute",
        lambda: (
            (s := kubectl.get("backup", "edited").get("status", {})).get("phase") == "Scheduled"
            and dt.datetime.fromisoformat(s["nextScheduleTime"]) <= soon
        ),
        timeout=5,
        operator=operator_alive,
    )


def test_after_a_restart_the_first_look_sees_the_active_run(
    operator_alive: OperatorProcess, kubectl: Kubectl, db_secret: str
) -> None:
    """Kopf fills the runs index from its initial listing before it starts any daemon, so a run due at
    a schedule's first look after a restart is skipped for the run still active, not started beside it."""
    operator_alive.kill()
    kubectl.apply(backup("restarted", schedule=EVERY_MINUTE))
    parent = kubectl.get("backup", "restarted")
    busy = "restarted-20200101000000"  # cannot finish: its Secret does not exist
    kubectl.apply(run_by_hand(busy, parent, database={"secretRef": {"name": "absent"}}))
    due = '{"status":{"lastScheduleTime":"2020-01-01T00:00:00Z"}}'  # so a run is due at the first look
    kubectl.run("patch", "backup", "restarted", "--subresource=status", "--type=merge", "-p", due)

    operator_alive.start()

    parent = wait_for(
        "the schedule's first look",
        lambda: (o := kubectl.get("backup", "restarted")).get("status", {}).get("activeRun") and o,
        timeout=60,
        operator=operator_alive,
    )
    assert parent["status"]["activeRun"] == busy
    assert parent["status"]["missedRuns"] >= 1
    assert [r["metadata"]["name"] for r in runs_of(kubectl, "restarted")] == [busy]
    events = kubectl.run("get", "events", "--field-selector=involvedObject.name=restarted").stdout
    assert "RunSkipped" in events
