"""ReplayJob: publishes processed events from the PostgreSQL event store to RabbitMQ, once.

No raw SQL anywhere in the spec: the table and columns are identifiers (quoted by the engine), and a
`where` filter names a column of the event-store contract, an operator from a fixed list and values
that are bound as parameters.
"""

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field

from habitat_operator.api.common import (
    ApiModel,
    CelRule,
    DatabaseRef,
    Duration,
    KindInfo,
    PrinterColumn,
    RetryPolicy,
    RunStatus,
    SecretName,
    TransitionRule,
    exactly_one_of,
)

IDENTIFIER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$"
TABLE_PATTERN = r"^([A-Za-z_][A-Za-z0-9_$]{0,62}\.)?[A-Za-z_][A-Za-z0-9_$]{0,62}$"
# A column of the contract, or one top-level key of the payload or headers.
WHERE_COLUMN_PATTERN = (
    r"^(id|eventType|occurredAt|routingKey|correlationId"
    r"|payload\.[A-Za-z_][A-Za-z0-9_]{0,62}|headers\.[A-Za-z_][-A-Za-z0-9_]{0,62})$"
)
AMQP_NAME_PATTERN = r"^[-A-Za-z0-9_.:]{1,255}$"
MAX_LIST = 1000

Identifier = Annotated[str, Field(pattern=IDENTIFIER_PATTERN, max_length=63)]
Text = Annotated[str, Field(max_length=1024)]
TextList = Annotated[list[Text], Field(min_length=1, max_length=MAX_LIST)]
EventId = Annotated[int, Field(ge=0, json_schema_extra={"format": "int64"})]


class ReplayReason(StrEnum):
    """Condition and Event reasons of ReplayJob's own; the shared ones are in `Reason`."""

    REPLAYING = "Replaying"
    DRY_RUN = "DryRun"
    SELECTION_TOO_LARGE = "SelectionTooLarge"
    BROKER_UNAVAILABLE = "BrokerUnavailable"
    TARGET_NOT_FOUND = "TargetNotFound"
    MESSAGE_RETURNED = "MessageReturned"
    MESSAGE_NACKED = "MessageNacked"
    MESSAGE_NOT_ENCODABLE = "MessageNotEncodable"
    MESSAGE_TOO_LARGE = "MessageTooLarge"
    MESSAGE_REFUSED = "MessageRefused"
    WAITING_FOR_TRANSACTIONS = "WaitingForTransactions"


class WhereOperator(StrEnum):
    """The allow-listed comparisons of a `where` filter."""

    EQ = "eq"
    NE = "ne"
    LT = "lt"
    LTE = "lte"
    GT = "gt"
    GTE = "gte"
    LIKE = "like"
    IN = "in"
    NOT_IN = "notIn"
    IS_NULL = "isNull"
    IS_NOT_NULL = "isNotNull"


LIST_OPERATORS = frozenset({WhereOperator.IN, WhereOperator.NOT_IN})
NULL_OPERATORS = frozenset({WhereOperator.IS_NULL, WhereOperator.IS_NOT_NULL})


class OnError(StrEnum):
    """What a nacked, returned (unroutable), refused (too large) or unencodable message does to the replay."""

    FAIL = "fail"
    CONTINUE = "continue"


class ColumnMap(ApiModel):
    """The event store's column names, when they differ from the contract's defaults."""

    id: Identifier = Field("id", description="bigint, increasing: the order of replay and the message id.")
    event_type: Identifier = Field("event_type", description="text: the event's type.")
    occurred_at: Identifier = Field("occurred_at", description="timestamptz: when the event occurred.")
    payload: Identifier = Field(
        "payload", description="jsonb: the message body, published unchanged (SQL NULL: an empty body)."
    )
    routing_key: Identifier | None = Field(
        None,
        description="text, nullable: the original routing key. Optional: by default routing_key,"
        " or none if the table has no such column.",
    )
    correlation_id: Identifier | None = Field(
        None,
        description="text, nullable: the workflow or aggregate the event belongs to. Optional: by"
        " default correlation_id, or none if the table has no such column.",
    )
    headers: Identifier | None = Field(
        None,
        description="jsonb, nullable: the original message headers. Optional: by default headers,"
        " or none if the table has no such column.",
    )


# The optional columns' names when spec.source.columns leaves them out; a table without one has none.
OPTIONAL_COLUMNS = {"routing_key": "routing_key", "correlation_id": "correlation_id", "headers": "headers"}


class EventSource(ApiModel):
    """Where the processed events are stored."""

    database: DatabaseRef = Field(description="The event store's database.")
    table: str = Field(
        "events", pattern=TABLE_PATTERN, max_length=127, description="Table name, optionally schema.table."
    )
    columns: ColumnMap = Field(
        default_factory=ColumnMap, description="Column names, when they differ from the defaults."
    )


