"""The publisher against a fake channel that behaves as RabbitMQ does with a message it refuses: it
closes the channel (406), and drops the frames and the confirms still due on it."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pika
import pika.exceptions
import pika.spec

from habitat_operator.engines.rabbitmq.publisher import ConfirmingPublisher, Message
from habitat_operator.engines.rabbitmq.uri import AmqpTarget


class FakeRabbitMQ:
    """Takes every message it does not refuse; `refusal()` gives the reason for one it does."""

    is_open = True

    def __init__(self, max_size: int | None = None, refused_key: int | None = None) -> None:
        self.max_size = max_size
        self.refused_key = refused_key
        self.delivered: list[int] = []
        self.channels = 0
        self.unconfirmed_bytes: list[int] = []  # at each publish, the bytes it had not confirmed yet

    def refusal(self, key: int, body: bytes) -> str | None:
        if self.max_size is not None and len(body) > self.max_size:
            size, limit = len(body), self.max_size
            return f"PRECONDITION_FAILED - message size {size} is larger than configured max size {limit}"
        if key == self.refused_key:
            return "PRECONDITION_FAILED - invalid expiration"
        return None

    def channel(self, on_open_callback: Any) -> None:
        self.channels += 1
        asyncio.get_running_loop().call_soon(on_open_callback, FakeChannel(self))


class FakeChannel:
    def __init__(self, broker: FakeRabbitMQ) -> None:
        self.broker = broker
        self.open = True
        self.tag = 0
        self.unconfirmed: dict[int, int] = {}

    def add_on_close_callback(self, callback: Any) -> None:
        self.on_close = callback

    def add_on_return_callback(self, callback: Any) -> None:
        pass

    def confirm_delivery(self, on_confirm: Any, callback: Any) -> None:
        self.on_confirm = on_confirm
        asyncio.get_running_loop().call_soon(callback, None)

    def basic_publish(
        self, exchange: str, routing_key: str, body: bytes, properties: Any, mandatory: bool
    ) -> None:
        if not self.open:
            return  # after closing the channel the broker ignores its frames
        key = int(properties.message_id)
        self.tag += 1
        self.broker.unconfirmed_bytes.append(sum(self.unconfirmed.values()) + len(body))
        loop = asyncio.get_running_loop()
        refusal = self.broker.refusal(key, body)
        if refusal is not None:
            self.open = False
            loop.call_soon(self.on_close, self, pika.exceptions.ChannelClosedByBroker(406, refusal))
            return
        self.broker.delivered.append(key)
        self.unconfirmed[self.tag] = len(body)
        loop.call_soon(self._confirm, self.tag)

    def _confirm(self, tag: int) -> None:
        if self.open:  # a confirm still due when the channel closed never comes
            del self.unconfirmed[tag]
            self.on_confirm(SimpleNamespace(method=pika.spec.Basic.Ack(delivery_tag=tag, multiple=False)))


def message(key: int, size: int) -> Message:
    return Message(key, "", "q", b"x" * size, pika.BasicProperties(message_id=str(key)))


def replay(
    broker: FakeRabbitMQ, sizes: dict[int, int], window_bytes: int = 10_000, pause: bool = False
) -> ConfirmingPublisher:
    """Publishes messages of `sizes` in order; `pause`: the loop yields between them (reading a page)."""

    async def run() -> ConfirmingPublisher:
        publisher = ConfirmingPublisher(AmqpTarget("amqp://broker"), window=100, window_bytes=window_bytes)
        publisher._connection = broker  # type: ignore[assignment]
        await publisher._open_channel()
        for key, size in sizes.items():
            await publisher.publish(message(key, size))
            if pause:
                await asyncio.sleep(0)
        await publisher.drain()
        return publisher

    return asyncio.run(run())


def test_a_message_over_the_brokers_limit_fails_in_its_place_and_the_rest_go_out_once_more_at_most() -> None:
    broker = FakeRabbitMQ(max_size=100)
    sizes = {key: 200 if key in (5, 8, 15) else 10 for key in range(1, 21)}
    publisher = replay(broker, sizes)
    tally = publisher.tally
    assert (tally.confirmed, tally.failed, publisher.confirmed_through) == (17, 3, 20)
    assert tally.first_failure is not None and tally.first_failure.key == 5
    assert tally.first_failure.reason == "MessageTooLarge"
    assert (
        tally.first_failure.message == "is 200 bytes, larger than the broker's max_message_size (100 bytes)"
    )
    assert publisher.max_message_size == 100
    delivered = Counter(broker.delivered)
    assert set(delivered) == set(sizes) - {5, 8, 15}
    assert max(delivered.values()) <= 2 and sum(delivered.values()) - 17 <= publisher.resent
    assert broker.channels == 2  # one new channel; 15, over the limit now known, is never sent


def test_a_message_over_the_limit_right_after_the_refusal_is_not_sent() -> None:
    broker = FakeRabbitMQ(max_size=100)
    sizes = {key: 200 if key in (5, 6) else 10 for key in range(1, 11)}
    publisher = replay(broker, sizes, pause=True)
    assert (publisher.tally.confirmed, publisher.tally.failed) == (8, 2)
    assert broker.channels == 2 and max(Counter(broker.delivered).values()) <= 2


def test_any_other_refusal_is_found_by_sending_the_unconfirmed_one_at_a_time() -> None:
    broker = FakeRabbitMQ(refused_key=4)
    publisher = replay(broker, dict.fromkeys(range(1, 11), 10))
    tally = publisher.tally
    assert (tally.confirmed, tally.failed, publisher.confirmed_through) == (9, 1, 10)
    assert tally.first_failure is not None and tally.first_failure.key == 4
    assert tally.first_failure.reason == "MessageRefused"
    assert "invalid expiration" in tally.first_failure.message
    assert set(broker.delivered) == set(range(1, 11)) - {4}
    assert len(broker.delivered) - 9 <= publisher.resent
    assert broker.channels == 3  # the first, the one it was refused on again, and the last


def test_the_window_is_bounded_in_bytes_and_a_larger_message_goes_alone() -> None:
    broker = FakeRabbitMQ()
    sizes = {1: 20, 2: 20, 3: 20, 4: 80, 5: 20, 6: 20}
    publisher = replay(broker, sizes, window_bytes=50)
    assert publisher.tally.confirmed == 6 and broker.delivered == list(sizes)
    assert max(broker.unconfirmed_bytes) == 80  # the 80-byte message, alone
    assert all(b <= 50 for key, b in zip(sizes, broker.unconfirmed_bytes, strict=True) if key != 4)
