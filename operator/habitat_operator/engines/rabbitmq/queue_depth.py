"""How many messages wait in a queue: the management API (ready + unacknowledged) or AMQP (ready).

The management API is the better signal for scaling: messages that workers have taken but not yet
acknowledged are work in progress, and counting only ready messages would remove busy workers. Its
figures are sampled by the broker (`collect_statistics_interval`, 5 s by default); a passive
declare over AMQP is exact at once but sees ready messages only.
"""

from __future__ import annotations

import threading
import urllib.parse
from contextlib import suppress
from typing import Any

import pika
import pika.exceptions

from habitat_operator.api.scalepolicy import ScalePolicyReason
from habitat_operator.engines.http import get_json
from habitat_operator.errors import PermanentError, RetryableError


def management_depth(api_url: str, vhost: str, queue: str, timeout: float) -> int:
    """Ready plus unacknowledged messages of `queue`, from the management API at `api_url` (…/api)."""
    path = f"/queues/{urllib.parse.quote(vhost, safe='')}/{urllib.parse.quote(queue, safe='')}"
    body = get_json(api_url.rstrip("/") + path, timeout, ScalePolicyReason.SOURCE_UNAVAILABLE)
    try:
        return int(body["messages_ready"]) + int(body["messages_unacknowledged"])
    except (KeyError, TypeError, ValueError):
        raise RetryableError(
            ScalePolicyReason.SOURCE_UNAVAILABLE, f"queue {queue!r} has no message statistics yet"
        ) from None


class AmqpDepth:
    """Ready messages by a passive declare (which never creates the queue), over one connection kept
    across polls: opening a connection costs more than the declare. A broken connection is replaced
    once within the same read; heartbeats are off, as nothing services the connection between polls."""

    def __init__(self, uri: str) -> None:
        try:
            self._params = pika.URLParameters(uri)
        except Exception:  # pika raises many types for a malformed URI; none may carry it into a message
            raise PermanentError(ScalePolicyReason.SOURCE_UNAVAILABLE, "the AMQP URI is malformed") from None
        self._params.connection_attempts = 1
        self._params.heartbeat = 0
        self._where = f"amqp://{self._params.host}:{self._params.port}"
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._lock = threading.Lock()  # one read at a time: a BlockingConnection is not thread-safe

    def read(self, queue: str, timeout: float) -> int:
        with self._lock:
            if self._connection is not None:
                try:
                    return self._declare(queue, timeout)
                except (pika.exceptions.AMQPError, OSError):
                    self.close()  # perhaps dropped while idle: one fresh try
            try:
                return self._declare(queue, timeout)
            except pika.exceptions.ChannelClosedByBroker as error:
                self.close()
                raise RetryableError(
                    ScalePolicyReason.SOURCE_UNAVAILABLE,
                    f"{self._where}: queue {queue!r}: {error.reply_text}",
                ) from None
            except (pika.exceptions.AMQPError, OSError) as error:
                self.close()
                raise RetryableError(
                    ScalePolicyReason.SOURCE_UNAVAILABLE, f"{self._where} unreachable: {type(error).__name__}"
                ) from None

    def _declare(self, queue: str, timeout: float) -> int:
        if self._connection is None or not self._connection.is_open:
            self._params.socket_timeout = self._params.stack_timeout = timeout
            self._params.blocked_connection_timeout = timeout
            self._connection = pika.BlockingConnection(self._params)
            self._channel = self._connection.channel()
        return int(self._channel.queue_declare(queue, passive=True).method.message_count)

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and connection.is_open:
            with suppress(pika.exceptions.AMQPError, OSError):
                connection.close()