class WhereClause(ApiModel):
    """One comparison; every value is bound as a query parameter, never written into SQL."""

    cel_rules = (
        CelRule(
            "self.operator in ['in', 'notIn'] ? (has(self.values) && !has(self.value))"
            " : self.operator in ['isNull', 'isNotNull'] ? (!has(self.values) && !has(self.value))"
            " : (has(self.value) && !has(self.values))",
            "in and notIn take values; isNull and isNotNull take nothing; the others take value",
            lambda c: (
                (c.values is not None and c.value is None)
                if c.operator in LIST_OPERATORS
                else (c.values is None and c.value is None)
                if c.operator in NULL_OPERATORS
                else (c.value is not None and c.values is None)
            ),
        ),
    )

    column: str = Field(
        pattern=WHERE_COLUMN_PATTERN,
        max_length=80,
        description="id, eventType, occurredAt, routingKey, correlationId, payload.<key> or headers.<key>.",
    )
    operator: WhereOperator = Field(
        description="eq, ne, lt, lte, gt, gte, like, in, notIn, isNull, isNotNull."
    )
    value: Text | None = Field(
        None, description="The value compared with (all but in, notIn and the null tests)."
    )
    values: Annotated[list[Text], Field(min_length=1, max_length=100)] | None = Field(
        None, description="The values of in and notIn."
    )


class EventSelector(ApiModel):
    """Which events to replay: every given criterion must match (AND); lists match any member (OR)."""

    cel_rules = (
        CelRule(
            "has(self.eventIds) || has(self.types) || has(self.from) || has(self.to)"
            " || has(self.correlationIds) || has(self.where)",
            "selector needs at least one of eventIds, types, from, to, correlationIds, where",
            lambda s: any(
                v is not None for v in (s.event_ids, s.types, s.from_, s.to, s.correlation_ids, s.where)
            ),
        ),
        CelRule(
            "!has(self.from) || !has(self.to) || self.from < self.to",
            "selector.to must be after selector.from",
            lambda s: s.from_ is None or s.to is None or s.from_ < s.to,
        ),
    )

    event_ids: Annotated[list[EventId], Field(min_length=1, max_length=MAX_LIST)] | None = Field(
        None, description="Single events by id."
    )
    types: TextList | None = Field(None, description="Event types.")
    from_: datetime | None = Field(
        None, alias="from", description="Events that occurred at or after this time (RFC 3339)."
    )
    to: datetime | None = Field(None, description="Events that occurred before this time (RFC 3339).")
    correlation_ids: TextList | None = Field(
        None, description="Whole workflows: every event of these correlation ids (e.g. a period-close run)."
    )
    where: Annotated[list[WhereClause], Field(min_length=1, max_length=20)] | None = Field(
        None, description="Further comparisons on columns, payload or header keys."
    )


class AmqpSecretRef(ApiModel):
    """A key of a Secret in the resource's namespace holding an amqp:// URI."""

    name: SecretName
    key: str = Field("uri", max_length=253, description="Key whose value is an amqp:// or amqps:// URI.")


class RabbitMqRef(ApiModel):
    """Which broker to publish to."""

    secret_ref: AmqpSecretRef = Field(description="Secret key holding the broker's amqp:// URI.")


class ExchangeTarget(ApiModel):
    """Publish to an exchange: every queue bound to it sees the replay (the normal fan-out)."""

    name: Annotated[str, Field(pattern=AMQP_NAME_PATTERN)] = Field(description="Exchange name.")
    routing_key: Annotated[str, Field(max_length=255)] | None = Field(
        None, description="A fixed routing key; by default each event's own routing key column."
    )


class QueueTarget(ApiModel):
    """Publish through the default exchange to one queue: only that queue's consumers see the replay."""

    name: Annotated[str, Field(pattern=AMQP_NAME_PATTERN)] = Field(description="Queue name.")


class ReplayTarget(ApiModel):
    """Where the events go: an exchange, or exactly one queue."""

    cel_rules = (exactly_one_of("target", "exchange", "queue"),)

    rabbitmq: RabbitMqRef = Field(description="The broker.")
    exchange: ExchangeTarget | None = Field(None, description="Publish to this exchange.")
    queue: QueueTarget | None = Field(None, description="Publish to this queue alone (default exchange).")


# Everything but suspend and rateLimit is fixed once the job exists: a selection never changes under it.
_IMMUTABLE = (
    "source",
    "selector",
    "target",
    "batchSize",
    "dryRun",
    "sampleSize",
    "maxEvents",
    "onError",
    "checkpointInterval",
    "retry",
)


def _unchanged(old: Any, new: Any) -> bool:
    """The rule in Python, over the same fields as the CEL rule."""
    before, after = old.model_dump(by_alias=True), new.model_dump(by_alias=True)
    return all(before[field] == after[field] for field in _IMMUTABLE)


