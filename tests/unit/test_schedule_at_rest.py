"""Schedules at rest: a tick fed by the watch makes no API call when nothing happened, sleeps until
the next run, and a schedule's daemon wakes only for its runs, its own spec, or the next run."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import kopf
import pytest
from kopf._cogs.aiokits.aioenums import FlagSetter

from habitat_operator.api.children import child_body
from habitat_operator.api.common import SCHEDULE_LABEL
from habitat_operator.config import OperatorConfig
from habitat_operator.controllers.backup import schedule as backup_schedule
from habitat_operator.controllers.base import kube
from habitat_operator.controllers.base.core import RetryLater
from habitat_operator.controllers.base.slots import OperationSlots
from habitat_operator.controllers.scheduling import child_runs
from habitat_operator.controllers.scheduling.child_runs import IDLE_RECHECK_SECONDS, ScheduleRuns
from habitat_operator.handlers.common import index_run, is_run_of_a_schedule, wake, wakes_a_daemon
from habitat_operator.handlers.driver import Shared, Wakeups, drive
from tests.unit.bodies import DB_SECRET, DB_URI, NS, backup_body
from tests.unit.conftest import START
from tests.unit.fake_kube import Clock, FakeKube, JsonDict

BACKUPS = "backups"
HOURLY = "0 * * * *"
KUBE_CALLS = ("patch_status", "create", "list_objects", "get", "delete", "read_secret", "event")


def as_body(raw: JsonDict) -> kopf.Body:
    """Kopf's view of a raw object, as its handlers get it (a live view: later changes show)."""
    return kopf.Body(cast(kopf.RawBody, raw))


