"""`kubectl habitat backup <scheduled-backup>`'s work: a run of the schedule, now.

The run is the child a tick would create (api/children.py), so the schedule waits for it, counts
its success and prunes it like any other; only its trigger label says it was started by hand.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Mapping
from typing import Any

from habitat_operator import timestamps
from habitat_operator.api.backup import BACKUP, SCHEDULE_FIELDS
from habitat_operator.api.children import Trigger, child_body
from habitat_operator.plugin import waiting
from habitat_operator.plugin.exit_codes import ExitCode
from habitat_operator.plugin.flags import habitat_resource
from habitat_operator.plugin.kubectl import Kubectl, KubectlError

# Run names carry the time to the second: a second manual run in the same second waits for the next.
NAME_ATTEMPTS = 3


class NotASchedule(ValueError):
    """The Backup named has no schedule: it runs once by itself, there is nothing to start."""


def manual_run(schedule: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    """The child Backup that runs `schedule`'s spec now, labelled as started by hand."""
    if not (schedule.get("spec") or {}).get("schedule"):
        name = schedule["metadata"]["name"]
        raise NotASchedule(f"backup/{name} has no schedule: a one-shot Backup runs once by itself")
    return child_body(schedule, SCHEDULE_FIELDS, now, Trigger.MANUAL)


def start(args: argparse.Namespace, kubectl: Kubectl) -> int:
    schedule = kubectl.json("get", habitat_resource(BACKUP.plural), args.schedule)
    for attempt in range(NAME_ATTEMPTS):
        try:
            body = manual_run(schedule, timestamps.now())
        except NotASchedule as error:
            print(f"kubectl habitat backup: {error}", file=sys.stderr)
            return ExitCode.COULD_NOT_CHECK
        try:
            kubectl.run("create", "-f", "-", input=json.dumps(body))
            break
        except KubectlError as error:
            if "AlreadyExists" not in str(error) and "already exists" not in str(error):
                raise
            if attempt == NAME_ATTEMPTS - 1:
                raise
            time.sleep(1)
    name = body["metadata"]["name"]
    return waiting.follow(
        kubectl, BACKUP, name, f"{BACKUP.singular}/{name} created (a manual run of {args.schedule})", args
    )
