"""The properties of persistent JSON messages, encoded in the AMQP wire format as pika encodes them,
but with the header entries that every message of a batch shares encoded once for the batch.

Encoding a message's properties (its header table above all) was the largest cost of a publish
with `pika.BasicProperties`. Decoded, the result is the same properties and headers; only the order
of header entries differs: the message's own, then the shared ones, then the type header.
"""

from __future__ import annotations

import struct
from typing import Any

import pika
import pika.data
import pika.exceptions

from habitat_operator.engines.rabbitmq.pika_hooks import Encoded

PERSISTENT = 2
_P = pika.BasicProperties
_FLAGS = _P.FLAG_CONTENT_TYPE | _P.FLAG_HEADERS | _P.FLAG_DELIVERY_MODE | _P.FLAG_MESSAGE_ID
_FLAGS |= _P.FLAG_TIMESTAMP | _P.FLAG_TYPE
_FLAGS_BYTES = struct.pack(">H", _FLAGS)
_FLAGS_CORRELATED_BYTES = struct.pack(">H", _FLAGS | _P.FLAG_CORRELATION_ID)
_DELIVERY_MODE = struct.pack("B", PERSISTENT)
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_LONG_STRING = struct.Struct(">cI")


class NotEncodable(ValueError):
    """Properties that AMQP, as pika encodes it, cannot carry; the message says which, not the value."""


_NOT_ENCODABLE = (
    pika.exceptions.UnsupportedAMQPFieldException,
    pika.exceptions.ShortStringTooLong,
    struct.error,
)


def _why_not(error: Exception) -> str:
    if isinstance(error, pika.exceptions.UnsupportedAMQPFieldException):
        kind = type(error.args[-1]).__name__ if error.args else "value"
        return f"cannot be sent: its headers hold a {kind}, which pika cannot encode in an AMQP table"
    if isinstance(error, pika.exceptions.ShortStringTooLong):
        return "cannot be sent: a header name or its correlation id is longer than AMQP's 255 bytes"
    return "cannot be sent: a number in its headers is out of AMQP's range"


def _short(value: bytes) -> bytes:
    if len(value) > 255:  # as pika refuses it
        raise pika.exceptions.ShortStringTooLong(value)
    return bytes((len(value),)) + value


def _entries(headers: dict[str, Any]) -> bytes:
    pieces: list[bytes] = []
    pika.data.encode_table(pieces, headers)
    return b"".join(pieces[1:])  # without the table's length


class JsonPropertiesEncoder:
    """`content_type` application/json, persistent, with `message_id`, `timestamp`, `type`,
    `correlation_id` (when set) and headers: the message's own, `shared`, and `type_header`
    repeating the type. `shared` and `type_header` win over a message's own header of the same name."""

    def __init__(self, shared: dict[str, Any], type_header: str) -> None:
        self._shared = _entries(shared)
        self._type_key = _short(type_header.encode())
        self._reserved = frozenset(shared) | {type_header}

    def encode(
        self,
        message_id: int,
        headers: dict[str, Any] | None,
        type_: str,
        correlation_id: str | None,
        timestamp: int,
    ) -> Encoded:
        """Raises NotEncodable for what AMQP cannot carry (a float in the headers, for one)."""
        try:
            type_bytes = type_.encode()
            table = self._shared
            if headers:
                if not self._reserved.isdisjoint(headers):
                    headers = {k: v for k, v in headers.items() if k not in self._reserved}
                table = _entries(headers) + table
            table += self._type_key + _LONG_STRING.pack(b"S", len(type_bytes)) + type_bytes
            return Encoded(
                b"".join(
                    (
                        _FLAGS_BYTES if correlation_id is None else _FLAGS_CORRELATED_BYTES,
                        b"\x10application/json",
                        _U32.pack(len(table)),
                        table,
                        _DELIVERY_MODE,
                        b"" if correlation_id is None else _short(correlation_id.encode()),
                        _short(str(message_id).encode()),
                        _U64.pack(timestamp),
                        _short(type_bytes),
                    )
                )
            )
        except _NOT_ENCODABLE as error:
            raise NotEncodable(_why_not(error)) from None
