"""Recovery objectives: the verdicts (pure), a Backup schedule's live RPO, a drill schedule's measured
RTO and history, the CEL rules, and the metrics computed at scrape time."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from habitat_operator.api.backup import BackupSpec
from habitat_operator.api.children import child_body
from habitat_operator.api.restore import RestoreSpec
from habitat_operator.api.walarchive import WalArchiveSpec
from habitat_operator.config import OperatorConfig
from habitat_operator.controllers.backup import schedule as backup_schedule
from habitat_operator.controllers.base import recoverability_metrics
from habitat_operator.controllers.base.objectives import Drill, drill_verdict, rpo_verdict
from habitat_operator.controllers.restore import schedule as restore_schedule
from habitat_operator.controllers.scheduling import child_runs
from habitat_operator.controllers.scheduling.child_runs import ScheduleRuns
from habitat_operator.engines.postgres.amcheck import summarize
from tests.unit.bodies import DB_SECRET, DB_URI, NS, backup_body, restore_body
from tests.unit.conftest import START
from tests.unit.fake_kube import Clock, FakeKube, JsonDict

HOURLY = "0 * * * *"


def minutes(n: float) -> dt.timedelta:
    return dt.timedelta(minutes=n)


def stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- the verdicts


def test_rpo_within_then_over_the_objective() -> None:
    point = START
    inside = rpo_verdict("30m", point, START - minutes(60), START + minutes(10))
    assert inside.met and inside.flag.reason == "ObjectivesMet"
    assert (inside.recoverability.rpo, inside.recoverability.rpo_seconds) == ("10m", 600)
    assert inside.recheck_seconds == 20 * 60  # when time alone turns it
    over = rpo_verdict("30m", point, START - minutes(60), START + minutes(31))
    assert not over.met and over.flag.reason == "RPOExceeded"
    assert "2024-06-01T10:00:00Z" in over.flag.message and over.recheck_seconds is None


def test_rpo_with_nothing_recoverable_counts_from_creation() -> None:
    assert rpo_verdict("1h", None, START, START + minutes(59)).met
    late = rpo_verdict("1h", None, START, START + minutes(61))
    assert late.flag.reason == "RPOExceeded" and "nothing is recoverable yet" in late.flag.message


def test_rpo_figure_is_kept_while_the_verdict_holds_then_refreshed() -> None:
    first = rpo_verdict("1h", START, START, START + minutes(1))
    later = rpo_verdict("1h", START, START, START + minutes(4), first.recoverability)
    assert later.recoverability == first.recoverability  # no status write for a figure alone
    refreshed = rpo_verdict("1h", START, START, START + minutes(6), first.recoverability)
    assert refreshed.recoverability.rpo_seconds == 360


def test_drills_no_drill_rto_exceeded_too_old_and_met() -> None:
    max_age = dt.timedelta(days=2)
    assert drill_verdict("1m", [], max_age, START).flag.reason == "NoDrill"
    slow = Drill("d2", START, 75.0, 1 << 20)
    verdict = drill_verdict("1m", [slow, Drill("d1", START - minutes(60), 10.0, None)], max_age, START)
    assert verdict.flag.reason == "RTOExceeded" and not verdict.met
    assert "took 75.0s, over the RTO objective 1m" in verdict.flag.message
    measured = verdict.recoverability
    assert (measured.measured_rto, measured.measured_rto_seconds, measured.restored_size_bytes) == (
        "75s",
        75,
        1 << 20,
    )
    assert [d.run for d in measured.drills or []] == ["d2", "d1"]
    assert drill_verdict("2m", [slow], max_age, START).met
    stale = drill_verdict("2m", [slow], max_age, START + dt.timedelta(days=3))
    assert stale.flag.reason == "NoRecentDrill"


def test_drill_history_is_bounded() -> None:
    drills = [Drill(f"d{i}", START - minutes(i), 1.0, None) for i in range(30)]
    assert len(drill_verdict(None, drills, dt.timedelta(days=1), START).recoverability.drills or []) == 10


# ---------------------------------------------------------------- the CEL rules


def test_objectives_need_a_schedule_and_the_kinds_objective() -> None:
    base: dict[str, Any] = {
        "database": {"secretRef": {"name": "db"}},
        "storage": {"filesystem": {"path": "a"}},
    }
    with pytest.raises(ValidationError, match="objectives requires a schedule"):
        BackupSpec.model_validate({**base, "objectives": {"rpo": "1h"}})
    with pytest.raises(ValidationError, match=r"set objectives\.rto on the Restore drill"):
        BackupSpec.model_validate({**base, "schedule": HOURLY, "objectives": {"rto": "1h"}})
    with pytest.raises(ValidationError, match="objectives needs rpo or rto"):
        BackupSpec.model_validate({**base, "schedule": HOURLY, "objectives": {}})
    restore: dict[str, Any] = {
        "source": {"backupRef": {"name": "b"}},
        "target": {"database": {"secretRef": {"name": "db"}}},
        "drill": True,
    }
    with pytest.raises(ValidationError, match="objectives requires a drill schedule"):
        RestoreSpec.model_validate({**restore, "objectives": {"rto": "1m"}})
    with pytest.raises(ValidationError, match=r"measures objectives\.rto only"):
        RestoreSpec.model_validate({**restore, "schedule": HOURLY, "objectives": {"rpo": "1m"}})
    with pytest.raises(ValidationError, match=r"verify\.amcheck checks a drill"):
        RestoreSpec.model_validate({**restore, "drill": False, "verify": {"amcheck": True}})
    with pytest.raises(ValidationError, match=r"measures objectives\.rpo only"):
        WalArchiveSpec.model_validate({**base, "objectives": {"rto": "1m"}})


# ---------------------------------------------------------------- a Backup schedule's RPO


def tick(kube: FakeKube, kind: child_runs.ScheduledKind[Any], plural: str, name: str) -> float:
    body = kube.object(plural, NS, name)
    listed = asyncio.run(child_runs.list_children(plural, body))
    runs = ScheduleRuns(kind, lambda: listed)
    runs.observe(body)
    return asyncio.run(runs.reconcile()).seconds


def objectives_met(body: JsonDict) -> JsonDict:
    return next(c for c in body["status"]["conditions"] if c["type"] == "ObjectivesMet")


@pytest.fixture
def nightly(fake_kube: FakeKube) -> JsonDict:
    fake_kube.put_secret(NS, DB_SECRET, {"uri": DB_URI})
    return fake_kube.add("backups", backup_body(schedule=HOURLY, objectives={"rpo": "90m"}))


def succeeded_backup(kube: FakeKube, config: OperatorConfig, parent: JsonDict, scheduled: dt.datetime) -> str:
    body = child_body(parent, backup_schedule.kind(config).schedule_fields, scheduled)
    kube.add("backups", body)
    name = str(body["metadata"]["name"])
    done = scheduled + minutes(5)
    kube.set_status(
        "backups",
        NS,
        name,
        {"phase": "Succeeded", "startedAt": stamp(scheduled), "completedAt": stamp(done)},
    )
    return name


def test_a_backup_schedule_reports_its_live_rpo_and_wakes_when_it_is_exceeded(
    fake_kube: FakeKube, config: OperatorConfig, clock: Clock, nightly: JsonDict
) -> None:
    kind = backup_schedule.kind(config)
    assert "objectives" not in child_body(nightly, kind.schedule_fields, START)["spec"]
    clock.set(START + minutes(30))
    succeeded_backup(fake_kube, config, nightly, START + minutes(20))
    clock.set(START + minutes(40))
    delay = tick(fake_kube, kind, "backups", "nightly")
    body = fake_kube.object("backups", NS, "nightly")
    assert objectives_met(body)["status"] == "True"
    assert body["status"]["recoverability"]["rpo"] == "20m"
    assert body["status"]["recoverability"]["recoveryPoint"] == "2024-06-01T10:20:00Z"
    assert delay <= 20 * 60 + 1  # the next run at 11:00 comes first
    clock.set(START + minutes(111))  # suspended or failing: no newer run
    fake_kube.objects[("backups", NS, "nightly")]["spec"]["suspend"] = True
    delay = tick(fake_kube, kind, "backups", "nightly")
    body = fake_kube.object("backups", NS, "nightly")
    assert objectives_met(body)["reason"] == "RPOExceeded"
    assert body["status"]["recoverability"]["objectivesMet"] is False
    written = len(fake_kube.patches_of("nightly"))
    clock.advance(60)
    tick(fake_kube, kind, "backups", "nightly")
    assert len(fake_kube.patches_of("nightly")) == written  # the same verdict: nothing written


def test_removing_the_objectives_drops_the_condition(
    fake_kube: FakeKube, config: OperatorConfig, clock: Clock, nightly: JsonDict
) -> None:
    kind = backup_schedule.kind(config)
    tick(fake_kube, kind, "backups", "nightly")
    assert objectives_met(fake_kube.object("backups", NS, "nightly"))
    stored = fake_kube.objects[("backups", NS, "nightly")]
    del stored["spec"]["objectives"]
    stored["metadata"]["generation"] += 1
    tick(fake_kube, kind, "backups", "nightly")
    status = fake_kube.object("backups", NS, "nightly")["status"]
    assert "recoverability" not in status
    assert all(c["type"] != "ObjectivesMet" for c in status["conditions"])


# ---------------------------------------------------------------- a drill schedule's RTO


def test_a_drill_over_its_rto_reports_rto_exceeded_with_its_size_and_history(
    fake_kube: FakeKube, clock: Clock
) -> None:
    fake_kube.put_secret(NS, DB_SECRET, {"uri": DB_URI})
    parent = fake_kube.add(
        "restores", restore_body("weekly", drill=True, schedule=HOURLY, objectives={"rto": "1s"})
    )
    tick(fake_kube, restore_schedule.KIND, "restores", "weekly")
    assert objectives_met(fake_kube.object("restores", NS, "weekly"))["reason"] == "NoDrill"
    child = child_body(parent, restore_schedule.KIND.schedule_fields, START + minutes(60))
    fake_kube.add("restores", child)
    fake_kube.set_status(
        "restores",
        NS,
        child["metadata"]["name"],
        {
            "phase": "Succeeded",
            "startedAt": stamp(START + minutes(60)),
            "completedAt": stamp(START + minutes(61)),
            "durationSeconds": 3.5,
            "restoredFrom": {"backup": "nightly-x", "sizeBytes": 4096},
        },
    )
    clock.set(START + minutes(62))
    tick(fake_kube, restore_schedule.KIND, "restores", "weekly")
    body = fake_kube.object("restores", NS, "weekly")
    assert objectives_met(body)["reason"] == "RTOExceeded"
    measured = body["status"]["recoverability"]
    assert (measured["measuredRto"], measured["restoredSizeBytes"]) == ("3s", 4096)
    assert measured["drills"][0]["durationSeconds"] == 3.5
    fake_kube.objects[("restores", NS, "weekly")]["spec"]["objectives"] = {"rto": "10s"}
    tick(fake_kube, restore_schedule.KIND, "restores", "weekly")
    assert objectives_met(fake_kube.object("restores", NS, "weekly"))["status"] == "True"


# ---------------------------------------------------------------- metrics at scrape time


def sample(name: str, labels: dict[str, str]) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_the_rpo_metric_is_computed_at_scrape_time() -> None:
    labels = {"namespace": "ns-m", "name": "x", "kind": "Backup"}
    series = recoverability_metrics.RpoSeries(time.time() - 100, 60.0)
    recoverability_metrics.set_rpo("Backup", "ns-m", "x", series)
    try:
        rpo = sample("habitat_recoverability_rpo_seconds", labels)
        assert rpo is not None and 100 <= rpo < 110
        assert sample("habitat_recoverability_rpo_objective_seconds", labels) == 60.0
        assert sample("habitat_recoverability_objectives_met", labels) == 0.0
    finally:
        recoverability_metrics.forget("Backup", "ns-m", "x")
    assert sample("habitat_recoverability_rpo_seconds", labels) is None


def test_the_drill_metrics() -> None:
    labels = {"namespace": "ns-m", "name": "d", "kind": "Restore"}
    series = recoverability_metrics.DrillSeries(time.time() - 10, 3600.0, 4.0, 1.0)
    recoverability_metrics.set_drills("Restore", "ns-m", "d", series)
    try:
        assert sample("habitat_recoverability_rto_seconds", labels) == 4.0
        assert sample("habitat_recoverability_objectives_met", labels) == 0.0
        met = recoverability_metrics.DrillSeries(time.time() - 10, 3600.0, 0.5, 1.0)
        recoverability_metrics.set_drills("Restore", "ns-m", "d", met)
        assert sample("habitat_recoverability_objectives_met", labels) == 1.0
    finally:
        recoverability_metrics.forget("Restore", "ns-m", "d")


# ---------------------------------------------------------------- pg_amcheck's report


def test_amcheck_report_in_one_line() -> None:
    report = (
        'btree index "app.public.events_pkey":\n'
        "    ERROR:  index tuple size does not equal lp_len\n"
        "    DETAIL:  Index tid=(1,1) tuple size=12 lp_len=16.\n"
        'heap table "app.public.events", block 0, offset 3:\n'
        "    xmin 12 precedes relation freeze threshold\n"
    )
    assert summarize(report) == (
        'btree index "app.public.events_pkey": ERROR: index tuple size does not equal lp_len; '
        'heap table "app.public.events", block 0, offset 3: xmin 12 precedes relation freeze threshold'
    )
