"""`kubectl habitat suspend|resume <kind>/<name>`: flips spec.suspend of the kinds that have one.

Which kinds have it is read from the API models, not listed here: Backup and Restore (their
schedules), ReplayJob and WalArchive today. A one-shot Backup or Restore has nothing to suspend.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from habitat_operator.api import ALL_KINDS, GROUP, KindInfo
from habitat_operator.plugin.exit_codes import ExitCode
from habitat_operator.plugin.flags import habitat_resource
from habitat_operator.plugin.kubectl import Kubectl
from habitat_operator.plugin.waiting import follow
from habitat_operator.plugin.writing import UsageError, refused

SUSPENDABLE = [kind for kind in ALL_KINDS if "suspend" in kind.spec_model.model_fields]
# A kind whose suspend pauses a schedule only: its one-shot objects run once and cannot be paused.
SCHEDULED_ONLY = {kind.kind for kind in SUSPENDABLE if "schedule" in kind.spec_model.model_fields}


def suspendable_kind(reference: str) -> tuple[KindInfo, str]:
    """`kind/name` (any of kubectl's names of the kind, optionally with the group) as (kind, name)."""
    kind_name, slash, name = reference.partition("/")
    if not slash or not name:
        raise UsageError(f"{reference!r}: give KIND/NAME, e.g. backup/nightly")
    wanted = kind_name.lower().removesuffix(f".{GROUP}")
    for kind in SUSPENDABLE:
        if wanted in {kind.kind.lower(), kind.singular, kind.plural, *kind.short_names}:
            return kind, name
    kinds = ", ".join(kind.singular for kind in SUSPENDABLE)
    raise UsageError(f"{kind_name!r} cannot be suspended; these kinds can: {kinds}")


def refusal(kind: KindInfo, body: Mapping[str, Any]) -> str | None:
    """Why this object cannot be suspended or resumed, if it cannot."""
    spec = body.get("spec") or {}
    if kind.kind in SCHEDULED_ONLY and not spec.get("schedule"):
        return (
            f"{kind.singular}/{body['metadata']['name']} has no schedule: "
            f"only a scheduled {kind.kind} can be suspended"
        )
    return None


def toggle(args: argparse.Namespace, kubectl: Kubectl) -> int:
    try:
        kind, name = suspendable_kind(args.target)
    except UsageError as error:
        return refused(args.command, error)
    body = kubectl.json("get", habitat_resource(kind.plural), name)
    why = refusal(kind, body)
    if why:
        print(f"kubectl habitat {args.command}: {why}", file=sys.stderr)
        return ExitCode.COULD_NOT_CHECK
    done = "suspended" if args.suspend else "resumed"
    if bool((body.get("spec") or {}).get("suspend")) == args.suspend:
        return follow(kubectl, kind, name, f"{kind.singular}/{name} already {done}", args)
    patch = json.dumps({"spec": {"suspend": args.suspend}})
    kubectl.run("patch", habitat_resource(kind.plural), name, "--type=merge", "-p", patch)
    return follow(kubectl, kind, name, f"{kind.singular}/{name} {done}", args)
