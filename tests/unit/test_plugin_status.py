"""`kubectl habitat status` over objects' JSON (pure): what counts as failing, the databases' view."""

from __future__ import annotations

import datetime as dt
from typing import Any

from habitat_operator.plugin.status import build, failing_condition

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)


def obj(kind: str, name: str, spec: dict[str, Any] | None = None, **status: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "metadata": {"name": name, "namespace": "shop"},
        "spec": spec or {},
        "status": status,
    }


def condition(type_: str, status: str, reason: str = "", message: str = "") -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


def test_failing_means_stalled_failed_or_objectives_missed() -> None:
    waiting = obj("Backup", "a", conditions=[condition("Reconciling", "True", "SecretNotFound")])
    stalled = obj("Backup", "b", conditions=[condition("Stalled", "True", "InvalidSpec", "spec.x: bad")])
    failed = obj("Restore", "c", phase="Failed", conditions=[condition("Ready", "False", "RestoreFailed")])
    missed = obj("Backup", "d", conditions=[condition("ObjectivesMet", "False", "RPOExceeded")])
    assert failing_condition(waiting) is None
    assert failing_condition(stalled) == condition("Stalled", "True", "InvalidSpec", "spec.x: bad")
    assert (failing_condition(failed) or {})["reason"] == "RestoreFailed"
    assert (failing_condition(missed) or {})["reason"] == "RPOExceeded"


def test_problems_come_first_and_name_reason_and_message() -> None:
    sections = build(
        [
            obj("ScalePolicy", "workers", {"target": {"name": "w"}}, phase="Ready", desiredReplicas=3),
            obj(
                "Migration",
                "schema",
                phase="Stalled",
                dirtyVersion=7,
                currentVersion=6,
                targetVersion=8,
                conditions=[condition("Stalled", "True", "Dirty", "version 7 failed outside a transaction")],
            ),
        ],
        NOW,
        all_namespaces=False,
    )
    assert next(iter(sections)) == "problems"
    [problem] = sections["problems"]
    assert problem["resource"] == "migration/schema" and problem["reason"] == "Dirty"
    assert "namespace" not in problem  # -n: one namespace, no column for it
    assert sections["migrations"][0] == {
        "name": "schema",
        "phase": "Stalled",
        "current": 6,
        "target": 8,
        "pending": None,
        "dirty": 7,
    }
    assert sections["scalePolicies"][0]["desired"] == 3


def run_of(schedule: str, item: dict[str, Any]) -> dict[str, Any]:
    item["metadata"]["ownerReferences"] = [{"name": schedule, "controller": True}]
    return item


def test_a_database_shows_its_newest_verified_backup_drill_and_recoverability() -> None:
    """As the operator writes them: the Backup schedule holds the RPO but no database (its runs
    do), and the drill schedule, another object, holds the RTO."""
    done: dict[str, Any] = {"phase": "Succeeded", "database": "db:5432/app"}
    schedule = obj(
        "Backup",
        "nightly",
        {"schedule": "@daily", "objectives": {"rpo": "1h"}},
        recoverability={"rpo": "12m", "rpoSeconds": 720, "objectivesMet": True},
    )
    older = obj("Backup", "nightly-1", verification="Verified", completedAt="2026-12-06T03:00:00Z", **done)
    newer = obj("Backup", "nightly-2", verification="Verified", completedAt="2026-12-07T03:00:00Z", **done)
    unverified = obj(
        "Backup", "nightly-3", verification="NotVerified", completedAt="2026-12-07T11:00:00Z", **done
    )
    drills = obj(
        "Restore",
        "weekly-drill",
        {"drill": True, "schedule": "@weekly", "objectives": {"rto": "30m"}},
        recoverability={"measuredRto": "4m", "measuredRtoSeconds": 240, "objectivesMet": False},
    )
    drill = obj(
        "Restore",
        "drill-1",
        {"drill": True},
        phase="Succeeded",
        completedAt="2026-12-07T04:00:00Z",
        restoredFrom={"backup": "nightly-2"},
    )
    runs = [run_of("nightly", b) for b in (older, newer, unverified)]
    [database] = build([schedule, *runs, drills, run_of("weekly-drill", drill)], NOW)["databases"]
    assert database == {
        "namespace": "shop",
        "database": "db:5432/app",
        "newestVerifiedBackup": "nightly-2",
        "backupAge": "9h",
        "rpo": "12m / 1h",
        "rto": "4m / 30m",
        "objectivesMet": False,  # the drill schedule's verdict counts too
        "newestDrill": "drill-1 (Succeeded, 8h ago)",
    }


def test_without_recoverability_the_columns_stay_empty() -> None:
    backup = obj(
        "Backup",
        "once",
        database="db:5432/app",
        phase="Succeeded",
        verification="Verified",
        completedAt="2026-12-07T11:59:00Z",
    )
    [database] = build([backup], NOW)["databases"]
    assert (database["rpo"], database["rto"], database["objectivesMet"]) == (None, None, None)
    assert database["backupAge"] == "60s"


def test_only_unfinished_or_failed_replays_are_listed() -> None:
    replays = [
        obj("ReplayJob", "done", phase="Succeeded"),
        obj("ReplayJob", "going", phase="Running", progress="10/40", percent="25%"),
        obj(
            "ReplayJob", "broken", phase="Failed", failedEvents=1, firstFailure={"reason": "MessageReturned"}
        ),
    ]
    rows = build(replays, NOW)["replays"]
    assert [(r["name"], r["progress"], r["firstFailure"]) for r in rows] == [
        ("going", "10/40", None),
        ("broken", None, "MessageReturned"),
    ]


def test_a_wal_archive_shows_its_window_lag_and_live_rpo() -> None:
    archive = obj(
        "WalArchive",
        "wal",
        {"objectives": {"rpo": "1m"}},
        phase="Ready",
        recoveryWindow={"from": "2026-12-07T03:00:00Z", "to": "2026-12-07T11:59:58Z"},
        lagBytes=3 * 1024 * 1024,
        recoverability={"rpo": "2s", "rpoSeconds": 2},
        lastBaseBackup={"completedAt": "2026-12-07T03:00:00Z"},
    )
    [row] = build([archive], NOW)["walArchives"]
    assert (row["windowTo"], row["lag"], row["rpo"], row["baseBackupAge"]) == (
        "2026-12-07T11:59:58Z",
        "3.0 MiB",
        "2s / 1m",
        "9h",
    )
