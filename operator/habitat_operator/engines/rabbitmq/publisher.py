"""Publishing with asynchronous publisher confirms: a window of messages in flight, never one round
trip per message.

pika's asyncio adapter runs on the caller's event loop. Every message is `mandatory`, so one that no
queue takes comes back (basic.return, then its ack). Messages go out in the caller's order, and the
broker confirms them by delivery tag; `confirmed_through` is the last key of the unbroken run of
settled messages from the first one on, which is what a checkpoint may safely say. The window is
bounded in messages and in bytes (a single larger message goes out alone).

A message the broker will not take (a body over its `max_message_size`, or any other 406
PRECONDITION_FAILED) closes the channel, and the broker drops every message sent after it on that
channel. That message fails in its place, as a returned one does; the others still unconfirmed go
out again on a new channel, once, and those the broker had taken before it may arrive twice
(`resent`). The size limit the broker names is kept: a later message over it is refused here,
without sending it.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections import deque
from collections.abc import Callable
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

PRECONDITION_FAILED = 406
_SIZE_REFUSAL = re.compile(r"message size (\d+) is larger than (?:configured )?max size (\d+)")
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
    message: Message | None = None  # kept until settled: sent again after the broker refused another
    size: int = 0


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


def too_large(key: int, size: int, limit: int) -> Failure:
    return Failure(
        key,
        ReplayReason.MESSAGE_TOO_LARGE,
        f"is {size} bytes, larger than the broker's max_message_size ({limit} bytes)",
    )


class ConfirmingPublisher:
    """One connection and one channel in confirm mode; use `open()`."""

    def __init__(self, target: AmqpTarget, window: int, window_bytes: int) -> None:
        self.target = target
        self.window = window
        self.window_bytes = window_bytes
        self.tally = Tally()
        self.confirmed_through: int | None = None
        self.max_message_size: int | None = None  # the broker's, once it refused a message for its size
        self.resent = 0  # messages sent again after a refusal that the broker may already have taken
        self.failing = False  # some message failed, settled in order or not yet
        self._in_flight: deque[_InFlight] = deque()
        self._by_tag: dict[int, _InFlight] = {}  # the current channel's unsettled entries, in tag order
        self._bytes_in_flight = 0
        self._returned: dict[int, str] = {}
        self._next_tag = 1
        self._changed = asyncio.Event()
        self._error: OperationError | None = None
        self._refusal: str | None = None  # the broker's words, until the refused message is found
        self._connection: CoalescingConnection | None = None
        self._channel: Any = None

    # ---------------------------------------------------------------- opening and closing

    async def open(self) -> ConfirmingPublisher:
        loop = asyncio.get_running_loop()
        connected: asyncio.Future[None] = loop.create_future()

        def failed(error: OperationError) -> None:
            self._fail(error)
            if not connected.done():
                connected.set_exception(error)

        def on_open(_: AsyncioConnection) -> None:
            if not connected.done():
                connected.set_result(None)

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
            await connected
            await self._open_channel()
        except BaseException:
            await self.close()
            raise
        return self

    async def _open_channel(self) -> None:
        """A new channel in confirm mode; delivery tags start again from 1."""
        assert self._connection is not None
        confirming = False

        def on_channel(channel: Any) -> None:
            self._channel = channel
            channel.add_on_close_callback(self._on_channel_closed)
            channel.add_on_return_callback(self._on_return)
            channel.confirm_delivery(self._on_confirm, callback=on_confirming)

        def on_confirming(_: Any) -> None:
            nonlocal confirming
            confirming = True
            self._changed.set()

        self._channel = None
        self._by_tag.clear()
        self._returned.clear()
        self._next_tag = 1
        if not self._connection.is_open:  # closing, and not yet said so
            self._fail(self._unavailable(pika.exceptions.ConnectionWrongStateError()))
        else:
            self._connection.channel(on_open_callback=on_channel)
        await self._until(lambda: confirming)

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

    def _on_channel_closed(self, channel: Any, error: BaseException) -> None:
        if channel is not self._channel:
            return  # a channel left behind after a refusal
        self._channel = None
        if not isinstance(error, pika.exceptions.ChannelClosedByBroker):
            self._fail(self._unavailable(error))
        elif error.reply_code == PRECONDITION_FAILED and self._error is None:
            self._refusal = error.reply_text  # one message refused: found and failed by `_recover`
            self._changed.set()
        elif error.reply_code == 404:
            self._fail(PermanentError(ReplayReason.TARGET_NOT_FOUND, f"RabbitMQ: {error.reply_text}"))
        else:
            self._fail(
                RetryableError(
                    ReplayReason.BROKER_UNAVAILABLE,
                    f"RabbitMQ at {self.target.display} closed the channel: {error.reply_text}",
                )
            )

    def _fail(self, error: OperationError) -> None:
        if self._error is None:
            self._error = error
        self._changed.set()

    # ---------------------------------------------------------------- publishing

    async def publish(self, message: Message) -> None:
        """Sends `message` once the window has room for it; raises when the connection is gone
        (what was unconfirmed then is not known to have arrived)."""
        size = len(message.body)
        await self._until(lambda: not self._in_flight or self._has_room(size))
        if self.max_message_size is not None and size > self.max_message_size:  # known after waiting
            self.refuse(too_large(message.key, size, self.max_message_size))
            return
        entry = _InFlight(0, message.key, message=message, size=size)
        self._in_flight.append(entry)
        self._bytes_in_flight += size
        self._send(entry)

    def _has_room(self, size: int) -> bool:
        return len(self._in_flight) < self.window and self._bytes_in_flight + size <= self.window_bytes

    def _send(self, entry: _InFlight) -> None:
        message = entry.message
        assert message is not None
        self._channel.basic_publish(
            message.exchange, message.routing_key, message.body, message.properties, mandatory=True
        )
        entry.tag = self._next_tag
        self._next_tag += 1
        self._by_tag[entry.tag] = entry

    def refuse(self, failure: Failure) -> None:
        """Counts `failure.key` as failed without sending it (a message that cannot be encoded), in
        its place among the keys in flight, so the checkpoint passes it as it passes a returned one."""
        self._in_flight.append(_InFlight(0, failure.key, settled=True, failure=failure))
        self.failing = True
        self._settle_from_the_left()

    async def drain(self) -> None:
        """Waits until every message sent is settled."""
        await self._until(lambda: not self._in_flight)

    async def _until(self, done: Callable[[], bool]) -> None:
        """Waits until `done()`, finding a refused message whenever the broker refuses one; raises
        when the connection or channel is gone."""
        while self._error is None:
            if self._refusal is not None:
                await self._recover()
            elif done():
                break
            else:
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

    # ---------------------------------------------------------------- a refused message

    async def _recover(self) -> None:
        """The broker refused one of the unsettled messages and closed the channel: fails that one
        in its place and sends the others again on a new channel, each once."""
        assert self._refusal is not None
        refusal, self._refusal = self._refusal, None
        pending = [entry for entry in self._in_flight if not entry.settled]
        limit = self._learn_limit(refusal)
        await self._open_channel()
        oversized = [i for i, entry in enumerate(pending) if limit is not None and entry.size > limit]
        if not oversized:  # the broker's words do not say which: find it by sending them one by one
            await self._isolate(pending, refusal)
            return
        self.resent += oversized[0]  # the broker took those before the refused one: they may arrive twice
        for entry in pending:
            if limit is not None and entry.size > limit:
                self._settle(entry, too_large(entry.key, entry.size, limit))
            else:
                self._send(entry)
        self._settle_from_the_left()

    async def _isolate(self, pending: list[_InFlight], refusal: str) -> None:
        """Sends `pending` one at a time, each confirmed before the next, until the broker refuses
        one again: that is the refused message. The rest then go out as usual."""
        for position, entry in enumerate(pending):
            self._send(entry)
            while not entry.settled and self._refusal is None and self._error is None:
                self._changed.clear()
                await self._changed.wait()
            self.raise_if_broken()
            if self._refusal is not None:
                refusal, self._refusal = self._refusal, None
                self.resent += position
                self._settle(entry, self._refused(entry, refusal))
                await self._open_channel()
                for rest in pending[position + 1 :]:
                    self._send(rest)
                self._settle_from_the_left()
                return
        self.resent += len(pending)  # none was refused this time: any of them may arrive twice

    def _learn_limit(self, refusal: str) -> int | None:
        found = _SIZE_REFUSAL.search(refusal)
        if found is not None:
            self.max_message_size = int(found.group(2))
        return self.max_message_size

    def _refused(self, entry: _InFlight, refusal: str) -> Failure:
        limit = self._learn_limit(refusal)
        if limit is not None and entry.size > limit:
            return too_large(entry.key, entry.size, limit)
        return Failure(entry.key, ReplayReason.MESSAGE_REFUSED, f"was refused by the broker: {refusal}")

    # ---------------------------------------------------------------- the broker's answers

    def _on_return(self, _: Any, method: Any, properties: Any, __: bytes) -> None:
        # A return always precedes the ack of the same message.
        if properties.message_id is not None:
            self._returned[int(properties.message_id)] = f"{method.reply_code} {method.reply_text}"

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        nacked = isinstance(method, pika.spec.Basic.Nack)
        if method.multiple:
            tag = method.delivery_tag
            settled = list(itertools.takewhile(lambda e: e.tag <= tag, self._by_tag.values()))
        else:
            found = self._by_tag.get(method.delivery_tag)
            settled = [] if found is None else [found]
        for entry in settled:
            self._settle(entry, self._failure(entry.key, nacked))
        self._settle_from_the_left()

    def _settle(self, entry: _InFlight, failure: Failure | None) -> None:
        entry.settled = True
        entry.failure = failure
        entry.message = None
        self.failing = self.failing or failure is not None
        self._by_tag.pop(entry.tag, None)
        self._bytes_in_flight -= entry.size

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
