"""`habitat-operator run` runs the operator; `crds` writes the CRDs; `events` lists stored events."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from habitat_operator import events_command
from habitat_operator.controllers.base.slots import DEFAULT_MAX_OPERATIONS, DEFAULT_MAX_PER_DATABASE


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="habitat-operator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the operator against the current kubeconfig or in-cluster")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable)"
    )
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)"
    )
    run.add_argument("--metrics-port", type=int, default=8080, help="port of /metrics, /healthz and /readyz")
    run.add_argument(
        "--backup-root",
        type=Path,
        default=Path("/var/lib/habitat/backups"),
        help="where artifacts are stored",
    )
    run.add_argument(
        "--scratch-dir",
        type=Path,
        default=None,
        help="where parallel restores decrypt encrypted artifacts (default: the system's temp folder)",
    )
    run.add_argument(
        "--allow-cross-namespace-restores",
        action="store_true",
        help="let a Restore name an artifact of another namespace by URI (for cluster administrators)",
    )
    run.add_argument(
        "--max-concurrent-operations",
        type=_positive,
        default=DEFAULT_MAX_OPERATIONS,
        help="backups and restores this operator runs at once; others wait, Queued",
    )
    run.add_argument(
        "--max-operations-per-database",
        type=_positive,
        default=DEFAULT_MAX_PER_DATABASE,
        help="backups and restores of one database at once; others wait, Queued",
    )
    run.add_argument("--log-format", choices=["json", "console"], default="console")
    run.add_argument("--verbose", "-v", action="store_true", help="debug logging")

    crds = commands.add_parser("crds", help="print the CRDs generated from the API models, or write them")
    crds.add_argument("--output", "-o", type=Path, help="directory to write one file per kind into")

    events_command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "events":
        return events_command.run(args)
    if args.command == "crds":
        from habitat_operator.api import crdgen

        if args.output:
            for path in crdgen.write_crds(args.output):
                print(path)
        else:
            sys.stdout.write(crdgen.render_all())
        return 0

    from habitat_operator import runtime
    from habitat_operator.config import OperatorConfig
    from habitat_operator.controllers.base.slots import OperationSlots

    runtime.run(
        runtime.Options(
            namespaces=args.namespace,
            metrics_port=args.metrics_port,
            config=OperatorConfig(
                backup_root=args.backup_root,
                allow_cross_namespace_restores=args.allow_cross_namespace_restores,
                namespaces=tuple(args.namespace),
                scratch_dir=args.scratch_dir,
            ),
            slots=OperationSlots(args.max_concurrent_operations, args.max_operations_per_database),
            log_format=args.log_format,
            verbose=args.verbose,
        )
    )
    return 0
