"""How many messages wait in a queue: the management API (ready + unacknowledged) or AMQP (ready).

The management API is the better signal for scaling: messages that workers have taken but not yet
acknowledged are work in progress, and counting only ready messages would remove busy workers. Its
figures are sampled by the broker (`collect_statistics_interval`, 5 s by default); a passive
declare over AMQP is exact at once but sees ready messages only.
"""

from __future__ import annotations

import urllib.parse

import pika
import pika.exceptions

from habitat_operator.api.scalepolicy import ScalePolicyReason
from habitat_operator.engines.http import display, get_json
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


def amqp_depth(uri: str, queue: str, timeout: float) -> int:
    """Ready messages of `queue`, by a passive declare (which never creates the queue)."""
    try:
        params = pika.URLParameters(uri)
    except Exception:  # pika raises many types for a malformed URI; none may carry it into a message
        raise PermanentError(ScalePolicyReason.SOURCE_UNAVAILABLE, "the AMQP URI is malformed") from None
    params.connection_attempts = 1
    params.socket_timeout = timeout
    params.stack_timeout = timeout
    params.blocked_connection_timeout = timeout
    where = f"amqp://{params.host}:{params.port}"
    try:
        connection = pika.BlockingConnection(params)
    except pika.exceptions.AMQPError as error:
        raise RetryableError(
            ScalePolicyReason.SOURCE_UNAVAILABLE, f"{where} unreachable: {type(error).__name__}"
        ) from None
    try:
        method = connection.channel().queue_declare(queue, passive=True)
        return int(method.method.message_count)
    except pika.exceptions.ChannelClosedByBroker as error:
        raise RetryableError(
            ScalePolicyReason.SOURCE_UNAVAILABLE, f"{where}: queue {queue!r}: {error.reply_text}"
        ) from None
    except pika.exceptions.AMQPError as error:
        raise RetryableError(
            ScalePolicyReason.SOURCE_UNAVAILABLE, f"{where}: {type(error).__name__}"
        ) from None
    finally:
        if connection.is_open:
            connection.close()


__all__ = ["amqp_depth", "display", "management_depth"]
