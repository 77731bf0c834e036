"""Publishing with asynchronous publisher confirms: a window of messages in flight, never one round
trip per message.

pika's asyncio adapter runs on the caller's event loop. Every message is `mandatory`, so one that no
queue takes comes back (basic.return, then its ack). Messages go out in the caller's order, and the
broker confirms them by delivery tag; `confirmed_through` is the last key of the unbroken run of
settled messages from the first one on, which is what a checkpoint may safely say.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple

import pika
import pika.exceptions
from pika.adapters.asyncio_connection import AsyncioConnection

from habitat_operator.api.common import Reason
from habitat_operator.api.replayjob import ReplayReason
from habitat_operator.engines.rabbitmq.pika_hooks import CoalescingConnection
from habitat_operator.engines.rabbitmq.uri import AmqpTarget
from habitat_operator.errors import OperationError, PermanentError, RetryableError

_AUTH_ERRORS = (
    pika.exceptions.ProbableAuthenticationError,
    pika.exceptions.ProbableAccessDeniedError,
    pika.exceptions.AuthenticationError,
)


class Message(NamedTuple):  # a tuple: one is built for every message
    key: int  # the caller's order (an event id); also the message id
    exchange: str
    routing_key: str
    body: bytes
    properties: pika.BasicProperties  # message_id must be str(key): a returned message is known by it


@dataclass(frozen=True)
class Failure:
    key: int
    reason: ReplayReason
    message: str


@dataclass(slots=True)
class _InFlight:
    tag: int
    key: int
    settled: bool = False
    failure: Failure | None = None


@dataclass
class Tally:
    """What the broker settled since the publisher opened, up to `confirmed_through`: the counts
    always describe exactly the keys a checkpoint covers."""

    confirmed: int = 0
    failed: int = 0
    first_failure: Failure | None = None

    def fail(self, failure: Failure) -> None:
        self.failed += 1
        self.first_failure = self.first_failure or failure


class ConfirmingPublisher:
    """One connection and one channel in confirm mode; use `open()`."""

    def __init__(self, target: AmqpTarget, window: int) -> None:
        self.target = target
        self.window = window
        self.tally = Tally()
        self.confirmed_through: int | None = None
        self._in_flight: deque[_InFlight] = deque()
        self._by_tag: dict[int, _InFlight] = {}
        self._returned: dict[int, str] = {}
        self._next_tag = 1
        self._changed = asyncio.Event()
        self._error: OperationError | None = None
        self._connection: CoalescingConnection | None = None
        self._channel: Any = None

    # ---------------------------------------------------------------- opening and closing

    async def open(self) -> ConfirmingPublisher:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def failed(error: OperationError) -> None:
            self._fail(error)
            if not ready.done():
                ready.set_exception(error)

        def on_open(connection: AsyncioConnection) -> None:
            connection.channel(on_open_callback=on_channel)

        def on_channel(channel: Any) -> None:
            self._channel = channel
            channel.add_on_close_callback(self._on_channel_closed)
            channel.add_on_return_callback(self._on_return)
            channel.confirm_delivery(self._on_confirm, callback=on_confirming)

        def on_confirming(_: Any) -> None:
            if not ready.done():
                ready.set_result(None)

        def on_open_error(_: Any, error: BaseException) -> None:
            failed(self._unavailable(error))

        def on_close(_: Any, error: BaseException) -> None:
            failed(self._unavailable(error))

        self._connection = CoalescingConnection(
            self.target.parameters,
            on_open_callback=on_open,
            on_open_error_callback=on_open_error,
            on_close_callback=on_close,
            custom_ioloop=loop,
        )
        try:
            await ready
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        """Closes the connection (what was sent stays sent); waits briefly for the broker to agree."""
        connection = self._connection
        if connection is None or connection.is_closed:
            return
        if not connection.is_closing:
            connection.close()
        for _ in range(50):
            if connection.is_closed:
                return
            await asyncio.sleep(0.02)

    def _unavailable(self, error: BaseException) -> OperationError:
        if isinstance(error, _AUTH_ERRORS):
            return PermanentError(
                Reason.AUTHENTICATION_FAILED, f"RabbitMQ at {self.target.display} refused the credentials"
            )
        detail = type(error).__name__
        if isinstance(error, pika.exceptions.ConnectionClosed):
            detail = f"{error.reply_code} {error.reply_text}"
        return RetryableError(
            ReplayReason.BROKER_UNAVAILABLE, f"RabbitMQ at {self.target.display} is unavailable: {detail}"
        )

    def _on_channel_closed(self, _: Any, error: BaseException) -> None:
        if isinstance(error, pika.exceptions.ChannelClosedByBroker) and error.reply_code == 404:
            self._fail(PermanentError(ReplayReason.TARGET_NOT_FOUND, f"RabbitMQ: {error.reply_text}"))
        elif isinstance(error, pika.exceptions.ChannelClosedByBroker):
            self._fail(
                RetryableError(
                    ReplayReason.BROKER_UNAVAILABLE,
                    f"RabbitMQ at {self.target.display} closed the channel: {error.reply_text}",
                )
            )
        else:
            self._fail(self._unavailable(error))

    def _fail(self, error: OperationError) -> None:
        if self._error is None:
            self._error = error
        self._changed.set()

    # ---------------------------------------------------------------- publishing

    async def publish(self, message: Message) -> None:
        """Sends `message` once fewer than `window` messages are unconfirmed; raises when the
        connection or channel is gone (what was unconfirmed then is not known to have arrived)."""
        while len(self._in_flight) >= self.window and self._error is None:
            self._changed.clear()
            await self._changed.wait()
        self.raise_if_broken()
        self._channel.basic_publish(
            message.exchange, message.routing_key, message.body, message.properties, mandatory=True
        )
        entry = _InFlight(self._next_tag, message.key)
        self._next_tag += 1
        self._in_flight.append(entry)
        self._by_tag[entry.tag] = entry

    def refuse(self, failure: Failure) -> None:
        """Counts `failure.key` as failed without sending it (a message that cannot be encoded), in
        its place among the keys in flight, so the checkpoint passes it as it passes a returned one."""
        entry = _InFlight(self._next_tag - 1, failure.key, settled=True, failure=failure)
        self._in_flight.append(entry)
        self._settle_from_the_left()

    async def drain(self) -> None:
        """Waits until every message sent is settled."""
        while self._in_flight and self._error is None:
            self._changed.clear()
            await self._changed.wait()
        self.raise_if_broken()

    def raise_if_broken(self) -> None:
        if self._error is not None:
            raise self._error

    @property
    def sent_through(self) -> int | None:
        """The last key handed to the broker, settled or not."""
        return self._in_flight[-1].key if self._in_flight else self.confirmed_through

    # ---------------------------------------------------------------- the broker's answers

    def _on_return(self, _: Any, method: Any, properties: Any, __: bytes) -> None:
        # A return always precedes the ack of the same message.
        if properties.message_id is not None:
            self._returned[int(properties.message_id)] = f"{method.reply_code} {method.reply_text}"

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        nacked = isinstance(method, pika.spec.Basic.Nack)
        if method.multiple:  # the deque is in tag order, and settled entries leave it from the left
            settled = list(itertools.takewhile(lambda e: e.tag <= method.delivery_tag, self._in_flight))
            settled = [e for e in settled if not e.settled]
        else:
            found = self._by_tag.get(method.delivery_tag)
            settled = [found] if found is not None and not found.settled else []
        for entry in settled:
            entry.settled = True
            del self._by_tag[entry.tag]
            entry.failure = self._failure(entry.key, nacked)
        self._settle_from_the_left()

    def _settle_from_the_left(self) -> None:
        while self._in_flight and self._in_flight[0].settled:
            done = self._in_flight.popleft()
            if done.failure is None:
                self.tally.confirmed += 1
            else:
                self.tally.fail(done.failure)
            self.confirmed_through = done.key
        self._changed.set()

    def _failure(self, key: int, nacked: bool) -> Failure | None:
        returned = self._returned.pop(key, None)
        if nacked:
            return Failure(key, ReplayReason.MESSAGE_NACKED, "the broker nacked it")
        if returned is not None:
            return Failure(key, ReplayReason.MESSAGE_RETURNED, f"returned as unroutable ({returned})")
        return None
