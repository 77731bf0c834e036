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

from habitat_operator.api.common import GROUP, KindInfo, Phase
from habitat_operator.plugin.exit_codes import ExitCode
from habitat_operator.plugin.flag_types import bounded
from habitat_operator.plugin.kubectl import Kubectl

POLL_SECONDS = 1.0
DEFAULT_WAIT_SECONDS = 3600.0
MAX_WAIT_SECONDS = 7 * 24 * 3600.0


def add_flags(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--wait",
        action="store_true",
        help=f"wait until {what} has finished: exit 0 when it succeeded, 1 when it failed",
    )
    parser.add_argument(
        "--wait-timeout",
        type=bounded(float, 1, MAX_WAIT_SECONDS),
        default=DEFAULT_WAIT_SECONDS,
        metavar="SECONDS",
        help=f"with --wait, give up (exit 2) after this long (default {DEFAULT_WAIT_SECONDS:g})",
    )


def outcome(body: Mapping[str, Any]) -> ExitCode | None:
    """The exit code for a finished run; None while it has not finished."""
    phase = (body.get("status") or {}).get("phase")
    if phase == Phase.SUCCEEDED:
        return ExitCode.OK
    if phase == Phase.FAILED:
        return ExitCode.FINDINGS
    return None


def until_finished(
    kubectl: Kubectl, kind: KindInfo, name: str, timeout: float, stream: TextIO | None = None
) -> ExitCode:
    """Waits for the `kind` `name` to succeed or fail, telling each phase it passes through."""
    out = stream or sys.stdout
    deadline = time.monotonic() + timeout
    shown = None
    while True:
        body = kubectl.json("get", f"{kind.plural}.{GROUP}", name)
        status = body.get("status") or {}
        phase = status.get("phase")
        if phase != shown:
            message = f": {status['message']}" if status.get("message") else ""
            out.write(f"{kind.singular}/{name}: {phase or 'Pending'}{message}\n")
            out.flush()
            shown = phase
        done = outcome(body)
        if done is not None:
            return done
        if time.monotonic() > deadline:
            out.write(
                f"{kind.singular}/{name}: still {phase or 'Pending'} after {timeout:g}s; stopped waiting\n"
            )
            return ExitCode.COULD_NOT_CHECK
        time.sleep(POLL_SECONDS)
