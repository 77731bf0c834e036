"""`kubectl habitat suspend|resume <kind>/<name>`: its flags; the work is in plugin/suspension.py."""

from __future__ import annotations

import argparse

from habitat_operator.plugin import completion
from habitat_operator.plugin.flags import habitat_resource, run_from

# The kinds whose spec has `suspend` (suspension.SUSPENDABLE reads them from the API models; a unit
# test keeps this list, which the parser uses without loading the models, the same).
SUSPENDABLE_KINDS = ("backup", "restore", "replayjob", "walarchive")


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    kinds = ", ".join(SUSPENDABLE_KINDS)
    for verb, suspend in (("suspend", True), ("resume", False)):
        what = "pause" if suspend else "resume"
        parser = commands.add_parser(
            verb,
            help=f"{what} a schedule, a replay or a WAL archiver (sets spec.suspend: {str(suspend).lower()})",
            description=(
                f"{what.capitalize()} KIND/NAME by setting its spec.suspend to {str(suspend).lower()}. "
                f"Kinds with a suspend switch: {kinds} (a Backup or Restore only with a schedule)."
            ),
        )
        parser.add_argument(
            "target", metavar="KIND/NAME", help=f"e.g. backup/nightly; kinds: {kinds}"
        ).completer = completion.resource_names(
            *(habitat_resource(f"{kind}s") for kind in SUSPENDABLE_KINDS), qualified=True
        )
        parser.set_defaults(run=run_from("suspension", "toggle"), suspend=suspend)
