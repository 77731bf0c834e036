"""Where the apiserver is and who the operator is to it, shared by Kopf's session (handlers/login.py)
and the operator's own calls (kube.py): one TLS setup, one bound on the requests in flight.

At most API_REQUESTS_AT_ONCE requests are in flight in an event loop, Kopf's and kube.py's together,
so at most as many connections serve them: unbounded, a burst of 1,000 new objects opened hundreds
of TLS connections at once, each with asyncio's 256 KiB TLS read buffer, and the heap they
fragmented stayed after the burst (docs/benchmarks.md). Watches, which stay open for minutes, are not
counted (with a namespace list Kopf holds one per kind and namespace; they must never wait for a slot).

In a pod, the ServiceAccount token is a file that the kubelet rotates: it is read again every
TOKEN_REREAD_SECONDS (as client-go does) and at once when the apiserver refuses it (HTTP 401).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REREAD_SECONDS = 60.0

# The apiserver answers a patch in milliseconds: 32 at once keep a burst moving without a queue.
API_REQUESTS_AT_ONCE = 32


class TokenFile:
    """A bearer token kept in a file that is replaced while the operator runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._token = ""
        self._read_at = -TOKEN_REREAD_SECONDS

    def current(self) -> str:
        # A few bytes from a tmpfs once a minute: read on the loop.
        if time.monotonic() - self._read_at >= TOKEN_REREAD_SECONDS:
            self.reread()
        return self._token

    def reread(self) -> str:
        self._token = self.path.read_text().strip()
        self._read_at = time.monotonic()
        return self._token


@dataclass(frozen=True)
class Connection:
    server: str
    ssl: ssl.SSLContext
    headers: Mapping[str, str] = field(default_factory=dict)  # credentials that do not change
    token_file: TokenFile | None = None  # a token that does (in a pod)
    default_namespace: str | None = None
    proxy: str | None = None
    trust_env: bool = False


def service_account() -> Connection | None:
    """The pod's ServiceAccount and the apiserver's address from the pod's environment; None outside
    a pod."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    token = SERVICE_ACCOUNT / "token"
    if not host or not port or not token.exists():
        return None
    namespace = SERVICE_ACCOUNT / "namespace"
    return Connection(
        server=f"https://{f'[{host}]' if ':' in host else host}:{port}",
        ssl=ssl.create_default_context(cafile=SERVICE_ACCOUNT / "ca.crt"),
        token_file=TokenFile(token),
        default_namespace=namespace.read_text().strip() if namespace.exists() else None,
    )


_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def request_slots() -> asyncio.Semaphore:
    """The running loop's API_REQUESTS_AT_ONCE slots, shared by every session it opens."""
    return _slots.setdefault(asyncio.get_running_loop(), asyncio.Semaphore(API_REQUESTS_AT_ONCE))


# Guard test (in tests/unit/test_apiserver_session.py):
# test_kopf_still_marks_its_watch_requests_with_watch_true
def _is_watch(request: aiohttp.ClientRequest) -> bool:
    return request.url.query.get("watch") == "true"


def bounded_requests(slots: asyncio.Semaphore) -> aiohttp.ClientMiddlewareType:
    """A middleware that lets requests other than watches run only with one of `slots`. A slot is held
    until the answer is read in full, so that its connection is back in the pool for the next request."""

    async def bounded(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        if _is_watch(request):
            return await handler(request)
        async with slots:
            response = await handler(request)
            await response.read()  # kept by the response: Kopf's response.json() reads it from there
            return response

    return bounded


def bearer_from(token_file: TokenFile) -> aiohttp.ClientMiddlewareType:
    """A middleware that sends the token the file holds; on a 401, reads the file again and, if the
    token changed, sends the request once more."""

    async def authorized(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        sent = token_file.current()
        request.headers["Authorization"] = f"Bearer {sent}"
        response = await handler(request)
        if response.status == 401 and (token := token_file.reread()) != sent:
            response.release()
            request.headers["Authorization"] = f"Bearer {token}"
            response = await handler(request)
        return response

    return authorized


def open_session(
    connection: Connection, timeout: aiohttp.ClientTimeout = aiohttp.client.DEFAULT_TIMEOUT
) -> aiohttp.ClientSession:
    """A session to the apiserver, bounded by the running loop's request slots. Call it in the loop."""
    middlewares = [bounded_requests(request_slots())]
    if connection.token_file is not None:
        middlewares.append(bearer_from(connection.token_file))
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ssl=connection.ssl),
        headers=dict(connection.headers),
        proxy=connection.proxy,
        trust_env=connection.trust_env,
        middlewares=tuple(middlewares),
        timeout=timeout,
    )
