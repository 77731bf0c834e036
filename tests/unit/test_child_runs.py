"""Schedule ticks (controllers/scheduling/child_runs.py) of Backups and Restore drills against the
fake apiserver, with a clock that moves only when a test moves it."""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import os
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from habitat_operator import metrics as operator_metrics
from habitat_operator.api import children as runs
from habitat_operator.api.children import SCHEDULE_NAME_ANNOTATION
from habitat_operator.api.common import SCHEDULE_LABEL, SCHEDULED_AT_ANNOTATION
from habitat_operator.config import OperatorConfig
from habitat_operator.controllers.backup import metrics as backup_metrics
from habitat_operator.controllers.backup import schedule as backup_schedule
from habitat_operator.controllers.restore import metrics as restore_metrics
from habitat_operator.controllers.restore import schedule as restore_schedule
from habitat_operator.controllers.scheduling import child_runs
from habitat_operator.controllers.scheduling.child_runs import (
    DUE_MARGIN_SECONDS,
    IDLE_RECHECK_SECONDS,
    ScheduledKind,
    ScheduleRuns,
)
from habitat_operator.engines.artifacts.store import ArtifactStore, file_uri
from tests.unit.bodies import (
    DB_SECRET,
    DB_URI,
    NS,
    backup_body,
    condition_messages,
    conditions,
    reconcile_backup,
    restore_body,
)
from tests.unit.conftest import START
from tests.unit.fake_engines import FakeDump
from tests.unit.fake_kube import Clock, FakeKube, JsonDict

BACKUPS = "backups"
HOURLY = "0 * * * *"


