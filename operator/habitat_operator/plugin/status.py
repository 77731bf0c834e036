"""`kubectl habitat status`: every Habitat resource on one screen, what is failing first.

One `kubectl get habitat -o json` (the CRDs' category) fetches every kind; the rest is pure code over
the objects' JSON, so it tolerates status fields written by a newer operator (recoverability).
Exit code 1 when anything is failing: Stalled, phase Failed, or its objectives not met.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from habitat_operator import timestamps
from habitat_operator.durations import format_duration
from habitat_operator.formatting import human_size
from habitat_operator.plugin.exit_codes import ExitCode
from habitat_operator.plugin.kubectl import Kubectl
from habitat_operator.plugin.output import render_sections

Obj = Mapping[str, Any]
Row = dict[str, Any]
CATEGORY = "habitat"
# A condition of this type and status means the resource needs someone (besides phase Failed).
FAILING_CONDITIONS = {("Stalled", "True"), ("ObjectivesMet", "False")}


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "status",
        help="every Habitat resource on one screen, failing ones first",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, kubectl: Kubectl) -> int:
    items = kubectl.list([CATEGORY])
    sections = build(items, timestamps.now(), all_namespaces=args.all_namespaces)
    render_sections(sections, args.output)
    return ExitCode.FINDINGS if sections["problems"] else ExitCode.OK


def build(items: Iterable[Obj], now: dt.datetime, *, all_namespaces: bool = True) -> dict[str, list[Row]]:
    """The sections of the screen, in order; each a list of rows."""
    by_kind: dict[str, list[Obj]] = defaultdict(list)
    for item in items:
        by_kind[item.get("kind", "")].append(item)
    sections = {
        "problems": problems([item for kind in by_kind.values() for item in kind], now),
        "summary": summary(by_kind),
        "databases": databases(by_kind["Backup"], by_kind["Restore"], now),
        "migrations": [migration(item) for item in by_kind["Migration"]],
        "replays": [replay(item) for item in by_kind["ReplayJob"] if _phase(item) != "Succeeded"],
        "scalePolicies": [scale_policy(item) for item in by_kind["ScalePolicy"]],
        "walArchives": [wal_archive(item, now) for item in by_kind["WalArchive"]],
    }
    if not all_namespaces:
        for rows in sections.values():
            for row in rows:
                row.pop("namespace", None)
    return sections


def problems(items: Iterable[Obj], now: dt.datetime) -> list[Row]:
    rows: list[Row] = []
    for item in items:
        failing = failing_condition(item)
        if failing is None:
            continue
        since = failing.get("lastTransitionTime") or _status(item).get("completedAt")
        rows.append(
            {
                "namespace": _namespace(item),
                "resource": _ref(item),
                "condition": failing.get("type"),
                "reason": failing.get("reason"),
                "since": _age(since, now),
                "message": failing.get("message") or _status(item).get("message"),
            }
        )
    return sorted(rows, key=lambda row: (row["namespace"], row["resource"]))


def failing_condition(item: Obj) -> Mapping[str, Any] | None:
    """The condition that says why `item` is failing, or None when it is not."""
    conditions = _status(item).get("conditions") or []
    for condition in conditions:
        if (condition.get("type"), condition.get("status")) in FAILING_CONDITIONS:
            return dict(condition)
    if _phase(item) == "Failed":
        ready: Mapping[str, Any] = next((c for c in conditions if c.get("type") == "Ready"), {})
        return {"type": "Ready", "reason": ready.get("reason") or "Failed", **ready, "status": "False"}
    return None


def summary(by_kind: Mapping[str, list[Obj]]) -> list[Row]:
    rows: list[Row] = []
    for kind in sorted(by_kind):
        phases = Counter(_phase(item) or "Pending" for item in by_kind[kind])
        rows.append(
            {
                "kind": kind,
                "total": len(by_kind[kind]),
                "phases": ", ".join(f"{phase} {count}" for phase, count in sorted(phases.items())),
            }
        )
    return rows


def databases(backups: list[Obj], restores: list[Obj], now: dt.datetime) -> list[Row]:
    """One row per (namespace, database) backed up: its newest verified backup, its drills, and the
    live RPO and measured RTO of the Backup and drill schedules that protect it."""
    database_of = _databases_of(backups)
    groups: dict[tuple[str, str], list[Obj]] = defaultdict(list)
    for backup in backups:
        if database := database_of.get((_namespace(backup), _name(backup))):
            groups[(_namespace(backup), database)].append(backup)
    drill_schedules: dict[tuple[str, str], list[Obj]] = defaultdict(list)
    for schedule in restores:
        is_drill_schedule = _spec(schedule).get("schedule") and _spec(schedule).get("drill")
        if is_drill_schedule and (database := _drilled_database(schedule, restores, database_of)):
            drill_schedules[(_namespace(schedule), database)].append(schedule)
    drills = _drills_by_backup(restores)
    rows: list[Row] = []
    for (namespace, database), members in sorted(groups.items()):
        verified = [b for b in members if _status(b).get("verification") == "Verified" and _completed(b)]
        newest = max(verified, key=_completed, default=None)
        schedules = [b for b in members if _spec(b).get("schedule")]
        drilling = drill_schedules[(namespace, database)]
        rpo = _newest_recoverability(schedules, "rpoSeconds")
        rto = _newest_recoverability(drilling, "measuredRtoSeconds")
        drill = max(
            (d for b in members for d in drills.get((namespace, _name(b)), [])), key=_completed, default=None
        )
        verdicts = [
            met
            for s in (*schedules, *drilling)
            if (met := (_status(s).get("recoverability") or {}).get("objectivesMet")) is not None
        ]
        rows.append(
            {
                "namespace": namespace,
                "database": database,
                "newestVerifiedBackup": _name(newest) if newest else None,
                "backupAge": _age(_completed(newest), now) if newest else None,
                "rpo": _versus(rpo.get("rpo"), _objective(schedules, "rpo")),
                "rto": _versus(rto.get("measuredRto"), _objective(drilling, "rto")),
                "objectivesMet": all(verdicts) if verdicts else None,
                "newestDrill": f"{_name(drill)} ({_phase(drill)}, {_age(_completed(drill), now)} ago)"
                if drill
                else None,
            }
        )
    return rows


def _databases_of(backups: list[Obj]) -> dict[tuple[str, str], str]:
    """Each Backup's database; a schedule writes none of its own, so it takes its runs'."""
    found = {(_namespace(b), _name(b)): database for b in backups if (database := _status(b).get("database"))}
    for run in backups:
        owner = _controller(run)
        if owner and (database := found.get((_namespace(run), _name(run)))):
            found.setdefault((_namespace(run), owner), database)
    return found


def _drilled_database(
    schedule: Obj, restores: list[Obj], database_of: Mapping[tuple[str, str], str]
) -> str | None:
    """The database a drill schedule proves: that of the Backup its runs restored, or that it names."""
    namespace = _namespace(schedule)
    restored = [
        backup
        for run in restores
        if _namespace(run) == namespace and _controller(run) == _name(schedule)
        if (backup := (_status(run).get("restoredFrom") or {}).get("backup"))
    ]
    named = ((_spec(schedule).get("source") or {}).get("backupRef") or {}).get("name")
    return next(
        (database_of[(namespace, b)] for b in (*restored, named) if b and (namespace, b) in database_of), None
    )


def _objective(schedules: list[Obj], which: str) -> str | None:
    return next((o[which] for s in schedules if (o := _spec(s).get("objectives") or {}).get(which)), None)


def migration(item: Obj) -> Row:
    status = _status(item)
    return {
        "namespace": _namespace(item),
        "name": _name(item),
        "phase": _phase(item),
        "current": status.get("currentVersion"),
        "target": status.get("targetVersion"),
        "pending": status.get("pendingCount"),
        "dirty": status.get("dirtyVersion"),
    }


def replay(item: Obj) -> Row:
    status = _status(item)
    first_failure = status.get("firstFailure") or {}
    return {
        "namespace": _namespace(item),
        "name": _name(item),
        "phase": _phase(item),
        "progress": status.get("progress"),
        "percent": status.get("percent"),
        "eta": status.get("eta"),
        "failedEvents": status.get("failedEvents"),
        "firstFailure": first_failure.get("reason"),
    }


def scale_policy(item: Obj) -> Row:
    status = _status(item)
    decision = status.get("lastDecision") or {}
    return {
        "namespace": _namespace(item),
        "name": _name(item),
        "target": (_spec(item).get("target") or {}).get("name"),
        "desired": status.get("desiredReplicas"),
        "current": status.get("currentReplicas"),
        "phase": _phase(item),
        "lastDecision": decision.get("reason"),
    }


def wal_archive(item: Obj, now: dt.datetime) -> Row:
    status = _status(item)
    window = status.get("recoveryWindow") or {}
    lag = status.get("lagBytes")
    return {
        "namespace": _namespace(item),
        "name": _name(item),
        "phase": _phase(item),
        "windowFrom": window.get("from"),
        "windowTo": window.get("to"),
        "lag": human_size(lag) if isinstance(lag, int) else None,
        "rpo": _versus(
            (status.get("recoverability") or {}).get("rpo"), (_spec(item).get("objectives") or {}).get("rpo")
        ),
        "baseBackupAge": _age((status.get("lastBaseBackup") or {}).get("completedAt"), now),
    }


def _drills_by_backup(restores: list[Obj]) -> dict[tuple[str, str], list[Obj]]:
    """Finished drills (not their schedules) by the Backup they restored."""
    drills: dict[tuple[str, str], list[Obj]] = defaultdict(list)
    for restore in restores:
        backup = (_status(restore).get("restoredFrom") or {}).get("backup")
        if _spec(restore).get("drill") and backup and _completed(restore):
            drills[(_namespace(restore), backup)].append(restore)
    return drills


def _newest_recoverability(schedules: list[Obj], worst: str) -> Mapping[str, Any]:
    """The recoverability of the schedule with the largest figure, the one an objective misses first."""
    found = [_status(s)["recoverability"] for s in schedules if _status(s).get("recoverability")]
    return max(found, key=lambda r: r.get(worst) or 0, default={})


def _versus(actual: str | None, objective: str | None) -> str | None:
    if actual is None and objective is None:
        return None
    return f"{actual or '?'} / {objective}" if objective else actual


def _age(moment: str | None, now: dt.datetime) -> str | None:
    if not moment:
        return None
    try:
        return format_duration((now - timestamps.parse(moment)).total_seconds())
    except ValueError:
        return None


def _status(item: Obj) -> Mapping[str, Any]:
    return item.get("status") or {}


def _spec(item: Obj) -> Mapping[str, Any]:
    return item.get("spec") or {}


def _phase(item: Obj) -> str | None:
    phase = _status(item).get("phase")
    return str(phase) if phase else None


def _completed(item: Obj) -> str:
    return str(_status(item).get("completedAt") or "")


def _name(item: Obj) -> str:
    return str(item["metadata"]["name"])


def _controller(item: Obj) -> str | None:
    """The name of the object that controls `item` (a schedule, for its runs)."""
    references = item.get("metadata", {}).get("ownerReferences") or []
    return next((r.get("name") for r in references if r.get("controller")), None)


def _namespace(item: Obj) -> str:
    return str(item["metadata"].get("namespace", ""))


def _ref(item: Obj) -> str:
    return f"{str(item.get('kind', '')).lower()}/{_name(item)}"