class ReplayJobSpec(ApiModel):
    """Desired replay: which events, from where, to where, how fast."""

    cel_rules = (
        TransitionRule(
            " && ".join(
                f"has(self.{f}) == has(oldSelf.{f}) && (!has(self.{f}) || self.{f} == oldSelf.{f})"
                for f in _IMMUTABLE
            ),
            "only suspend and rateLimit of a ReplayJob can change; create a new ReplayJob to replay again",
            _unchanged,
        ),
    )

    source: EventSource = Field(description="The event store.")
    selector: EventSelector = Field(description="Which events to replay.")
    target: ReplayTarget = Field(description="Where to publish them.")
    rate_limit: int | None = Field(
        None, ge=1, le=1_000_000, description="At most this many events per second."
    )
    batch_size: int = Field(1000, ge=1, le=10_000, description="Events read from the database per query.")
    dry_run: bool = Field(False, description="Count the selection and show a sample; publish nothing.")
    sample_size: int = Field(10, ge=0, le=100, description="Events a dry run shows in status.sample.")
    suspend: bool = Field(False, description="Pause; unsetting it resumes from the checkpoint.")
    max_events: int = Field(
        100_000,
        ge=1,
        json_schema_extra={"format": "int64"},
        description="Refuse a selection larger than this (a guard against runaway replays).",
    )
    on_error: OnError = Field(
        OnError.FAIL,
        description="fail or continue when the broker nacks, returns (unroutable) or refuses (too"
        " large) a message, or AMQP cannot carry its headers.",
    )
    checkpoint_interval: Duration = Field("2s", description="How often progress is written to status.")
    retry: RetryPolicy = Field(
        RetryPolicy(limit=10, backoff="5s"), description="Retries while the broker or database is down."
    )


class SampleEvent(ApiModel):
    """One event of a dry run's sample."""

    id: EventId = Field(description="The event's id.")
    event_type: str | None = Field(None, description="Its type.")
    occurred_at: str | None = Field(None, description="When it occurred (RFC 3339).")
    routing_key: str | None = Field(None, description="Its routing key column.")
    correlation_id: str | None = Field(None, description="Its workflow or aggregate.")


class ReplayFailure(ApiModel):
    """The first message the broker nacked, returned or refused, or that AMQP could not carry."""

    event_id: EventId = Field(description="The event's id.")
    reason: str = Field(
        description="MessageReturned, MessageNacked, MessageTooLarge, MessageRefused or MessageNotEncodable."
    )
    message: str = Field(description="What the broker said.")


class ReplayJobStatus(RunStatus):
    """Observed progress of a replay."""

    upper_bound: int | None = Field(
        None, ge=0, json_schema_extra={"format": "int64"}, description="Highest selected id at the start."
    )
    total_events: int | None = Field(
        None,
        ge=0,
        description="Committed events in the selection up to upperBound, counted once every transaction"
        " open when upperBound was read had ended.",
    )
    published_events: int | None = Field(None, ge=0, description="Events the broker confirmed.")
    failed_events: int | None = Field(
        None,
        ge=0,
        description="Events the broker nacked, returned or refused, or that AMQP could not carry.",
    )
    checkpoint: int | None = Field(
        None,
        ge=0,
        json_schema_extra={"format": "int64"},
        description="Highest id such that it and every selected id before it are confirmed.",
    )
    reserved_through: int | None = Field(
        None,
        ge=0,
        json_schema_extra={"format": "int64"},
        description="No id above this is published before the next status write (bounds duplicates).",
    )
    duplicates_at_most: int | None = Field(
        None,
        ge=0,
        description="Events that may have been published twice (after a crash or a broker outage).",
    )
    progress: str | None = Field(None, description="published/total, for kubectl.")
    percent: str | None = Field(
        None,
        pattern=r"^(100|[1-9]?[0-9])%$",
        description="Share of the selection settled, as kubectl shows it (24%); exactly: publishedEvents.",
    )
    rate_per_second: float | None = Field(None, ge=0, description="Events per second, recently.")
    eta: str | None = Field(None, description="Estimated time to completion.")
    sample: list[SampleEvent] | None = Field(None, description="A dry run's first events.")
    first_failure: ReplayFailure | None = Field(None, description="The first failed event.")


REPLAYJOB = KindInfo(
    kind="ReplayJob",
    plural="replayjobs",
    singular="replayjob",
    short_names=("hrj", "replay"),
    printer_columns=(
        PrinterColumn("Phase", ".status.phase"),
        PrinterColumn("Published", ".status.progress"),
        PrinterColumn("Percent", ".status.percent"),
        PrinterColumn("Rate", ".status.ratePerSecond", type="number"),
        PrinterColumn("ETA", ".status.eta", priority=1),
        PrinterColumn("Checkpoint", ".status.checkpoint", type="integer", priority=1),
        PrinterColumn("Age", ".metadata.creationTimestamp", type="date"),
    ),
    spec_model=ReplayJobSpec,
    status_model=ReplayJobStatus,
    description=(
        "ReplayJob publishes selected processed events from the PostgreSQL event store to RabbitMQ once, "
        "in id order, with publisher confirms, a checkpoint, rate limiting, dry runs and suspension."
    ),
)
