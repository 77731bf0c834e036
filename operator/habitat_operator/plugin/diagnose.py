"""`kubectl habitat diagnose`: the runbook's quick health check, as checks with PASS/WARN/FAIL and a hint.

The operator (Deployment, /readyz, version against the CRDs'), every Secret the resources name (and
the keys they need; values are never printed), the databases, brokers and queues they name, each S3
bucket (and its Object Lock against storage.s3.objectLock), the namespace's TLS Secrets, and the
alerts firing. Connections are tried from where the plugin runs, with a timeout: a cluster-internal
host may not resolve here, and the check says so. Exit code 1 when any check FAILs.
"""

from __future__ import annotations

import argparse

from habitat_operator.plugin.checks import Result, any_failed
from habitat_operator.plugin.exit_codes import ExitCode
from habitat_operator.plugin.kubectl import Kubectl
from habitat_operator.plugin.output import render


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "diagnose",
        help="the quick health check: PASS/WARN/FAIL with a hint each; exit 1 on any FAIL",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--prometheus-url", help="also list the Habitat alerts firing in this Prometheus")
    parser.add_argument(
        "--operator-url",
        help="the operator's metrics address (http://host:8080) when it runs outside the cluster;"
        " else its Deployment and Service are found by label",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="for each database, broker and bucket tried from here (default 5)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, kubectl: Kubectl) -> int:
    from habitat_operator.plugin.diagnosis import diagnose

    checks = diagnose(kubectl, args)
    rows = [check.row() for check in checks]
    render(rows, args.output)
    if args.output == "table":
        counts = {result: sum(c.result is result for c in checks) for result in Result}
        print(
            f"\n{counts[Result.FAIL]} FAIL, {counts[Result.WARN]} WARN, {counts[Result.PASS]} PASS;"
            f" connections tried from this machine with a {args.connect_timeout:g}s timeout"
        )
    return ExitCode.FINDINGS if any_failed(checks) else ExitCode.OK
