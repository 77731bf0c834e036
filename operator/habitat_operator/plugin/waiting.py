"""`--wait`: follow an object the plugin created until its run has finished, for scripts.

Polls through kubectl (about 0.1 s a call) rather than `kubectl wait`, which waits for one outcome
only; a run ends either way and the exit code says which: 0 Succeeded, 1 Failed, 2 gave up waiting.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from habitat_operator.api.common import KindInfo, Phase
from habitat_operator.plugin.exit_codes import ExitCode
from habitat_operator.plugin.flags import habitat_resource
from habitat_operator.plugin.kubectl import Kubectl
from habitat_operator.plugin.output import render

POLL_SECONDS = 1.0


def outcome(body: Mapping[str, Any]) -> ExitCode | None:
    """The exit code for a finished run; None while it has not finished."""
    phase = (body.get("status") or {}).get("phase")
    if phase == Phase.SUCCEEDED:
        return ExitCode.OK
    if phase == Phase.FAILED:
        return ExitCode.FINDINGS
    return None


def why_not_yet(status: Mapping[str, Any]) -> str | None:
    """The run's own message, else what it waits for (a Stalled condition's message, e.g. a missing
    Secret): --wait shows it instead of waiting in silence."""
    if status.get("message"):
        return str(status["message"])
    stalled = next((c for c in status.get("conditions") or [] if c.get("type") == "Stalled"), None)
    if stalled and stalled.get("status") == "True":
        return str(stalled.get("message") or stalled.get("reason") or "")
    return None


def until_finished(
    kubectl: Kubectl, kind: KindInfo, name: str, timeout: float, stream: TextIO | None = None
) -> ExitCode:
    """Waits for the `kind` `name` to succeed or fail, telling each phase it passes through."""
    out = stream or sys.stdout
    deadline = time.monotonic() + timeout
    shown: tuple[str | None, str | None] | None = None
    while True:
        body = kubectl.json("get", habitat_resource(kind.plural), name)
        status = body.get("status") or {}
        phase = status.get("phase")
        why = why_not_yet(status)
        if (phase, why) != shown:
            out.write(f"{kind.singular}/{name}: {phase or 'Pending'}{f': {why}' if why else ''}\n")
            out.flush()
            shown = (phase, why)
        done = outcome(body)
        if done is not None:
            return done
        if time.monotonic() > deadline:
            out.write(
                f"{kind.singular}/{name}: still {phase or 'Pending'} after {timeout:g}s; stopped waiting\n"
            )
            return ExitCode.COULD_NOT_CHECK
        time.sleep(POLL_SECONDS)


def follow(kubectl: Kubectl, kind: KindInfo, name: str, done: str, args: argparse.Namespace) -> int:
    """Says what was done: a line for people; with -o json|yaml, the object itself on stdout (the
    line and the progress of --wait go to stderr). With --wait, the run's outcome is the exit code."""
    for_people = args.output == "table"
    progress = sys.stdout if for_people else sys.stderr
    print(done, file=progress)
    code = ExitCode.OK
    if getattr(args, "wait", False):
        code = until_finished(kubectl, kind, name, args.wait_timeout, progress)
    if not for_people:
        render(kubectl.json("get", habitat_resource(kind.plural), name), args.output)
    return code