def at(hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
    return START.replace(hour=hour, minute=minute, second=second)


class Daemon:
    """A schedule's daemon as the handlers drive it: one ScheduleRuns for its life, fed with the
    schedule's runs as the watch delivered them (the fake's `unlisted` ones not yet)."""

    def __init__(self, kube: FakeKube, kind: ScheduledKind[Any], plural: str, name: str) -> None:
        self.kube, self.plural, self.name = kube, plural, name
        uid = kube.object(plural, NS, name)["metadata"]["uid"]
        self.runs = ScheduleRuns(kind, lambda: self.watched(uid))

    def watched(self, uid: str) -> list[JsonDict]:
        return [
            child_runs.run_record(obj)
            for key, obj in sorted(self.kube.objects.items())
            if key[0] == self.plural and key not in self.kube.unlisted and child_runs.schedule_uid(obj) == uid
        ]

    def tick(self, body: JsonDict | None = None) -> float:
        """One tick on `body`, by default the schedule as stored now."""
        self.runs.observe(body or self.kube.object(self.plural, NS, self.name))
        return asyncio.run(self.runs.reconcile()).seconds


def daemon(kube: FakeKube, config: OperatorConfig, name: str = "nightly") -> Daemon:
    return Daemon(kube, backup_schedule.kind(config), BACKUPS, name)


def tick(kube: FakeKube, config: OperatorConfig, name: str = "nightly") -> float:
    """One tick of a new daemon (as after an operator restart), with the runs listed from the API."""
    body = kube.object(BACKUPS, NS, name)
    listed = asyncio.run(child_runs.list_children(BACKUPS, body))
    runs = ScheduleRuns(backup_schedule.kind(config), lambda: listed)
    runs.observe(body)
    return asyncio.run(runs.reconcile()).seconds


def until(moment: dt.datetime, now: dt.datetime) -> float:
    """The delay a tick at `now` asks for when the next run is at `moment`."""
    return min(IDLE_RECHECK_SECONDS, (moment - now).total_seconds() + DUE_MARGIN_SECONDS)


def children(kube: FakeKube, parent: str = "nightly") -> list[str]:
    return [name for name in kube.names(BACKUPS, NS) if name != parent]


@pytest.fixture
def nightly(fake_kube: FakeKube) -> JsonDict:
    """An hourly Backup schedule created at 10:00."""
    fake_kube.put_secret(NS, DB_SECRET, {"uri": DB_URI})
    return fake_kube.add(BACKUPS, backup_body(schedule=HOURLY))


def finish(kube: FakeKube, name: str, phase: str, completed: dt.datetime, **status: object) -> None:
    stamp = completed.strftime("%Y-%m-%dT%H:%M:%SZ")
    kube.set_status(BACKUPS, NS, name, {"phase": phase, "completedAt": stamp, **status})


def finished_run(
    kube: FakeKube,
    config: OperatorConfig,
    parent: JsonDict,
    scheduled: dt.datetime,
    completed: dt.datetime | None = None,
    directory: Path | None = None,
) -> tuple[str, Path]:
    """A Succeeded run of `parent` scheduled at `scheduled`, with its artifact on disk where a Backup
    writes it (`<root>/<path>/<namespace>/<name>.dump`, unless `directory` says otherwise); returns
    the run's name and its artifact's path."""
    body = runs.child_body(parent, backup_schedule.kind(config).schedule_fields, scheduled)
    name = body["metadata"]["name"]
    kube.add(BACKUPS, body)
    where = directory or ArtifactStore(config.backup_root).namespace_directory("app", NS)
    artifact = where / f"{name}.dump"
    artifact.write_bytes(b"PGDMP")
    done = completed or scheduled + dt.timedelta(minutes=5)
    finish(kube, name, "Succeeded", done, artifact={"uri": file_uri(artifact), "sizeBytes": 5})
    return name, artifact


def retained(kube: FakeKube, **retention: int) -> JsonDict:
    """An hourly Backup schedule created at 10:00, pruned by `retention`."""
    kube.put_secret(NS, DB_SECRET, {"uri": DB_URI})
    return kube.add(BACKUPS, backup_body(schedule=HOURLY, retention=retention))


def edit_spec(kube: FakeKube, name: str, **changes: object) -> None:
    """`kubectl apply` of an edited spec: a new generation."""
    stored = kube.objects[(BACKUPS, NS, name)]
    stored["spec"].update(changes)
    stored["metadata"]["generation"] += 1


def refuse_writes(directory: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """`directory` loses its write permission. Root ignores that, so as root (as the tests may run)
    an unlink in it fails with EACCES too, as it would for the operator's unprivileged user."""
    directory.chmod(0o500)
    request.addfinalizer(lambda: directory.chmod(0o700))
    if os.geteuid() != 0:
        return
    unlink = Path.unlink

    def refused(path: Path, missing_ok: bool = False) -> None:
        if path.parent == directory:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refused)


# ---------------------------------------------------------------- creating runs


def test_a_due_tick_creates_one_child_owned_by_the_schedule(
    fake_kube: FakeKube, config: OperatorConfig, clock: Clock, nightly: JsonDict
) -> None:
    schedule = daemon(fake_kube, config)
    assert schedule.tick() == until(at(11), clock.now())
    assert children(fake_kube) == []  # created at 10:00, so 10:00 is not due

    clock.set(at(11, 0, 30))
    assert schedule.tick() == until(at(12), clock.now())

    assert children(fake_kube) == ["nightly-20240601110000"]
    child = fake_kube.object(BACKUPS, NS, "nightly-20240601110000")
    assert child["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "ops.habitat.dev/v1alpha1",
            "kind": "Backup",
            "name": "nightly",
            "uid": nightly["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert child["metadata"]["labels"] == {SCHEDULE_LABEL: "nightly"}
    assert child["metadata"]["annotations"] == {
        SCHEDULED_AT_ANNOTATION: "2024-06-01T11:00:00Z",
        SCHEDULE_NAME_ANNOTATION: "nightly",
    }
    assert child["spec"] == {
        "database": {"secretRef": {"name": DB_SECRET}},
        "storage": {"filesystem": {"path": "app"}},
    }
    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert status["phase"] == "Scheduled"
    assert conditions(status)["Ready"] == ("True", "Scheduled")
    assert status["lastScheduleTime"] == "2024-06-01T11:00:00Z"
    assert status["nextScheduleTime"] == "2024-06-01T12:00:00Z"
    assert status["activeRun"] == "nightly-20240601110000"
    assert status["recentRuns"] == ["nightly-20240601110000"]
    assert status["missedRuns"] == 0
    assert [(e.type, e.reason, e.message) for e in fake_kube.events_for("nightly")] == [
        ("Normal", "RunCreated", "created Backup nightly-20240601110000")
    ]

    # A tick before the next run is due creates nothing.
    clock.set(at(11, 30))
    schedule.tick()
    assert children(fake_kube) == ["nightly-20240601110000"]


def test_the_child_runs_and_the_schedule_reports_it(
    fake_kube: FakeKube, config: OperatorConfig, clock: Clock, nightly: JsonDict, dump: FakeDump
) -> None:
    schedule = daemon(fake_kube, config)
    clock.set(at(11, 0, 30))
    schedule.tick()
    assert reconcile_backup(fake_kube, config, dump, "nightly-20240601110000") is None
    clock.set(at(11, 1))
    schedule.tick()

    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert status["lastSuccessfulTime"] == "2024-06-01T11:00:30Z"
    assert "activeRun" not in status
    destination = dump.requests[0].destination
    assert destination is not None and destination.name == "nightly-20240601110000.dump"


def test_no_second_child_while_one_is_active(
    fake_kube: FakeKube, config: OperatorConfig, clock: Clock, nightly: JsonDict
) -> None:
    schedule = daemon(fake_kube, config)
    clock.set(at(11, 0, 30))
    schedule.tick()
    clock.set(at(12, 0, 30))

    schedule.tick()

    assert children(fake_kube) == ["nightly-20240601110000"]
    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert status["missedRuns"] == 1
    assert status["lastScheduleTime"] == "2024-06-01T12:00:00Z"
    assert status["activeRun"] == "nightly-20240601110000"
    skipped = fake_kube.events_for("nightly")[-1]
    assert (skipped.type, skipped.reason) == ("Warning", "RunSkipped")
    assert skipped.message == "run for 2024-06-01T12:00:00Z skipped: nightly-20240601110000 is still active"

    # Once it has finished, the next due run starts.
    finish(fake_kube, "nightly-20240601110000", "Succeeded", at(12, 10))
    clock.set(at(13, 0, 30))
    schedule.tick()
    assert children(fake_kube) == ["nightly-20240601110000", "nightly-20240601130000"]
    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert status["recentRuns"] == ["nightly-20240601130000", "nightly-20240601110000"]
    assert status["missedRuns"] == 1


def test_a_manual_run_is_a_child_like_a_scheduled_one_and_says_it_was_manual(
    fake_kube: FakeKube, config: OperatorConfig, clock: Clock, nightly: JsonDict
) -> None:
    """`kubectl habitat backup` creates this body: the schedule waits for it and counts its success."""
    manual = runs.child_body(
        nightly, backup_schedule.kind(config).schedule_fields, at(10, 40), runs.Trigger.MANUAL
    )
    assert manual["metadata"]["labels"] == {SCHEDULE_LABEL: "nightly", runs.TRIGGER_LABEL: "manual"}
    scheduled = runs.child_body(nightly, backup_schedule.kind(config).schedule_fields, at(10, 40))
    assert {**manual, "metadata": {**manual["metadata"], "labels": {}}} == {
        **scheduled,
        "metadata": {**scheduled["metadata"], "labels": {}},
    }
    fake_kube.add(BACKUPS, manual)
    schedule = daemon(fake_kube, config)
    clock.set(at(11, 0, 30))

    schedule.tick()

    assert children(fake_kube) == ["nightly-20240601104000"]  # 11:00 skipped: the manual run is active
    assert fake_kube.status(BACKUPS, NS, "nightly")["activeRun"] == "nightly-20240601104000"
    finish(fake_kube, "nightly-20240601104000", "Succeeded", at(11, 5))
    clock.set(at(11, 10))
    schedule.tick()
    assert fake_kube.status(BACKUPS, NS, "nightly")["lastSuccessfulTime"] == "2024-06-01T11:05:00Z"


def test_runs_missed_while_the_operator_was_down_start_only_the_latest(
    fake_kube: FakeKube, config: OperatorConfig, clock: Clock, nightly: JsonDict
) -> None:
    clock.set(at(15, 0, 30))
    tick(fake_kube, config)
    assert children(fake_kube) == ["nightly-20240601150000"]
    assert fake_kube.status(BACKUPS, NS, "nightly")["missedRuns"] == 4  # 11:00 to 14:00


def test_a_tick_cut_off_after_creating_creates_no_duplicate(
    fake_kube: FakeKube, config: OperatorConfig, clock: Clock, nightly: JsonDict
) -> None:
    clock.set(at(11, 0, 30))
    fake_kube.fail_next("patch_status", ConnectionResetError("the operator died here"))
    with pytest.raises(ConnectionResetError):
        daemon(fake_kube, config).tick()
    assert children(fake_kube) == ["nightly-20240601110000"]
    assert "lastScheduleTime" not in fake_kube.status(BACKUPS, NS, "nightly")

    clock.set(at(11, 0, 40))
    daemon(fake_kube, config).tick()  # the restarted daemon

    assert children(fake_kube) == ["nightly-20240601110000"]
    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert status["lastScheduleTime"] == "2024-06-01T11:00:00Z"
    assert status["activeRun"] == "nightly-20240601110000"


@pytest.mark.parametrize(
    "delivered",
    [
        pytest.param(
            True,
            id="the-watch-delivered-the-child",
        ),
        pytest.param(False, id="the-watch-has-not-delivered-it-yet"),
    ],
)
def test_a_tick_repeated_after_its_create_was_cut_off_misses_nothing(
    fake_kube: FakeKube, config: OperatorConfig, clock: Clock, nightly: JsonDict, delivered: bool
) -> None:
    schedule = daemon(fake_kube, config)
    clock.set(at(11, 0, 30))
    fake_kube.fail_next("create", TimeoutError("the create's response was lost"))
    with pytest.raises(TimeoutError):
        schedule.tick()
    assert children(fake_kube) == ["nightly-20240601110000"]  # created all the same
    if not delivered:
        fake_kube.unlisted.add((BACKUPS, NS, "nightly-20240601110000"))

    clock.set(at(11, 0, 40))
    schedule.tick()  # the daemon tries again

    assert children(fake_kube) == ["nightly-20240601110000"]
    assert "RunSkipped" not in fake_kube.reasons("nightly")
    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert status["missedRuns"] == 0
    assert status["lastScheduleTime"] == "2024-06-01T11:00:00Z"
    assert status["activeRun"] == "nightly-20240601110000"
    assert status["recentRuns"] == ["nightly-20240601110000"]


# ---------------------------------------------------------------- retention


def test_retention_deletes_expired_runs_with_their_artifacts_and_keeps_the_newest(
    fake_kube: FakeKube, config: OperatorConfig, clock: Clock
) -> None:
    parent = retained(fake_kube, keepLast=2)
    runs = [finished_run(fake_kube, config, parent, at(hour)) for hour in (6, 7, 8, 9)]
    assert all(path.is_file() for _, path in runs)
    assert runs[0][1] == config.backup_root / "app" / NS / "nightly-20240601060000.dump"
    schedule = daemon(fake_kube, config)
    clock.set(at(10, 30))

    schedule.tick()

    assert children(fake_kube) == ["nightly-20240601080000", "nightly-20240601090000"]
    assert [path.exists() for _, path in runs] == [False, False, True, True]
    assert sorted(fake_kube.deleted) == [
        (BACKUPS, NS, "nightly-20240601060000"),
        (BACKUPS, NS, "nightly-20240601070000"),
    ]
    assert [(e.type, e.reason, e.message) for e in fake_kube.events_for("nightly")] == [
        ("Normal", "RetentionApplied", "expired 2 run(s): nightly-20240601060000, nightly-20240601070000")
    ]
    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert status["recentRuns"] == ["nightly-20240601090000", "nightly-20240601080000"]
    assert status["lastSuccessfulTime"] == "2024-06-01T09:05:00Z"

    # A later pass has nothing left to expire.
    clock.set(at(10, 45))
    schedule.tick()
    assert fake_kube.reasons("nightly") == ["RetentionApplied"]
    assert children(fake_kube) == ["nightly-20240601080000", "nightly-20240601090000"]


@pytest.mark.parametrize(
    "where",
    [
        "another-namespace",
        "outside-the-root",
        "unwritable-directory",
    ],
)
def test_retention_applied_names_only_the_runs_it_deleted(
    fake_kube: FakeKube,
    config: OperatorConfig,
    clock: Clock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    where: str,
) -> None:
    """An artifact that cannot be deleted keeps its run, which a later pass tries again."""
    parent = retained(fake_kube, keepLast=1)
    store = ArtifactStore(config.backup_root)
    directory = {
        "another-namespace": store.namespace_directory("app", "team-b"),
        "outside-the-root": tmp_path / "elsewhere",
        "unwritable-directory": store.namespace_directory("archive", NS),
    }[where]
    directory.mkdir(exist_ok=True)
    oldest, oldest_file = finished_run(fake_kube, config, parent, at(7))
    stuck, stuck_file = finished_run(fake_kube, config, parent, at(8), directory=directory)
    newest, _ = finished_run(fake_kube, config, parent, at(9))
    if where == "unwritable-directory":
        refuse_writes(directory, monkeypatch, request)
    clock.set(at(10, 30))

    daemon(fake_kube, config).tick()

    assert children(fake_kube) == [stuck, newest]
    assert not oldest_file.exists()
    assert stuck_file.is_file()
    events = fake_kube.events_for("nightly")
    failed = [e for e in events if e.reason == "RetentionFailed"]
    assert [e.type for e in failed] == ["Warning"]
    assert failed[0].message.startswith(f"could not delete {file_uri(stuck_file)}: ")
    assert [e.message for e in events if e.reason == "RetentionApplied"] == [f"expired 1 run(s): {oldest}"]
    assert fake_kube.status(BACKUPS, NS, "nightly")["recentRuns"] == [newest, stuck]


def test_retention_posts_no_retention_applied_when_it_deleted_nothing(
    fake_kube: FakeKube, config: OperatorConfig, clock: Clock, tmp_path: Path
) -> None:
    parent = retained(fake_kube, keepLast=1)
    (tmp_path / "elsewhere").mkdir()
    old, old_file = finished_run(fake_kube, config, parent, at(8), directory=tmp_path / "elsewhere")
    finished_run(fake_kube, config, parent, at(9))
    clock.set(at(10, 30))

    daemon(fake_kube, config).tick()

    assert old in children(fake_kube)
    assert old_file.is_file()
    assert fake_kube.reasons("nightly") == ["RetentionFailed"]


def test_a_run_an_unfinished_restore_reads_is_pruned_only_once_that_restore_has_ended(
    fake_kube: FakeKube, config: OperatorConfig, clock: Clock
) -> None:
    parent = retained(fake_kube, keepLast=1)
    (read, read_file), (named, named_file), (newest, _) = (
        finished_run(fake_kube, config, parent, at(hour)) for hour in (7, 8, 9)
    )
    # One Restore is reading a run, another was told which run to read and has not started yet.
    fake_kube.add("restores", restore_body("reading"))
    fake_kube.set_status("restores", NS, "reading", {"phase": "Running", "restoredFrom": {"backup": read}})
    fake_kube.add(
        "restores", restore_body("waiting", source={"backupRef": {"name": "nightly", "run": named}})
    )
    schedule = daemon(fake_kube, config)
    clock.set(at(10, 30))

    schedule.tick()

    assert children(fake_kube) == [read, named, newest]
    assert read_file.is_file() and named_file.is_file()
    assert "RetentionApplied" not in fake_kube.reasons("nightly")

    fake_kube.set_status("restores", NS, "reading", {"phase": "Succeeded", "restoredFrom": {"backup": read}})
    clock.set(at(10, 40))
    schedule.tick()

    assert children(fake_kube) == [named, newest]
    assert not read_file.exists() and named_file.is_file()

    fake_kube.set_status("restores", NS, "waiting", {"phase": "Succeeded", "restoredFrom": {"backup": named}})
    clock.set(at(10, 50))
    schedule.tick()

    assert children(fake_kube) == [newest]
    assert not named_file.exists()
    assert [e.message for e in fake_kube.events_for("nightly") if e.reason == "RetentionApplied"] == [
        f"expired 1 run(s): {read}",
        f"expired 1 run(s): {named}",
    ]


# ---------------------------------------------------------------- the schedule's status


def test_a_suspended_schedule_creates_nothing_and_has_no_next_run(
    fake_kube: FakeKube, config: OperatorConfig, clock: Clock, nightly: JsonDict
) -> None:
    schedule = daemon(fake_kube, config)
    schedule.tick()
    assert fake_kube.status(BACKUPS, NS, "nightly")["nextScheduleTime"] == "2024-06-01T11:00:00Z"
    edit_spec(fake_kube, "nightly", suspend=True)
    clock.set(at(11, 0, 30))  # 11:00 would be due

    assert schedule.tick() == IDLE_RECHECK_SECONDS

    assert children(fake_kube) == []
    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert status["phase"] == "Suspended"
    assert conditions(status)["Ready"] == ("True", "Suspended")
    assert "nextScheduleTime" not in status
    assert "lastScheduleTime" not in status
    assert "activeRun" not in status
    assert fake_kube.events_for("nightly") == []


def test_an_invalid_spec_stalls_the_schedule_and_creates_nothing(
    fake_kube: FakeKube, config: OperatorConfig, clock: Clock
) -> None:
    fake_kube.put_secret(NS, DB_SECRET, {"uri": DB_URI})
    fake_kube.add(BACKUPS, backup_body(schedule="61 * * * *"), validate=False)  # minute 61
    clock.set(at(11, 0, 30))

    assert daemon(fake_kube, config).tick() == IDLE_RECHECK_SECONDS
    assert tick(fake_kube, config) == IDLE_RECHECK_SECONDS

    assert children(fake_kube) == []
    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert status["phase"] == "Failed"
    assert conditions(status)["Stalled"] == ("True", "InvalidSpec")
    assert conditions(status)["Ready"] == ("False", "InvalidSpec")
    assert any(message.startswith("spec.schedule: ") for message in condition_messages(status))
    assert "nextScheduleTime" not in status


@pytest.mark.parametrize("length", [200, 253])
def test_a_long_schedule_name_gives_runs_valid_names_and_labels_and_one_series(
    fake_kube: FakeKube, config: OperatorConfig, clock: Clock, length: int
) -> None:
    name = "n" * length
    fake_kube.put_secret(NS, DB_SECRET, {"uri": DB_URI})
    fake_kube.add(BACKUPS, backup_body(name, schedule=HOURLY))  # the fake refuses bad names and labels
    clock.set(at(11, 0, 30))
    tick(fake_kube, config, name)
    clock.set(at(12, 0, 30))
    tick(fake_kube, config, name)  # the active run is found by its label and owner: this run is skipped
    (first,) = children(fake_kube, name)
    finish(fake_kube, first, "Succeeded", at(12, 10))
    clock.set(at(13, 0, 30))
    tick(fake_kube, config, name)

    runs = children(fake_kube, name)
    assert len(runs) == 2
    for run in runs:
        child = fake_kube.object(BACKUPS, NS, run)
        assert len(run) <= 253
        assert all(len(value) <= 63 for value in child["metadata"]["labels"].values())
        assert child_runs.series_name(child) == name
        assert child["metadata"]["annotations"][SCHEDULE_NAME_ANNOTATION] == name
    assert [run[-15:] for run in runs] == ["-20240601110000", "-20240601130000"]
    assert fake_kube.reasons(name) == ["RunCreated", "RunSkipped", "RunCreated"]
    status = fake_kube.status(BACKUPS, NS, name)
    assert status["recentRuns"] == runs[::-1]
    assert status["lastSuccessfulTime"] == "2024-06-01T12:10:00Z"


@pytest.mark.parametrize("ticked", ["listed-from-the-api", "delivered-by-the-watch"])
def test_runs_of_an_earlier_schedule_of_the_same_name_are_neither_adopted_nor_waited_for(
    fake_kube: FakeKube, config: OperatorConfig, clock: Clock, nightly: JsonDict, ticked: str
) -> None:
    earlier = {**nightly, "metadata": {**nightly["metadata"], "uid": "uid-of-an-earlier-nightly"}}
    for hour, phase in ((8, "Succeeded"), (9, "Running")):  # same name, same label, another owner
        body = runs.child_body(earlier, backup_schedule.kind(config).schedule_fields, at(hour))
        fake_kube.add(BACKUPS, body)
        finish(fake_kube, body["metadata"]["name"], phase, at(hour, 5))
    clock.set(at(11, 0, 30))

    if ticked == "listed-from-the-api":
        tick(fake_kube, config)
    else:
        daemon(fake_kube, config).tick()

    assert children(fake_kube) == [
        "nightly-20240601080000",
        "nightly-20240601090000",
        "nightly-20240601110000",
    ]
    assert fake_kube.reasons("nightly") == ["RunCreated"]
    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert status["recentRuns"] == ["nightly-20240601110000"]
    assert status["activeRun"] == "nightly-20240601110000"
    assert status["missedRuns"] == 0
    assert "lastSuccessfulTime" not in status


def test_a_failed_last_run_stalls_the_schedule_until_a_run_succeeds(
    fake_kube: FakeKube, config: OperatorConfig, clock: Clock, nightly: JsonDict
) -> None:
    schedule = daemon(fake_kube, config)
    clock.set(at(11, 0, 30))
    schedule.tick()
    finish(fake_kube, "nightly-20240601110000", "Failed", at(11, 10), message="pg_dump: connection refused")
    clock.set(at(11, 15))

    schedule.tick()

    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert status["phase"] == "Scheduled"
    assert conditions(status)["Stalled"] == ("True", "LastRunFailed")
    assert conditions(status)["Ready"] == ("False", "LastRunFailed")
    assert condition_messages(status) == {"run nightly-20240601110000 failed: pg_dump: connection refused"}
    assert status["nextScheduleTime"] == "2024-06-01T12:00:00Z"
    assert "activeRun" not in status

    # The next run starts all the same; the schedule is Ready once one succeeds.
    clock.set(at(12, 0, 30))
    schedule.tick()
    assert children(fake_kube) == ["nightly-20240601110000", "nightly-20240601120000"]
    assert conditions(fake_kube.status(BACKUPS, NS, "nightly"))["Stalled"] == ("True", "LastRunFailed")
    finish(fake_kube, "nightly-20240601120000", "Succeeded", at(12, 10))
    clock.set(at(12, 15))
    schedule.tick()
    assert conditions(fake_kube.status(BACKUPS, NS, "nightly"))["Ready"] == ("True", "Scheduled")


def test_last_successful_time_follows_the_newest_success_and_recent_runs_are_the_newest_ten(
    fake_kube: FakeKube, config: OperatorConfig, clock: Clock, nightly: JsonDict
) -> None:
    for hour in range(9):  # 00:00 to 08:00
        finished_run(fake_kube, config, nightly, at(hour))
    failed = runs.child_body(nightly, backup_schedule.kind(config).schedule_fields, at(9))
    fake_kube.add(BACKUPS, failed)
    finish(fake_kube, failed["metadata"]["name"], "Failed", at(9, 5), message="disk full")
    schedule = daemon(fake_kube, config)
    clock.set(at(10, 30))

    schedule.tick()

    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert status["lastSuccessfulTime"] == "2024-06-01T08:05:00Z"  # not the newer failure
    assert status["recentRuns"] == [f"nightly-20240601{hour:02}0000" for hour in range(9, -1, -1)]

    clock.set(at(11, 0, 30))
    schedule.tick()
    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert status["recentRuns"] == [f"nightly-20240601{hour:02}0000" for hour in (11, *range(9, 0, -1))]
    assert status["lastSuccessfulTime"] == "2024-06-01T08:05:00Z"  # the new run is still active

    finish(fake_kube, "nightly-20240601110000", "Succeeded", at(11, 20))
    clock.set(at(11, 30))
    schedule.tick()
    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert status["lastSuccessfulTime"] == "2024-06-01T11:20:00Z"
    assert len(status["recentRuns"]) == 10
    assert len(children(fake_kube)) == 11  # without retention every run stays


# ---------------------------------------------------------------- metrics


def test_a_backup_schedule_tick_sets_its_interval_and_last_success_gauges(
    fake_kube: FakeKube, config: OperatorConfig, clock: Clock
) -> None:
    name = "gauged"  # the registry is the process's: a name no other test uses
    backup_metrics.forget_backup(NS, name)
    labels = {"namespace": NS, "backup": name}
    fake_kube.put_secret(NS, DB_SECRET, {"uri": DB_URI})
    parent = fake_kube.add(BACKUPS, backup_body(name, schedule="0 3 * * *"))
    schedule = daemon(fake_kube, config, name)

    schedule.tick()

    assert REGISTRY.get_sample_value("habitat_backup_schedule_expected_interval_seconds", labels) == 86400
    # Never succeeded: the gauge starts at the schedule's creation.
    assert REGISTRY.get_sample_value("habitat_backup_last_success_timestamp_seconds", labels) == (
        START.timestamp()
    )

    finished_run(fake_kube, config, parent, at(3), completed=at(10, 20))
    clock.set(at(10, 30))
    schedule.tick()

    assert REGISTRY.get_sample_value("habitat_backup_last_success_timestamp_seconds", labels) == (
        at(10, 20).timestamp()
    )
    assert REGISTRY.get_sample_value("habitat_backup_last_size_bytes", labels) == 5


def test_a_drill_schedule_tick_sets_its_last_success_gauge(
    fake_kube: FakeKube, config: OperatorConfig, clock: Clock
) -> None:
    name = "gauged-drills"  # the registry is the process's: a name no other test uses
    operator_metrics.forget((restore_metrics.RESTORE_DRILL_LAST_SUCCESS,), NS, name)
    metric, labels = (
        "habitat_restore_drill_last_success_timestamp_seconds",
        {"namespace": NS, "restore": name},
    )
    fake_kube.put_secret(NS, DB_SECRET, {"uri": DB_URI})
    parent = fake_kube.add("restores", restore_body(name, drill=True, schedule=HOURLY))
    drills = Daemon(fake_kube, restore_schedule.KIND, "restores", name)

    drills.tick()

    assert REGISTRY.get_sample_value(metric, labels) == START.timestamp()  # none succeeded yet

    body = runs.child_body(parent, restore_schedule.KIND.schedule_fields, at(9))
    fake_kube.add("restores", body)
    fake_kube.set_status(
        "restores",
        NS,
        body["metadata"]["name"],
        {"phase": "Succeeded", "completedAt": "2024-06-01T10:20:00Z"},
    )
    clock.set(at(10, 30))
    drills.tick()

    assert REGISTRY.get_sample_value(metric, labels) == at(10, 20).timestamp()


def test_drill_schedule_keeps_its_history_limit(
    fake_kube: FakeKube, config: OperatorConfig, clock: Clock
) -> None:
    fake_kube.put_secret(NS, DB_SECRET, {"uri": DB_URI})
    parent = fake_kube.add("restores", restore_body("drills", drill=True, schedule=HOURLY, historyLimit=2))
    for hour in (6, 7, 8):
        body = runs.child_body(parent, restore_schedule.KIND.schedule_fields, at(hour))
        assert "schedule" not in body["spec"] and "historyLimit" not in body["spec"]
        fake_kube.add("restores", body)  # validated as a one-shot drill by the fake
        fake_kube.set_status("restores", NS, body["metadata"]["name"], {"phase": "Succeeded"})
    clock.set(at(11, 0, 30))

    Daemon(fake_kube, restore_schedule.KIND, "restores", "drills").tick()

    assert fake_kube.names("restores", NS) == [
        "drills",
        "drills-20240601070000",
        "drills-20240601080000",
        "drills-20240601110000",
    ]
    created = fake_kube.object("restores", NS, "drills-20240601110000")
    assert created["spec"]["drill"] is True
    assert fake_kube.status("restores", NS, "drills")["activeRun"] == "drills-20240601110000"
