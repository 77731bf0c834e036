"""`kubectl habitat`: status, diagnose and the everyday actions on Habitat's custom resources.

Exit codes: 0 healthy, 1 findings, 2 could not check. Every command has --help; names of resources
complete in the shell through argcomplete (`eval "$(register-python-argcomplete kubectl-habitat)"`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import argcomplete

from habitat_operator.plugin import backup, completion, diagnose, replay, report, restore, status, suspend
from habitat_operator.plugin.exit_codes import ExitCode
from habitat_operator.plugin.kubectl import DEFAULT_TIMEOUT_SECONDS, Kubectl, KubectlError
from habitat_operator.plugin.output import FORMATS

PROG = "kubectl habitat"

# One module per command; each adds its subparser with register(commands), one line each so that
# branches adding commands do not collide. A command module imports only what its parser needs and
# the rest inside its run(): every invocation imports them all (tests/unit/test_plugin_cli.py).
COMMAND_MODULES: list[ModuleType] = [
    status,
    diagnose,
    backup,
    restore,
    replay,
    suspend,
    report,
]


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_global_flags(root, defaults=True)
    commands = root.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=CommandParser
    )
    for module in COMMAND_MODULES:
        module.register(commands)
    return root


class CommandParser(argparse.ArgumentParser):
    """A command's parser: it takes the global flags too, since kubectl passes `kubectl habitat status
    -n ns` on as `status -n ns`; their defaults come from the root parser only. A command may redefine
    one of them (`report -o report.zip`): the command's own wins."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("conflict_handler", "resolve")
        super().__init__(*args, **kwargs)
        add_global_flags(self, defaults=False)


def add_global_flags(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    group = parser.add_argument_group("global flags (as kubectl's)")
    scope = group.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        default=default(None),
        help="the namespace to look in or act on (default: the context's)",
    ).completer = completion.namespaces  # type: ignore[attr-defined]
    scope.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        default=default(False),
        help="look in every namespace (status, report)",
    )
    group.add_argument("--context", default=default(None), help="the kubeconfig context to use")
    group.add_argument("--kubeconfig", default=default(None), help="path of the kubeconfig file")
    group.add_argument(
        "-o", "--output", choices=FORMATS, default=default("table"), help="table (default), json or yaml"
    )
    group.add_argument(
        "--request-timeout",
        type=_seconds,
        default=default(DEFAULT_TIMEOUT_SECONDS),
        metavar="SECONDS",
        help=f"give up on the apiserver after this long (default {DEFAULT_TIMEOUT_SECONDS:g})",
    )


def main(argv: Sequence[str] | None = None) -> int:
    root = parser()
    argcomplete.autocomplete(root)
    args = root.parse_args(argv)
    try:
        return int(args.run(args, Kubectl.from_args(args)))
    except KubectlError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return ExitCode.COULD_NOT_CHECK


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("must be between 0 and 3600 seconds")
    return value
