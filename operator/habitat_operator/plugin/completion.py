"""Shell completion of resource names (argcomplete completers): they ask the cluster through kubectl,
with the flags already typed on the command line, and offer nothing when kubectl fails.

Two ways in, both computed from the parser (no completion script is written by hand):
`kubectl-habitat` completes itself under argcomplete (`register-python-argcomplete kubectl-habitat`),
and `kubectl habitat <TAB>` asks the console script `kubectl_complete-habitat`, which kubectl (1.26
and later) runs with the words typed after `habitat` and reads in cobra's format.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import argcomplete

from habitat_operator.plugin.kubectl import Kubectl, KubectlError

# cobra's ShellCompDirectiveNoFileComp: the shell offers no file names when nothing else matches.
NO_FILE_COMPLETION = 4

Completer = Callable[..., list[str]]
_COMPLETION_TIMEOUT_SECONDS = 5.0


def resource_names(*resources: str, qualified: bool = False) -> Completer:
    """Names of `resources` in the namespace typed with -n (or the context's); `qualified` offers
    `kind/name`, as `suspend backup/nightly` takes."""

    def complete(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
        listed = _names(parsed_args, ",".join(resources))
        names = [_short(name) if qualified else name.split("/", 1)[1] for name in listed]
        return [name for name in names if name.startswith(prefix)]

    return complete


def namespaces(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    names = (name.split("/", 1)[1] for name in _names(parsed_args, "namespaces"))
    return [name for name in names if name.startswith(prefix)]


def _names(parsed_args: argparse.Namespace, resources: str) -> list[str]:
    kubectl = Kubectl(
        context=getattr(parsed_args, "context", None),
        kubeconfig=getattr(parsed_args, "kubeconfig", None),
        namespace=getattr(parsed_args, "namespace", None),
        timeout=_COMPLETION_TIMEOUT_SECONDS,
    )
    try:
        return kubectl.run("get", resources, "-o", "name").stdout.split()
    except KubectlError:
        return []


def _short(name: str) -> str:
    """kubectl's `backup.ops.habitat.dev/nightly` (`-o name`) as the `backup/nightly` a user types."""
    resource, _, object_name = name.partition("/")
    return f"{resource.split('.', 1)[0]}/{object_name}"


def kubectl_complete(argv: Sequence[str] | None = None) -> int:
    """`kubectl_complete-habitat WORDS... PARTIAL`: candidates for PARTIAL, one a line, then `:4`."""
    from habitat_operator.plugin.cli import parser

    words = list(sys.argv[1:] if argv is None else argv)
    line = " ".join(["kubectl-habitat", *words])  # the last word, even empty, is the one completed
    os.environ.update(
        {"_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)), "_ARGCOMPLETE_IFS": "\n"}
    )
    found = io.StringIO()
    root = parser()
    argcomplete.CompletionFinder(root)(root, output_stream=found, exit_method=lambda code: None)
    candidates = [word.rstrip() for word in found.getvalue().split("\n") if word.strip()]
    print("\n".join([*candidates, f":{NO_FILE_COMPLETION}"]))
    return 0
