"""`kubectl habitat replay`: writes the ReplayJob for a workflow's events (api/replayjob.py).

Built with the API models, so it is valid by construction. `--dry-run` prints it as YAML for Git and
creates nothing; `--count-only` is the ReplayJob's own dry run (count and sample, publish nothing).
"""

from __future__ import annotations

import argparse
from datetime import datetime

from habitat_operator import timestamps
from habitat_operator.api.common import DatabaseRef, SecretKeyRef
from habitat_operator.api.replayjob import (
    REPLAYJOB,
    AmqpSecretRef,
    EventSelector,
    EventSource,
    ExchangeTarget,
    QueueTarget,
    RabbitMqRef,
    ReplayJobSpec,
    ReplayTarget,
)
from habitat_operator.plugin import writing
from habitat_operator.plugin.writing import (
    UsageError,
    secret_key_ref,
    timestamped_name,
)


def replay_spec(args: argparse.Namespace) -> ReplayJobSpec:
    """The ReplayJob's spec; raises UsageError or pydantic's ValidationError on flags that do not fit."""
    if not (args.to_exchange or args.to_queue):
        raise UsageError("say where the events go: --to-exchange NAME or --to-queue NAME")
    selector = EventSelector(
        correlation_ids=args.correlation_id or None,
        types=args.type or None,
        **{"from": _time(args.since)},
        to=_time(args.until),
    )
    target = ReplayTarget(
        rabbitmq=RabbitMqRef(secret_ref=AmqpSecretRef(**secret_key_ref(args.broker, "uri"))),
        exchange=ExchangeTarget(name=args.to_exchange, routing_key=args.routing_key)
        if args.to_exchange
        else None,
        queue=QueueTarget(name=args.to_queue) if args.to_queue else None,
    )
    source = EventSource(
        database=DatabaseRef(secret_ref=SecretKeyRef(**secret_key_ref(args.events_database, "uri"))),
        table=args.table,
    )
    return ReplayJobSpec(
        source=source, selector=selector, target=target, rate_limit=args.rate_limit, dry_run=args.count_only
    )


def _time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return timestamps.parse(text)
    except ValueError:
        raise UsageError(f"{text!r} is not an RFC 3339 time, e.g. 2026-12-07T10:00:00Z") from None


def default_name(args: argparse.Namespace) -> str:
    """<first correlation id>-<UTC time>, or replay-<UTC time> when the id cannot start a name."""
    return timestamped_name((args.correlation_id or ["replay"])[0], "replay")


write = writing.writer(REPLAYJOB, replay_spec, default_name)
