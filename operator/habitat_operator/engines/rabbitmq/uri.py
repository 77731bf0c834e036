"""An amqp:// URI, and what messages may show of it: host, port and virtual host, never credentials."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import pika

from habitat_operator.api.common import Reason
from habitat_operator.errors import PermanentError


class AmqpTarget:
    """A broker to connect to; `display` is safe for status, Events and logs."""

    def __init__(self, uri: str) -> None:
        try:
            parts = urlsplit(uri)
            port = parts.port
        except ValueError:
            raise PermanentError(Reason.INVALID_CONNECTION_URI, "the broker URI cannot be parsed") from None
        if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
            raise PermanentError(
                Reason.INVALID_CONNECTION_URI, "the broker URI must be amqp://host or amqps://host"
            )
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        address = f"{parts.hostname}:{port or (5671 if parts.scheme == 'amqps' else 5672)}"
        self.display = address if vhost == "/" else f"{address}/{vhost}"
        try:
            self.parameters = pika.URLParameters(uri)
        except Exception:  # pika raises several kinds for a bad query string
            raise PermanentError(
                Reason.INVALID_CONNECTION_URI, f"the broker URI for {self.display} has invalid options"
            ) from None

    def __repr__(self) -> str:
        return f"AmqpTarget({self.display!r})"
