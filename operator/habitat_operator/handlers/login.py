"""Kopf's own connection to the apiserver: the credentials Kopf's default login finds (in-cluster
ServiceAccount token, else the kubeconfig), in a session that bounds the requests in flight.

Kopf's default session opens a new TLS connection for every request that finds none idle. When
1,000 objects arrive at once, each one's worker patches it at the same moment: hundreds of
connections, each with asyncio's 256 KiB TLS read buffer, and the heap they fragment stays after
the burst (docs/benchmarks.md). Here at most API_REQUESTS_AT_ONCE requests are in flight, so at
most as many connections serve them; watches, which stay open for minutes, are not counted (with a
namespace list Kopf holds one per kind and namespace, and they must never wait for a slot).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import kopf

# The apiserver answers a patch in milliseconds: 32 at once keep a burst moving without a queue.
API_REQUESTS_AT_ONCE = 32


# Guard test (in tests/unit/test_apiserver_session.py):
# test_kopf_still_marks_its_watch_requests_with_watch_true
def _is_watch(request: aiohttp.ClientRequest) -> bool:
    return request.url.query.get("watch") == "true"


def bounded_requests(limit: int) -> aiohttp.ClientMiddlewareType:
    """A middleware that lets `limit` requests other than watches run at once. A slot is held until
    the answer is read in full, so that its connection is back in the pool for the next request."""
    slots = asyncio.Semaphore(limit)

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


async def login(**kwargs: Any) -> kopf.AiohttpSession | None:
    """Kopf calls it at start and again whenever the apiserver refuses the credentials (HTTP 401): a
    rotated ServiceAccount token is read afresh, as Kopf's default login does."""
    # Reads the token or kubeconfig files and may run a kubeconfig's exec plugin: off the loop.
    info = await asyncio.to_thread(kopf.login_via_client, **kwargs)
    if info is None:
        return None
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
        proxy=info.proxy_url,
        trust_env=info.trust_env,
        middlewares=(bounded_requests(API_REQUESTS_AT_ONCE),),
    )
    return kopf.AiohttpSession(
        aiohttp_session=session,
        server=info.server,
        default_namespace=info.default_namespace,
        priority=info.priority,
        expiration=info.expiration,
    )


kopf.on.login()(login)  # registered without rebinding the name: callers keep its own signature
