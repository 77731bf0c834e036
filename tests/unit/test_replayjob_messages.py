"""A replayed message on the wire, without a broker: the properties encoded once per page decode to
what pika's own BasicProperties would carry, and the frames of one loop turn go out in one write.

Both rely on pika's internals (engines/rabbitmq/pika_hooks.py; pyproject pins the minor version):
these tests fail first if an upgrade moves them."""

from __future__ import annotations

import asyncio
import datetime as dt
from types import SimpleNamespace
from typing import Any

import pika
import pika.frame
import pika.spec
import pytest

from habitat_operator.api.replayjob import ReplayReason, ReplayTarget
from habitat_operator.controllers.replayjob.messages import (
    EVENT_TYPE_HEADER,
    JOB_HEADER,
    Addressing,
    encoder,
    to_message,
)
from habitat_operator.engines.postgres.events import Event
from habitat_operator.engines.rabbitmq.pika_hooks import CoalescingConnection
from habitat_operator.engines.rabbitmq.properties import NotEncodable
from habitat_operator.engines.rabbitmq.publisher import ConfirmingPublisher, Failure, Message
from habitat_operator.engines.rabbitmq.uri import AmqpTarget

MOMENT = dt.datetime(2026, 1, 31, 23, 59, 59, tzinfo=dt.UTC)
TARGET = ReplayTarget.model_validate({"rabbitmq": {"secretRef": {"name": "b"}}, "exchange": {"name": "x"}})


def on_the_wire(event: Event) -> pika.BasicProperties:
    message = to_message(event, Addressing.of(TARGET), encoder("ns/job", "uid-1", "2026-11-29T00:00:00Z"))
    frame = pika.frame.Header(1, len(message.body), message.properties).marshal()
    decoded = pika.BasicProperties()
    decoded.decode(frame[7 + 12 : -1])  # past the frame header, class, weight and body size; before the end
    return decoded


def test_a_message_carries_the_events_properties_and_headers_with_the_replays_marks() -> None:
    own = {"source": "habitat-ledger", "schema-version": 1, "trace": {"ids": [1, None, True]}}
    event = Event(1042, "invoice.issued", MOMENT, b"{}", "invoice.issued", "period-close-2026-01", own)
    expected = pika.BasicProperties(
        content_type="application/json",
        delivery_mode=2,
        message_id="1042",
        type="invoice.issued",
        correlation_id="period-close-2026-01",
        timestamp=int(MOMENT.timestamp()),
        headers={
            **own,
            JOB_HEADER: "ns/job",
            "x-habitat-replay-job-uid": "uid-1",
            EVENT_TYPE_HEADER: "invoice.issued",
            "x-habitat-replayed-at": "2026-11-29T00:00:00Z",
        },
    )
    assert vars(on_the_wire(event)) == vars(expected)


def test_the_replays_marks_win_over_an_events_own_header_of_the_same_name() -> None:
    own = {JOB_HEADER: "forged", EVENT_TYPE_HEADER: "forged", "source": "s"}
    decoded = on_the_wire(Event(7, "t", MOMENT, b"{}", None, None, own))
    assert decoded.headers is not None and decoded.correlation_id is None
    assert (decoded.headers[JOB_HEADER], decoded.headers[EVENT_TYPE_HEADER]) == ("ns/job", "t")
    assert decoded.headers["source"] == "s" and len(decoded.headers) == 5


def test_frames_of_one_loop_turn_leave_in_one_write() -> None:
    written: list[bytes] = []
    connection: Any = CoalescingConnection.__new__(CoalescingConnection)  # no socket: only the write path
    connection._transport = type("Transport", (), {"write": staticmethod(written.append)})()
    connection.bytes_sent = connection.frames_sent = 0

    async def publish_two_messages() -> None:
        connection._output_marshaled_frames([b"method1", b"header1", b"body1"])  # pika's path for a message
        connection._output_marshaled_frames([b"method2", b"header2", b"body2"])
        assert written == []
        await asyncio.sleep(0)

    asyncio.run(publish_two_messages())
    assert written == [b"method1header1body1method2header2body2"]
    assert (connection.frames_sent, connection.bytes_sent) == (6, len(written[0]))


def test_headers_amqp_cannot_carry_are_refused_with_the_reason_not_the_value() -> None:
    with pytest.raises(NotEncodable, match="its headers hold a float") as refused:
        on_the_wire(Event(8, "t", MOMENT, b"{}", None, None, {"weight": 1.5}))
    assert "1.5" not in str(refused.value)
    with pytest.raises(NotEncodable, match="longer than AMQP's 255 bytes"):
        on_the_wire(Event(9, "t", MOMENT, b"{}", None, "c" * 256, None))


def test_a_routing_key_over_255_bytes_is_refused_with_the_reason_not_the_value() -> None:
    key = "é" * 128  # 128 characters, 256 bytes: AMQP counts bytes
    with pytest.raises(NotEncodable, match="its routing key is longer than AMQP's 255 bytes") as refused:
        on_the_wire(Event(10, "t", MOMENT, b"{}", key, None, None))
    assert key not in str(refused.value)
    assert on_the_wire(Event(11, "t", MOMENT, b"{}", "k" * 255, None, None)).message_id == "11"


@pytest.mark.parametrize("headers", [[1, 2], "str", 42, True])
def test_headers_that_are_json_but_no_object_are_refused_not_read_as_a_table(headers: Any) -> None:
    with pytest.raises(NotEncodable, match="its headers are not a JSON object") as refused:
        on_the_wire(Event(12, "t", MOMENT, b"{}", None, None, headers))
    assert str(headers) not in str(refused.value)


def test_a_refused_event_settles_in_its_place_among_those_in_flight() -> None:
    publisher = ConfirmingPublisher(AmqpTarget("amqp://broker"), window=10, window_bytes=2**20)
    publisher._channel = SimpleNamespace(basic_publish=lambda *args, **kwargs: None)

    def ack(tag: int) -> None:
        publisher._on_confirm(SimpleNamespace(method=pika.spec.Basic.Ack(delivery_tag=tag)))

    def send(key: int) -> None:
        asyncio.run(publisher.publish(Message(key, "x", "k", b"{}", pika.BasicProperties())))

    send(1)
    publisher.refuse(Failure(2, ReplayReason.MESSAGE_NOT_ENCODABLE, "cannot be sent"))
    send(3)
    assert publisher.confirmed_through is None  # 1 is not confirmed yet, so neither is anything after it
    ack(1)
    assert publisher.confirmed_through == 2
    ack(2)
    publisher.refuse(Failure(4, ReplayReason.MESSAGE_NOT_ENCODABLE, "cannot be sent"))  # nothing in flight
    assert publisher.confirmed_through == 4
    tally = publisher.tally
    assert (tally.confirmed, tally.failed) == (2, 2)
    assert tally.first_failure is not None and tally.first_failure.key == 2
