"""`habitat-operator run` runs the operator; `crds` writes the CRDs; `reference` the API docs; `events`
lists stored events; `catalog list` lists what a bucket holds (disaster recovery's first step); `wal
fetch` is a recovering PostgreSQL's restore_command."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from habitat_operator import events_command
from habitat_operator.config import OperatorConfig
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
        "--allowed-metrics-endpoints",
        metavar="PATTERNS",
        action="append",
        default=[],
        help="comma-separated host patterns (globs, host or host:port) that a ScalePolicy's Prometheus "
        "serverAddress and RabbitMQ URLs, and the management URL of a RabbitMQ definitions Backup or "
        "Restore, must match, e.g. '*.monitoring.svc,prometheus.example:9090'; "
        "others are refused (default: any; repeatable)",
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
    run.add_argument(
        "--replay-batch-bytes",
        type=_positive,
        default=OperatorConfig.replay_batch_bytes,
        help="bytes of events a ReplayJob reads per query and keeps awaiting confirms (default 8 MiB);"
        " a single larger event is still replayed, alone",
    )
    run.add_argument(
        "--peering",
        metavar="NAME",
        help="run as one of several replicas: the first started is active, the others stand by "
        "(Kopf peering through the ClusterKopfPeering, or each namespace's KopfPeering, of that name)",
    )
    run.add_argument(
        "--peering-lifetime",
        type=_positive,
        default=15,
        help="seconds without a keep-alive before standbys take over from the active replica",
    )
    run.add_argument("--log-format", choices=["json", "console"], default="console")
    run.add_argument("--verbose", "-v", action="store_true", help="debug logging")

    crds = commands.add_parser("crds", help="print the CRDs generated from the API models, or write them")
    crds.add_argument("--output", "-o", type=Path, help="directory to write one file per kind into")

    reference = commands.add_parser("reference", help="write the API reference (Markdown, one page per kind)")
    reference.add_argument("--output", "-o", type=Path, required=True, help="directory, e.g. docs/reference")

    catalog = commands.add_parser("catalog", help="what a bucket holds, from its catalog entries")
    catalog_commands = catalog.add_subparsers(dest="catalog_command", required=True)
    listing = catalog_commands.add_parser(
        "list",
        help="artifacts newest first; credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    )
    listing.add_argument("--storage", type=Path, help="YAML file holding an s3 block (as a Backup's storage)")
    listing.add_argument("--bucket")
    listing.add_argument("--prefix")
    listing.add_argument("--endpoint", help="URL of an S3-compatible server")
    listing.add_argument("--region")
    listing.add_argument("--force-path-style", action="store_true", default=None)
    listing.add_argument("--output", "-o", choices=["table", "json"], default="table")
    listing.add_argument(
        "--locked",
        action="store_true",
        help="only the catalog entries and versions written under Object Lock, as a Restore with"
        " objectLock reads them (after an attack: what newer versions and delete markers hide)",
    )
    check = catalog_commands.add_parser(
        "check",
        help="compare the bucket's Object Lock with the retention policy; exit 1 on findings, 2 when it"
        " cannot check",
    )
    check.add_argument(
        "--storage", type=Path, help="YAML file holding a Backup (its retention is compared) or an s3 block"
    )
    for flag in ("--bucket", "--prefix", "--endpoint", "--region"):
        check.add_argument(flag)
    check.add_argument("--force-path-style", action="store_true", default=None)

    wal = commands.add_parser("wal", help="a WalArchive's WAL, for a recovering PostgreSQL")
    wal_commands = wal.add_subparsers(dest="wal_command", required=True)
    fetch = wal_commands.add_parser(
        "fetch",
        help="restore_command: write an archived WAL file to a path; the archive and its key come from "
        "HABITAT_WAL_* environment variables; exit 1 when the archive does not hold the file",
    )
    fetch.add_argument("file_name", help="what PostgreSQL asks for (%%f)")
    fetch.add_argument("destination", type=Path, help="where PostgreSQL wants it (%%p)")

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

    if args.command == "reference":
        from habitat_operator.api.reference import write_reference

        for path in write_reference(args.output):
            print(path)
        return 0
    if args.command == "catalog":
        return _catalog(args)
    if args.command == "wal":
        from habitat_operator.engines.wal.fetch import run_fetch

        return run_fetch(args.file_name, args.destination, os.environ)

    from habitat_operator.health import limit_malloc_arenas

    limit_malloc_arenas()  # first: before anything starts a thread
    from habitat_operator import runtime
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
                allowed_metrics_endpoints=tuple(
                    p.strip()
                    for given in args.allowed_metrics_endpoints
                    for p in given.split(",")
                    if p.strip()
                ),
                replay_batch_bytes=args.replay_batch_bytes,
            ),
            slots=OperationSlots(args.max_concurrent_operations, args.max_operations_per_database),
            peering=runtime.Peering(args.peering, args.peering_lifetime) if args.peering else None,
            log_format=args.log_format,
            verbose=args.verbose,
        )
    )
    return 0


def _catalog(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from habitat_operator import catalog
    from habitat_operator.errors import OperationError

    flags = {
        "bucket": args.bucket,
        "prefix": args.prefix,
        "endpoint": args.endpoint,
        "region": args.region,
        "forcePathStyle": args.force_path_style,
    }
    try:
        if args.catalog_command == "check":
            return catalog.check_catalog(args.storage, flags, sys.stdout)
        storage = catalog.storage_from(args.storage, flags)
        catalog.list_catalog(storage, args.output, sys.stdout, locked=args.locked)
    except ValidationError as error:
        print(f"habitat-operator catalog: invalid storage: {error.errors()[0]['msg']}", file=sys.stderr)
        return 2
    except OperationError as error:
        print(f"habitat-operator catalog: {error.reason}: {error.message}", file=sys.stderr)
        return 2 if args.catalog_command == "check" else 1
    return 0
