"""`habitat-operator events`: lists or counts the stored events a selector matches, to look before replaying.

The selector is a ReplayJob's (flags, or `-f` with a ReplayJob manifest or a bare selector), checked
by the same model as the CRD and read by the same queries as the operator, so what it lists is what a
ReplayJob with that selector replays.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from habitat_operator import timestamps
from habitat_operator.api.replayjob import EventSelector, EventSource
from habitat_operator.controllers.base.validation import describe_validation_error
from habitat_operator.engines.postgres import events
from habitat_operator.engines.postgres.events import BEFORE_FIRST_ID, Event, EventStore
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.errors import OperationError
from habitat_operator.formatting import text_table

URI_VARIABLE = "HABITAT_EVENTS_DATABASE_URI"
COLUMNS = ("ID", "TYPE", "OCCURRED-AT", "CORRELATION-ID", "ROUTING-KEY")


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "events", help="list or count the stored events a ReplayJob selector matches (nothing is published)"
    )
    parser.add_argument(
        "--database-uri",
        default=os.environ.get(URI_VARIABLE),
        help=f"the event store's libpq URI (default: ${URI_VARIABLE})",
    )
    parser.add_argument("-f", "--filename", type=Path, help="a ReplayJob manifest, or a selector, in YAML")
    parser.add_argument("--table", help="events table (default: events, or the manifest's)")
    parser.add_argument(
        "--column", action="append", default=[], metavar="FIELD=NAME", help="e.g. eventType=kind"
    )
    parser.add_argument("--event-id", action="append", type=int, dest="event_ids", help="repeatable")
    parser.add_argument("--type", action="append", dest="types", help="event type (repeatable)")
    parser.add_argument("--from", dest="from_", metavar="TIME", help="occurred at or after (RFC 3339)")
    parser.add_argument("--to", metavar="TIME", help="occurred before (RFC 3339)")
    parser.add_argument("--correlation-id", action="append", dest="correlation_ids", help="repeatable")
    parser.add_argument(
        "--where",
        action="append",
        metavar="'COLUMN OPERATOR [VALUE[,VALUE...]]'",
        help="e.g. 'payload.account in acct-1,acct-2' (repeatable)",
    )
    parser.add_argument("--limit", type=int, default=100, help="events to list; 0 lists all (default 100)")
    parser.add_argument("--count", action="store_true", help="print only how many events match")
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")


def _where(text: str) -> dict[str, Any]:
    column, _, rest = text.strip().partition(" ")
    operator, _, value = rest.strip().partition(" ")
    clause: dict[str, Any] = {"column": column, "operator": operator}
    if operator in ("in", "notIn"):
        clause["values"] = value.split(",")
    elif value:
        clause["value"] = value
    return clause


def _from_file(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(selector, source) of a ReplayJob manifest, or (the document, {}) for a bare selector."""
    document = yaml.safe_load(path.read_text()) or {}
    if document.get("kind") == "ReplayJob":
        spec = document.get("spec") or {}
        return spec.get("selector") or {}, spec.get("source") or {}
    return document, {}


def _request(args: argparse.Namespace) -> tuple[EventSelector, EventStore]:
    selector, source = _from_file(args.filename) if args.filename else ({}, {})
    flags = {
        "eventIds": args.event_ids,
        "types": args.types,
        "from": args.from_,
        "to": args.to,
        "correlationIds": args.correlation_ids,
        "where": [_where(w) for w in args.where] if args.where else None,
    }
    selector = {**selector, **{k: v for k, v in flags.items() if v is not None}}
    columns = {**source.get("columns", {}), **dict(c.split("=", 1) for c in args.column)}
    table = args.table or source.get("table") or "events"
    checked = EventSelector.model_validate(selector)
    # The database comes from the flag, not a Secret: the reference only completes the model.
    checked_source = EventSource.model_validate(
        {"database": {"secretRef": {"name": "cli"}}, "table": table, "columns": columns}
    )
    return checked, EventStore(checked_source.table, checked_source.columns)


def _row(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "eventType": event.event_type,
        "occurredAt": timestamps.rfc3339(event.occurred_at),
        "correlationId": event.correlation_id,
        "routingKey": event.routing_key,
        "payload": json.loads(event.payload) if event.payload else None,  # empty: SQL NULL
        "headers": event.headers,
    }


async def _query(args: argparse.Namespace, selector: EventSelector, store: EventStore) -> int:
    async with events.connect(ConnectionTarget(args.database_uri)) as reader:
        store = await reader.check_columns(store)
        store.check_selector(selector)
        snapshot = await reader.snapshot(store, selector)
        if args.count:
            print(snapshot.count)
            return 0
        listed: list[Event] = []
        if snapshot.upper is not None and args.limit:
            listed = await reader.page(store, selector, BEFORE_FIRST_ID, snapshot.upper, args.limit)
        elif snapshot.upper is not None:
            async for page in reader.pages(store, selector, BEFORE_FIRST_ID, snapshot.upper, 1000):
                listed.extend(page)
    if args.output == "json":
        print(json.dumps([_row(e) for e in listed], indent=2))
        return 0
    rows = [COLUMNS] + [
        (
            str(e.id),
            e.event_type,
            timestamps.rfc3339(e.occurred_at),
            e.correlation_id or "",
            e.routing_key or "",
        )
        for e in listed
    ]
    print(text_table(rows), end="")
    if len(listed) < snapshot.count:
        print(f"({len(listed)} of {snapshot.count} events; --limit 0 lists all)", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    if not args.database_uri:
        print(f"events: give --database-uri or set ${URI_VARIABLE}", file=sys.stderr)
        return 2
    try:
        selector, store = _request(args)
        return asyncio.run(_query(args, selector, store))
    except ValidationError as error:
        print(f"events: {describe_validation_error(error, root='selector')}", file=sys.stderr)
    except OperationError as error:
        print(f"events: {error.message}", file=sys.stderr)
    return 1
