"""`kubectl habitat replay`: its flags; the ReplayJob is built in plugin/replay_manifest.py."""

from __future__ import annotations

import argparse

from habitat_operator.plugin.flags import add_write_flags, run_from


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "replay",
        help="write a ReplayJob: republish a workflow's events",
        description=(
            "Write a ReplayJob for you, valid by construction: the events of --correlation-id (and the "
            "other criteria, all of which must match) republished to --to-exchange or --to-queue. With "
            "--dry-run it prints the YAML (for Git) and creates nothing."
        ),
    )
    parser.add_argument(
        "--correlation-id", action="append", metavar="ID", help="a workflow's events (repeat for more)"
    )
    parser.add_argument(
        "--type", action="append", metavar="TYPE", help="events of this type (repeat for more)"
    )
    parser.add_argument("--since", metavar="TIME", help="events that occurred at or after this RFC 3339 time")
    parser.add_argument("--until", metavar="TIME", help="events that occurred before this RFC 3339 time")
    to = parser.add_mutually_exclusive_group()
    to.add_argument("--to-exchange", metavar="EXCHANGE", help="publish to this exchange (its bound queues)")
    to.add_argument("--to-queue", metavar="QUEUE", help="publish to this queue alone")
    parser.add_argument(
        "--routing-key", help="with --to-exchange: one routing key for all (default: each event's)"
    )
    parser.add_argument(
        "--events-database",
        required=True,
        metavar="SECRET[/KEY]",
        help="Secret (key, default uri) of the event store's URI",
    )
    parser.add_argument("--table", default="events", help="the events table (default events)")
    parser.add_argument(
        "--broker",
        required=True,
        metavar="SECRET[/KEY]",
        help="Secret (key, default uri) of the broker's amqp:// URI",
    )
    parser.add_argument(
        "--rate-limit", type=int, metavar="PER_SECOND", help="at most this many events a second"
    )
    parser.add_argument(
        "--count-only", action="store_true", help="the ReplayJob counts and samples; publishes nothing"
    )
    add_write_flags(parser, "ReplayJob", "<correlation id>-<UTC time>")
    parser.set_defaults(run=run_from("replay_manifest", "write"))
