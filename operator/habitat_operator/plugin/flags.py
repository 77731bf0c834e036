"""What the commands' parsers share. Light on purpose: every invocation builds every parser, so
nothing here imports the API models (`kubectl habitat status -A` answers in under 2 s)."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

from habitat_operator.plugin.kubectl import Kubectl

# api.common.GROUP, which the parsers cannot import without the models; a unit test keeps them equal.
HABITAT_GROUP = "ops.habitat.dev"
DEFAULT_WAIT_SECONDS = 3600.0
MAX_WAIT_SECONDS = 7 * 24 * 3600.0


def run_from(module: str, function: str) -> Callable[[argparse.Namespace, Kubectl], int]:
    """A command's `run` that imports its work (and the models with it) only when it runs."""

    def run(args: argparse.Namespace, kubectl: Kubectl) -> int:
        work = getattr(importlib.import_module(f"habitat_operator.plugin.{module}"), function)
        return int(work(args, kubectl))

    return run


def habitat_resource(plural: str) -> str:
    """A kind's resource as kubectl takes it, qualified by the group so no other CRD's plural clashes."""
    return f"{plural}.{HABITAT_GROUP}"


def bounded(kind: type[int] | type[float], low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a number within [low, high], so no flag asks for an unbounded wait or log."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}")
        return value

    return parse


def add_wait_flags(parser: argparse.ArgumentParser, what: str) -> None:
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


def add_write_flags(parser: argparse.ArgumentParser, kind: str, default_name: str) -> None:
    """--name, --dry-run and the --wait flags of a command that writes a `kind`."""
    parser.add_argument("--name", help=f"name of the {kind} (default: {default_name})")
    parser.add_argument("--dry-run", action="store_true", help=f"print the {kind} as YAML; create nothing")
    add_wait_flags(parser, f"the {kind}")
