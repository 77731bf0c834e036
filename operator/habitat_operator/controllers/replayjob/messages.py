"""What a replayed event looks like on the wire: its own payload and headers, plus the replay's marks.

`message_id` is the event id, so a consumer deduplicates by it (docs/replay.md shows how).
"""

from __future__ import annotations

from dataclasses import dataclass

from habitat_operator.api.replayjob import ReplayTarget
from habitat_operator.engines.postgres.events import Event
from habitat_operator.engines.rabbitmq.properties import JsonPropertiesEncoder, NotEncodable
from habitat_operator.engines.rabbitmq.publisher import Message

JOB_HEADER = "x-habitat-replay-job"
JOB_UID_HEADER = "x-habitat-replay-job-uid"
EVENT_TYPE_HEADER = "x-habitat-event-type"
REPLAYED_AT_HEADER = "x-habitat-replayed-at"
MAX_ROUTING_KEY_BYTES = 255  # an AMQP short string


@dataclass(frozen=True)
class Addressing:
    """The exchange and routing key of every message of one job."""

    exchange: str
    fixed_routing_key: str | None

    @classmethod
    def of(cls, target: ReplayTarget) -> Addressing:
        if target.queue is not None:  # the default exchange routes by queue name, to that queue alone
            return cls("", target.queue.name)
        assert target.exchange is not None  # the CEL rule: exactly one of exchange and queue
        return cls(target.exchange.name, target.exchange.routing_key)

    @property
    def display(self) -> str:
        return f"queue {self.fixed_routing_key}" if not self.exchange else f"exchange {self.exchange}"


def encoder(job: str, job_uid: str, replayed_at: str) -> JsonPropertiesEncoder:
    """The replay's marks, shared by every message replayed at `replayed_at`; `job` is namespace/name."""
    return JsonPropertiesEncoder(
        {JOB_HEADER: job, JOB_UID_HEADER: job_uid, REPLAYED_AT_HEADER: replayed_at},
        type_header=EVENT_TYPE_HEADER,
    )


def to_message(event: Event, addressing: Addressing, marks: JsonPropertiesEncoder) -> Message:
    """Raises NotEncodable for what a message cannot carry (a NULL where the contract has none)."""
    if event.event_type is None or event.occurred_at is None:
        raise NotEncodable("cannot be sent: its event_type or occurred_at is NULL")
    if event.headers is not None and not isinstance(event.headers, dict):  # jsonb holds any JSON
        raise NotEncodable("cannot be sent: its headers are not a JSON object")
    routing_key = addressing.fixed_routing_key or event.routing_key or ""
    if len(routing_key.encode()) > MAX_ROUTING_KEY_BYTES:  # pika would raise only mid-publish
        raise NotEncodable("cannot be sent: its routing key is longer than AMQP's 255 bytes")
    return Message(
        key=event.id,
        exchange=addressing.exchange,
        routing_key=routing_key,
        body=event.payload,
        properties=marks.encode(
            event.id,
            event.headers,
            event.event_type,
            event.correlation_id,
            int(event.occurred_at.timestamp()),
        ),
    )
