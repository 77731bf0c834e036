"""The habitat_recoverability_* metrics, computed at scrape time: the live RPO grows every second,
and is exact at each scrape from the newest recoverable point's time, without a status write or a
wake-up of the object's daemon. Labels: namespace, name, kind; never anything from a Secret."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LABELS = ("namespace", "name", "kind")


@dataclass(frozen=True)
class RpoSeries:
    point: float  # Unix time of the newest recoverable point (the object's creation while none)
    objective: float


@dataclass(frozen=True)
class DrillSeries:
    last_drill: float  # Unix time of the newest successful drill (the schedule's creation while none)
    interval: float  # the drill schedule's expected interval: a drill older than two is too old
    rto: float | None  # the newest successful drill's wall time
    objective: float | None


_rpo: dict[tuple[str, str, str], RpoSeries] = {}
_drills: dict[tuple[str, str, str], DrillSeries] = {}


def set_rpo(kind: str, namespace: str, name: str, series: RpoSeries | None) -> None:
    """What the next scrapes compute the RPO from; None: the object has no RPO objective."""
    if series is None:
        _rpo.pop((namespace, name, kind), None)
    else:
        _rpo[(namespace, name, kind)] = series


def set_drills(kind: str, namespace: str, name: str, series: DrillSeries | None) -> None:
    if series is None:
        _drills.pop((namespace, name, kind), None)
    else:
        _drills[(namespace, name, kind)] = series


def forget(kind: str, namespace: str, name: str) -> None:
    set_rpo(kind, namespace, name, None)
    set_drills(kind, namespace, name, None)


def _gauge(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=LABELS)


class RecoverabilityCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.time()
        rpo = _gauge(
            "habitat_recoverability_rpo_seconds", "Live RPO: now minus the newest recoverable point."
        )
        rpo_objective = _gauge("habitat_recoverability_rpo_objective_seconds", "spec.objectives.rpo.")
        rto = _gauge(
            "habitat_recoverability_rto_seconds", "Measured RTO: wall time of the newest successful drill."
        )
        rto_objective = _gauge("habitat_recoverability_rto_objective_seconds", "spec.objectives.rto.")
        last_drill = _gauge(
            "habitat_recoverability_last_drill_timestamp_seconds",
            "Unix time of the newest successful drill (the schedule's creation while none succeeded).",
        )
        interval = _gauge(
            "habitat_recoverability_drill_interval_seconds", "Expected interval of the drill schedule."
        )
        met = _gauge(
            "habitat_recoverability_objectives_met", "1 when every objective of the object holds, else 0."
        )
        verdicts: dict[tuple[str, str, str], bool] = {}
        for key, series in sorted(_rpo.items()):
            age = max(0.0, now - series.point)
            rpo.add_metric(key, age)
            rpo_objective.add_metric(key, series.objective)
            verdicts[key] = age <= series.objective
        for key, drills in sorted(_drills.items()):
            last_drill.add_metric(key, drills.last_drill)
            interval.add_metric(key, drills.interval)
            ok = drills.rto is not None and now - drills.last_drill <= 2 * drills.interval
            if drills.rto is not None:
                rto.add_metric(key, drills.rto)
            if drills.objective is not None:
                rto_objective.add_metric(key, drills.objective)
                ok = ok and drills.rto is not None and drills.rto <= drills.objective
            verdicts[key] = verdicts.get(key, True) and ok
        for key, ok in sorted(verdicts.items()):
            met.add_metric(key, 1.0 if ok else 0.0)
        yield from (rpo, rpo_objective, rto, rto_objective, last_drill, interval, met)


REGISTRY.register(RecoverabilityCollector())
