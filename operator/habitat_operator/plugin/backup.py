"""`kubectl habitat backup <scheduled-backup> [--wait]`: a run of a schedule, now (plugin/manual_run.py)."""

from __future__ import annotations

import argparse

from habitat_operator.plugin import completion
from habitat_operator.plugin.flags import add_wait_flags, habitat_resource, run_from


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "backup",
        help="start a run of a scheduled Backup now",
        description=(
            "Start a run of a scheduled Backup now: a child Backup exactly like a scheduled run, "
            "labelled ops.habitat.dev/trigger=manual. The schedule counts it and its retention prunes it."
        ),
    )
    parser.add_argument(
        "schedule", metavar="SCHEDULED_BACKUP", help="name of a Backup with a schedule"
    ).completer = completion.resource_names(habitat_resource("backups"))
    add_wait_flags(parser, "the run")
    parser.set_defaults(run=run_from("manual_run", "start"))
