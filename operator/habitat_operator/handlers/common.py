"""What every kind's Kopf glue shares: which objects get which daemon, and whom a watch event wakes.

Kopf fills every index from its initial listing before it starts any daemon, so a daemon's first
step after a restart sees all a schedule's runs and all ConfigMaps a Migration reads.
"""

from __future__ import annotations

from typing import Any

import kopf

from habitat_operator.controllers.base import kube
from habitat_operator.controllers.base.status import TERMINAL_PHASES
from habitat_operator.controllers.scheduling import child_runs
from habitat_operator.handlers.driver import Wakeup, Wakeups, shared


def has_schedule(spec: kopf.Spec, **_: Any) -> bool:
    return bool(spec.get("schedule"))


def is_one_shot(spec: kopf.Spec, **_: Any) -> bool:
    return not spec.get("schedule")


def is_unfinished_one_shot(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
    """A finished one-shot object matches no daemon, so it carries no finalizer and deletes at once,
    with or without an operator."""
    return not spec.get("schedule") and status.get("phase") not in TERMINAL_PHASES


def is_run_of_a_schedule(body: kopf.Body, **_: Any) -> bool:
    return child_runs.schedule_uid(body) is not None


def index_run(body: kopf.Body) -> dict[str, kube.JsonDict]:
    """A kind's runs index: each run under its schedule's uid (a Kopf index function's result)."""
    uid = child_runs.schedule_uid(body)
    assert uid is not None  # the index is filtered with is_run_of_a_schedule
    return {uid: child_runs.run_record(body)}


def to_wake(wakeups: Wakeups, body: kopf.Body) -> list[Wakeup]:
    """Whom a watch event concerns: the schedule of a run, or the object itself when its spec
    changed (a status write of its own is no reason to look again)."""
    found = []
    if (parent := child_runs.schedule_uid(body)) and (wakeup := wakeups.get(parent)):
        found.append(wakeup)
    own = wakeups.get(body["metadata"]["uid"])
    if own is not None and body["metadata"].get("generation") != own.generation:
        found.append(own)
    return found


def wakes_a_daemon(body: kopf.Body, memo: kopf.Memo, **_: Any) -> bool:
    """The filter of the wake-up handlers, so Kopf invokes (and logs) them only when one is due."""
    return bool(to_wake(shared(memo).wakeups, body))


def wake(body: kopf.Body, memo: kopf.Memo) -> None:
    for wakeup in to_wake(shared(memo).wakeups, body):
        wakeup.event.set()


def is_gone_with_its_series(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> bool:
    """The object was deleted, and the metrics series under its name are its own (a schedule's run
    counts under the schedule, whose series stay). A watch event, not a delete handler: those run
    only for objects that hold a finalizer, and a finished one-shot object holds none."""
    return event.get("type") == "DELETED" and child_runs.series_name(dict(body)) == body["metadata"]["name"]
