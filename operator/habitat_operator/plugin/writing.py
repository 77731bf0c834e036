"""What the commands that write an object share: print it for Git (`--dry-run`) or create it, and
follow it with `--wait`; flags that cannot make a valid object are refused in one line (exit 2)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from habitat_operator import timestamps
from habitat_operator.api.children import MAX_NAME, child_name
from habitat_operator.api.common import API_VERSION, DNS_SUBDOMAIN_PATTERN, ApiModel, KindInfo
from habitat_operator.plugin import waiting
from habitat_operator.plugin.exit_codes import ExitCode
from habitat_operator.plugin.kubectl import Kubectl
from habitat_operator.plugin.output import render


class UsageError(ValueError):
    """Flags that do not make one object; the message names them."""


def describe(error: UsageError | ValidationError) -> str:
    """One line: the flags' problem, or the first field the API models refused and why."""
    if isinstance(error, UsageError):
        return str(error)
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}" if where else f"{first['msg']}{more}"


def secret_key_ref(text: str, default_key: str) -> dict[str, str]:
    """`SECRET` or `SECRET/KEY` (neither a Secret's name nor a key may hold a slash)."""
    name, _, key = text.partition("/")
    return {"name": name, "key": key or default_key}


Command = Callable[[argparse.Namespace, Kubectl], int]


def writer(
    kind: KindInfo,
    spec_of: Callable[[argparse.Namespace], ApiModel],
    name_of: Callable[[argparse.Namespace], str],
) -> Command:
    """The command that builds a `kind`'s spec from the flags, then prints or creates it."""

    def run(args: argparse.Namespace, kubectl: Kubectl) -> int:
        try:
            spec = spec_of(args)
        except (UsageError, ValidationError) as error:
            return refused(args.command, error)
        if args.name is not None and not _is_name(args.name):
            return refused(args.command, UsageError(f"--name {args.name!r} is not a valid object name"))
        body = manifest(kind, args.name or name_of(args), kubectl.namespace, spec)
        return create_or_print(kubectl, body, args, kind)

    return run


def refused(command: str, error: UsageError | ValidationError) -> int:
    print(f"kubectl habitat {command}: {describe(error)}", file=sys.stderr)
    return ExitCode.COULD_NOT_CHECK


def create_or_print(
    kubectl: Kubectl, body: Mapping[str, Any], args: argparse.Namespace, kind: KindInfo
) -> int:
    """`--dry-run`: the object as YAML (or -o json) on stdout, nothing created. Else created (the
    apiserver validates it once more), then followed with `--wait`."""
    if args.dry_run:
        render(dict(body), "yaml" if args.output == "table" else args.output)
        return ExitCode.OK
    kubectl.run("create", "-f", "-", input=json.dumps(body))
    name = body["metadata"]["name"]
    return waiting.follow(kubectl, kind, name, f"{kind.singular}/{name} created", args)


def manifest(kind: KindInfo, name: str, namespace: str, spec: ApiModel) -> dict[str, Any]:
    """The whole object, with only the fields the user set (the CRD defaults the rest)."""
    return {
        "apiVersion": API_VERSION,
        "kind": kind.kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_defaults=True),
    }


def timestamped_name(stem: str, fallback: str) -> str:
    """<stem>-<UTC time>, named as a schedule's runs are; `fallback` when `stem` cannot start a name."""
    stem = stem.lower()
    return child_name(stem if _is_name(stem) else fallback, timestamps.now())


def _is_name(text: str) -> bool:
    return len(text) <= MAX_NAME and re.fullmatch(DNS_SUBDOMAIN_PATTERN, text) is not None
