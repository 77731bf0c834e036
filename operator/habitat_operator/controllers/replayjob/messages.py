"""What a replayed event looks like on the wire: its own payload and headers, plus the replay's marks.

`message_id` is the event id, so a consumer deduplicates by it (docs/replay.md shows how).
"""

from __future__ import annotations

from dataclasses import dataclass

from habitat_operator.api.replayjob import ReplayTarget
from habitat_operator.engines.postgres.events import Event
from habitat_operator.engines.rabbitmq.publisher import Message

JOB_HEADER = "x-habitat-replay-job"
JOB_UID_HEADER = "x-habitat-replay-job-uid"
EVENT_TYPE_HEADER = "x-habitat-event-type"
REPLAYED_AT_HEADER = "x-habitat-replayed-at"


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


def to_message(event: Event, addressing: Addressing, job: str, job_uid: str, replayed_at: str) -> Message:
    """The event as a message; `job` is namespace/name."""
    headers = {
        **(event.headers or {}),
        JOB_HEADER: job,
        JOB_UID_HEADER: job_uid,
        EVENT_TYPE_HEADER: event.event_type,
        REPLAYED_AT_HEADER: replayed_at,
    }
    return Message(
        key=event.id,
        exchange=addressing.exchange,
        routing_key=addressing.fixed_routing_key or event.routing_key or "",
        body=event.payload,
        headers=headers,
        type=event.event_type,
        correlation_id=event.correlation_id,
        timestamp=int(event.occurred_at.timestamp()),
    )
