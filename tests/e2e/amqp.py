"""The tests' view of RabbitMQ: exchanges and queues of their own, and everything a queue received."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

import pika


@dataclass(frozen=True)
class Received:
    message_id: str
    headers: dict[str, Any]
    body: Any
    routing_key: str
    correlation_id: str | None


class Broker:
    """A blocking connection for setting up and reading back; everything it declared is deleted."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._exchanges: list[str] = []
        self._queues: list[str] = []
        self._open()

    def _open(self) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(self.uri))
        self.channel = self.connection.channel()

    def reconnect(self) -> None:
        """After the broker went away and came back."""
        self._open()

    def exchange(self, kind: str = "fanout") -> str:
        name = f"t-x-{secrets.token_hex(5)}"
        self.channel.exchange_declare(name, exchange_type=kind, durable=True)
        self._exchanges.append(name)
        return name

    def queue(self, exchange: str | None = None, routing_key: str = "") -> str:
        name = f"t-q-{secrets.token_hex(5)}"
        self.channel.queue_declare(name, durable=True)
        self._queues.append(name)
        if exchange:
            self.channel.queue_bind(name, exchange, routing_key=routing_key)
        return name

    def drain(self, queue: str, idle: float = 0.5) -> list[Received]:
        """Every message in the queue, in order, until none has come for `idle` seconds."""
        received = []
        for method, properties, body in self.channel.consume(queue, auto_ack=True, inactivity_timeout=idle):
            if method is None:
                break
            received.append(
                Received(
                    properties.message_id,
                    dict(properties.headers or {}),
                    json.loads(body),
                    method.routing_key,
                    properties.correlation_id,
                )
            )
        self.channel.cancel()
        return received

    def close(self) -> None:
        if self.connection.is_closed:
            self._open()
        for queue in self._queues:
            self.channel.queue_delete(queue)
        for exchange in self._exchanges:
            self.channel.exchange_delete(exchange)
        self.connection.close()
