"""Small JSON-over-HTTP reads for the engines, with credentials kept out of every message.

A URL may carry `user:password@`; it becomes a Basic Authorization header, and errors name only
the scheme, host and port.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from enum import StrEnum
from typing import Any

from habitat_operator.errors import PermanentError, RetryableError


def display(url: str) -> str:
    """scheme://host:port of a URL: what messages may show of it."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an HTTP error, not followed: the URL's host is the one that was checked (the
    operator's --allowed-metrics-endpoints), and urllib would send the Authorization header along."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)
MAX_BODY_BYTES = 16 * 2**20  # a query result is a few KB, a busy queue more; the URL is anyone's


def get_json(url: str, timeout: float, reason: StrEnum, bad_response: StrEnum | None = None) -> Any:
    """GET `url` and decode its JSON body; failures raise with `reason` (`bad_response`, if given,
    for an HTTP error status or a body that is not JSON) and the host only."""
    body = call_json("GET", url, timeout, reason, bad_response)
    if body is None:
        raise RetryableError(bad_response or reason, f"{display(url)} answered an empty body")
    return body


class BodyTooLarge(RetryableError):
    """The server's answer is longer than the caller's bound; nothing past the bound was read."""


class HttpStatusError(RetryableError):
    """The server answered an error status; `detail` is the start of its body (bounded), which the
    caller may show once it has made sure that nothing secret is in it."""

    def __init__(self, reason: StrEnum, message: str, status: int, detail: bytes) -> None:
        super().__init__(reason, message)
        self.status = status
        self.detail = detail


ERROR_DETAIL_BYTES = 4096


def call_json(
    method: str,
    url: str,
    timeout: float,
    reason: StrEnum,
    bad_response: StrEnum | None = None,
    *,
    payload: bytes | None = None,
    max_bytes: int = MAX_BODY_BYTES,
) -> Any:
    """`method` on `url` (with `payload` as a JSON body, if given) and its JSON answer decoded (None
    for an empty one), read no further than `max_bytes`; failures as in get_json, an error status
    as HttpStatusError."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PermanentError(reason, f"{display(url)} is not an http(s) URL")
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    request = urllib.request.Request(
        urllib.parse.urlunsplit(parts._replace(netloc=netloc)), data=payload, method=method
    )
    if payload is not None:
        request.add_header("Content-Type", "application/json")
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            body = response.read(max_bytes + 1)
        if len(body) > max_bytes:  # read no further: a hostile server's body is not ours to hold
            raise BodyTooLarge(bad_response or reason, f"{display(url)} answered more than {max_bytes} bytes")
        return json.loads(body) if body.strip() else None
    except urllib.error.HTTPError as error:
        body = error.read(ERROR_DETAIL_BYTES)
        raise HttpStatusError(
            bad_response or reason, f"{display(url)} answered HTTP {error.code}", error.code, body
        ) from None
    except (ValueError, RecursionError) as error:  # not JSON, or nested deeper than Python parses
        detail = type(error).__name__
        raise RetryableError(bad_response or reason, f"{display(url)} unreadable: {detail}") from None
    except OSError as error:  # refused, timed out, TLS
        detail = str(error.args[-1] if error.args else error)
        raise RetryableError(reason, f"{display(url)} unreachable or unreadable: {detail}") from None
