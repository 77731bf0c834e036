"""`kubectl habitat report [--logs] -o report.zip`: its flags; the zip is made in plugin/support_report.py."""

from __future__ import annotations

import argparse

from habitat_operator.plugin.flags import bounded, run_from

DEFAULT_LOG_LINES = 2000
MAX_LOG_LINES = 100_000  # the report is built in memory


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "report",
        help="write a support report (zip) with every secret redacted",
        description=(
            "Write a zip for support: the Habitat resources and their Events, the CRDs' versions, the "
            "operator's Deployment and Pods and (--logs) its recent log. Secrets appear as names and "
            "keys only; every Secret value and every password in a URI is redacted."
        ),
    )
    parser.add_argument(
        "-o",
        "--output",
        dest="report_path",
        metavar="FILE",
        help="where to write the zip (default habitat-report-<UTC time>.zip)",
    )
    parser.add_argument("--logs", action="store_true", help="add the operator's recent log")
    parser.add_argument(
        "--log-lines",
        type=bounded(int, 1, MAX_LOG_LINES),
        default=DEFAULT_LOG_LINES,
        metavar="N",
        help=f"with --logs, the last N lines of each container (default {DEFAULT_LOG_LINES})",
    )
    parser.set_defaults(run=run_from("support_report", "write"))
