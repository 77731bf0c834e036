"""Shell completion of resource names (argcomplete completers): they ask the cluster through kubectl,
with the flags already typed on the command line, and offer nothing when kubectl fails."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from habitat_operator.plugin.kubectl import Kubectl, KubectlError

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
