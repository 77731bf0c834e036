"""RabbitMQ's management API for definitions: export (GET /api/definitions[/<vhost>]) and import
(POST, same path). Answers are read no further than MAX_DEFINITIONS_BYTES; messages name the
host and port only, and a broker's error is shown without any password hash of what was sent.
All methods block: call them with engines.threads.in_thread.
"""

from __future__ import annotations

import json
import urllib.parse

from habitat_operator.api.common import Reason
from habitat_operator.api.rabbitmq_definitions import DefinitionsReason
from habitat_operator.engines.http import BodyTooLarge, HttpStatusError, call_json, display
from habitat_operator.engines.rabbitmq.definitions import (
    MAX_DEFINITIONS_BYTES,
    Definitions,
    check_shape,
    encode,
    redact,
    too_large,
)
from habitat_operator.errors import OperationError, PermanentError, RetryableError, one_line

REQUEST_TIMEOUT = 60.0
_AUTH_STATUSES = (401, 403)


class ManagementApi:
    """One broker's management API, by its URL (http://user:password@host:15672/api)."""

    def __init__(self, url: str) -> None:
        try:
            parts = urllib.parse.urlsplit(url.strip())
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            raise PermanentError(
                Reason.INVALID_CONNECTION_URI, "the management API URL cannot be parsed"
            ) from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PermanentError(
                Reason.INVALID_CONNECTION_URI,
                "the management API URL must be http(s)://user:password@host:port/api",
            )
        self._url = urllib.parse.urlunsplit(parts).rstrip("/")
        self.display = display(self._url).split("://", 1)[1]

    def __repr__(self) -> str:
        return f"ManagementApi({self.display!r})"

    def export(self, vhost: str | None) -> Definitions:
        """The broker's definitions (one vhost's, if given)."""
        what = self._what(vhost)
        try:
            document = call_json(
                "GET",
                self._path(vhost),
                REQUEST_TIMEOUT,
                DefinitionsReason.BROKER_UNAVAILABLE,
                DefinitionsReason.BROKER_REFUSED,
                max_bytes=MAX_DEFINITIONS_BYTES,
            )
        except BodyTooLarge:
            raise too_large(what) from None
        except HttpStatusError as error:
            raise self._refused(error, what, {}) from None
        return check_shape(document, what)

    def import_definitions(self, definitions: Definitions, vhost: str | None) -> None:
        """POST the definitions (into one vhost, if given); RabbitMQ applies them all or reports why not."""
        what = self._what(vhost)
        try:
            call_json(
                "POST",
                self._path(vhost),
                REQUEST_TIMEOUT,
                DefinitionsReason.BROKER_UNAVAILABLE,
                DefinitionsReason.BROKER_REFUSED,
                payload=encode(definitions),
                max_bytes=64 * 1024,
            )
        except HttpStatusError as error:
            raise self._refused(error, f"importing into {what}", definitions) from None

    def _path(self, vhost: str | None) -> str:
        suffix = f"/{urllib.parse.quote(vhost, safe='')}" if vhost is not None else ""
        return f"{self._url}/definitions{suffix}"

    def _what(self, vhost: str | None) -> str:
        return f"the definitions of {self.display}" + (f" vhost {vhost!r}" if vhost is not None else "")

    def _refused(self, error: HttpStatusError, what: str, sent: Definitions) -> OperationError:
        """An error status as a readable line: the broker's own reason, without secrets we sent."""
        if error.status in _AUTH_STATUSES:
            return RetryableError(
                Reason.AUTHENTICATION_FAILED,
                f"{what}: the management API answered HTTP {error.status}"
                " (check the Secret's user and its tags)",
            )
        if error.status == 404:
            return PermanentError(
                DefinitionsReason.BROKER_REFUSED, f"{what}: not found (HTTP 404; no such vhost?)"
            )
        why = _broker_reason(error.detail)
        detail = f": {one_line(redact(why, sent), 300)}" if why else ""
        if 400 <= error.status < 500:
            return PermanentError(DefinitionsReason.BROKER_REFUSED, f"{what}: HTTP {error.status}{detail}")
        return RetryableError(DefinitionsReason.BROKER_UNAVAILABLE, f"{what}: HTTP {error.status}{detail}")


def _broker_reason(detail: bytes) -> str:
    """The `reason` of the management API's error body ({"error": ..., "reason": ...}), if any."""
    try:
        body = json.loads(detail)
    except ValueError:
        return ""
    reason = body.get("reason") if isinstance(body, dict) else None
    return reason if isinstance(reason, str) else ""