def at(hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
    return START.replace(hour=hour, minute=minute, second=second)


@pytest.fixture
def calls(fake_kube: FakeKube, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every call the controllers make to the (fake) apiserver, by name."""
    made: list[str] = []

    def counted(name: str) -> Callable[..., Any]:
        call = getattr(kube, name)

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            made.append(name)
            return await call(*args, **kwargs)

        return wrapper

    for name in KUBE_CALLS:
        monkeypatch.setattr(kube, name, counted(name))
    return made


@pytest.fixture
def nightly(fake_kube: FakeKube) -> JsonDict:
    """An hourly Backup schedule created at 10:00."""
    fake_kube.put_secret(NS, DB_SECRET, {"uri": DB_URI})
    return fake_kube.add(BACKUPS, backup_body(schedule=HOURLY))


def watched_runs(kube: FakeKube, parent: JsonDict) -> Callable[[], list[JsonDict]]:
    """The schedule's runs as its index holds them: what the watch delivered, no LIST."""
    uid = parent["metadata"]["uid"]

    def runs() -> list[JsonDict]:
        stored = [kube.object(BACKUPS, NS, name) for name in kube.names(BACKUPS, NS)]
        return [child_runs.run_record(obj) for obj in stored if child_runs.schedule_uid(obj) == uid]

    return runs


def schedule_runs(kube: FakeKube, config: OperatorConfig, parent: JsonDict) -> ScheduleRuns[Any]:
    return ScheduleRuns(backup_schedule.kind(config), watched_runs(kube, parent))


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def step(runs: ScheduleRuns[Any], body: JsonDict) -> float:
    """One step of the schedule's daemon on `body`: the seconds it asks to sleep."""
    runs.observe(body)
    return float(run(runs.reconcile()).seconds)


def memo_of(wakeups: Wakeups) -> kopf.Memo:
    return kopf.Memo(
        shared=Shared(OperatorConfig(backup_root=Path("/nonexistent")), OperationSlots(), wakeups)
    )


def test_a_tick_at_rest_makes_no_api_call_and_sleeps_until_the_next_run(
    fake_kube: FakeKube, config: OperatorConfig, clock: Clock, nightly: JsonDict, calls: list[str]
) -> None:
    runs = schedule_runs(fake_kube, config, nightly)
    assert step(runs, fake_kube.object(BACKUPS, NS, "nightly")) == 3600.0  # 11:00, capped at 1 h
    assert calls == ["patch_status"]  # the first status

    calls.clear()
    clock.set(at(10, 59, 30))
    delay = step(runs, fake_kube.object(BACKUPS, NS, "nightly"))

    assert calls == []
    assert delay == pytest.approx(30.0 + child_runs.DUE_MARGIN_SECONDS)


def test_a_suspended_schedule_waits_only_for_the_safety_cap(
    fake_kube: FakeKube, config: OperatorConfig, clock: Clock, calls: list[str]
) -> None:
    fake_kube.put_secret(NS, DB_SECRET, {"uri": DB_URI})
    parent = fake_kube.add(BACKUPS, backup_body(schedule=HOURLY, suspend=True))
    runs = schedule_runs(fake_kube, config, parent)
    assert step(runs, fake_kube.object(BACKUPS, NS, "nightly")) == IDLE_RECHECK_SECONDS
    calls.clear()
    clock.set(at(15))

    assert step(runs, fake_kube.object(BACKUPS, NS, "nightly")) == IDLE_RECHECK_SECONDS
    assert calls == []
    assert fake_kube.names(BACKUPS, NS) == ["nightly"]


def test_a_tick_on_a_body_that_does_not_show_the_last_write_yet_repeats_nothing(
    fake_kube: FakeKube, config: OperatorConfig, clock: Clock, nightly: JsonDict
) -> None:
    """The run's ADDED event can wake the daemon before the watch delivers its own status write."""
    runs = schedule_runs(fake_kube, config, nightly)
    clock.set(at(11, 0, 30))
    stale = fake_kube.object(BACKUPS, NS, "nightly")
    step(runs, stale)
    assert fake_kube.status(BACKUPS, NS, "nightly")["lastScheduleTime"] == "2024-06-01T11:00:00Z"

    clock.set(at(11, 0, 31))
    step(runs, stale)

    assert fake_kube.names(BACKUPS, NS) == ["nightly", "nightly-20240601110000"]
    assert "RunSkipped" not in fake_kube.reasons("nightly")
    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert (status["lastScheduleTime"], status["missedRuns"]) == ("2024-06-01T11:00:00Z", 0)


def test_a_run_deleted_while_the_watch_was_away_does_not_block_the_next(
    fake_kube: FakeKube, config: OperatorConfig, clock: Clock, nightly: JsonDict, calls: list[str]
) -> None:
    gone = child_runs.run_record(child_body(nightly, backup_schedule.kind(config).schedule_fields, at(10)))
    gone["metadata"]["uid"] = "deleted-long-ago"
    runs = ScheduleRuns(backup_schedule.kind(config), lambda: [gone])  # still in the index: active
    clock.set(at(11, 0, 30))

    step(runs, fake_kube.object(BACKUPS, NS, "nightly"))

    assert "get" in calls  # asked only because a due run would have been skipped
    assert fake_kube.names(BACKUPS, NS) == ["nightly", "nightly-20240601110000"]
    assert "RunSkipped" not in fake_kube.reasons("nightly")
    assert fake_kube.status(BACKUPS, NS, "nightly")["recentRuns"] == ["nightly-20240601110000"]


def test_an_active_run_still_skips_the_due_one(
    fake_kube: FakeKube, config: OperatorConfig, clock: Clock, nightly: JsonDict
) -> None:
    runs = schedule_runs(fake_kube, config, nightly)
    clock.set(at(11, 0, 30))
    step(runs, fake_kube.object(BACKUPS, NS, "nightly"))
    clock.set(at(12, 0, 30))

    step(runs, fake_kube.object(BACKUPS, NS, "nightly"))

    assert fake_kube.names(BACKUPS, NS) == ["nightly", "nightly-20240601110000"]
    assert fake_kube.reasons("nightly")[-1] == "RunSkipped"
    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert (status["activeRun"], status["missedRuns"]) == ("nightly-20240601110000", 1)


# ---------------------------------------------------------------- the runs index


def test_runs_are_indexed_by_their_schedule_uid_without_spec(config: OperatorConfig, clock: Clock) -> None:
    parent = backup_body(schedule=HOURLY)
    parent["metadata"]["uid"] = "schedule-uid"
    child = child_body(parent, backup_schedule.kind(config).schedule_fields, at(11))
    child["metadata"] |= {"uid": "run-uid", "managedFields": [{"manager": "kubectl"}]}
    child["status"] = {"phase": "Running"}
    body = as_body(child)

    assert is_run_of_a_schedule(body)
    [(uid, record)] = index_run(body).items()
    assert uid == "schedule-uid"
    assert record["metadata"]["name"] == "nightly-20240601110000"
    assert "spec" not in record and "managedFields" not in record["metadata"]
    record["status"]["phase"] = "Succeeded"
    assert child["status"]["phase"] == "Running"  # a copy, not a view of Kopf's body


def test_only_labelled_objects_with_a_controller_owner_are_runs(config: OperatorConfig) -> None:
    plain = backup_body()
    assert not is_run_of_a_schedule(as_body(plain))
    owned = backup_body()
    owned["metadata"]["ownerReferences"] = [{"uid": "restore-uid", "controller": True}]
    assert not is_run_of_a_schedule(as_body(owned))  # e.g. a Restore's safety Backup
    owned["metadata"]["labels"] = {SCHEDULE_LABEL: "nightly"}
    owned["metadata"]["ownerReferences"][0]["controller"] = False
    assert not is_run_of_a_schedule(as_body(owned))


# ---------------------------------------------------------------- waking the daemon


def object_body(uid: str, generation: int = 1, schedule_uid: str | None = None) -> JsonDict:
    body = backup_body(f"obj-{uid}", schedule=HOURLY)
    body["metadata"] |= {"uid": uid, "generation": generation}
    if schedule_uid:
        body["metadata"]["labels"] = {SCHEDULE_LABEL: "nightly"}
        body["metadata"]["ownerReferences"] = [{"uid": schedule_uid, "controller": True}]
    return body


def test_a_run_wakes_its_schedule_and_a_status_write_does_not() -> None:
    wakeups = Wakeups()
    memo = memo_of(wakeups)
    wakeup = wakeups.register("s1")
    wakeup.generation = 1

    wake(as_body(object_body("s1", generation=1)), memo)  # its own status write
    wake(as_body(object_body("other", schedule_uid="s2")), memo)  # another schedule's run
    assert not wakeup.event.is_set()

    wake(as_body(object_body("run", schedule_uid="s1")), memo)
    assert wakeup.event.is_set()

    wakeup.event.clear()
    wake(as_body(object_body("s1", generation=2)), memo)  # a spec edit
    assert wakeup.event.is_set()


def test_kopf_invokes_the_wake_up_handler_only_when_it_wakes_someone() -> None:
    wakeups = Wakeups()
    memo = memo_of(wakeups)
    run_body = as_body(object_body("run", schedule_uid="s1"))
    assert not wakes_a_daemon(run_body, memo)  # no daemon yet (or any more)
    wakeups.register("s1")
    assert wakes_a_daemon(run_body, memo)


def test_a_replaced_daemon_keeps_its_wakeup() -> None:
    wakeups = Wakeups()
    old = wakeups.register("s1")
    new = wakeups.register("s1")
    wakeups.unregister("s1", old)
    wake(as_body(object_body("run", schedule_uid="s1")), memo_of(wakeups))
    assert new.event.is_set()


class Daemon:
    """The driver as Kopf runs it, with a step that records what it saw."""

    def __init__(self, raw: JsonDict) -> None:
        self.raw = raw
        self.wakeups = Wakeups()
        self.memo = memo_of(self.wakeups)
        self.stopper: FlagSetter[Any] = FlagSetter()
        self.seen: list[JsonDict] = []
        self.ticked = asyncio.Event()

    def run_for(self, body: JsonDict) -> Daemon:
        self.body = body
        return self

    async def reconcile(self) -> RetryLater:
        self.seen.append(self.body)
        self.ticked.set()
        return RetryLater(3600.0)

    async def cancelled(self) -> None:
        raise AssertionError("no step was cancelled")

    async def wait_for_tick(self, count: int) -> None:
        async with asyncio.timeout(2):
            while len(self.seen) < count:
                self.ticked.clear()
                await self.ticked.wait()

    async def settle(self) -> None:
        await asyncio.sleep(0.05)

    def start(self) -> asyncio.Task[None]:
        return asyncio.create_task(
            drive("Backup", as_body(self.raw), self.stopper.async_waiter, self.run_for, self.wakeups)
        )


@pytest.fixture
def daemon() -> Daemon:
    return Daemon(object_body("s1", generation=1))


def test_the_daemon_ticks_on_its_runs_and_spec_edits_only(daemon: Daemon) -> None:
    async def scenario() -> None:
        task = daemon.start()
        await daemon.wait_for_tick(1)

        daemon.raw["status"] = {"phase": "Scheduled"}  # its own status write arrives
        wake(as_body(daemon.raw), daemon.memo)
        await daemon.settle()
        assert len(daemon.seen) == 1

        wake(as_body(object_body("run", schedule_uid="s1")), daemon.memo)
        await daemon.wait_for_tick(2)

        daemon.raw["spec"] = {**daemon.raw["spec"], "suspend": True}
        daemon.raw["metadata"]["generation"] = 2
        wake(as_body(daemon.raw), daemon.memo)
        await daemon.wait_for_tick(3)
        assert daemon.seen[-1]["spec"]["suspend"] is True  # the latest body, not the one it started with

        # Kopf stops a daemon by setting its stopper: the sleeping daemon returns at once.
        daemon.stopper.set()
        async with asyncio.timeout(1):
            await task
        assert len(daemon.seen) == 3
        assert not wakes_a_daemon(as_body(object_body("run", schedule_uid="s1")), daemon.memo)

    asyncio.run(scenario())
