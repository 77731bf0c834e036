"""The operator's connection to the apiserver: in a pod its ServiceAccount, else the kubeconfig (read by
Kopf's own `login_with_kubeconfig`). Kopf's session and the operator's own calls (kube.py) both use
it, within one bound on the requests in flight (controllers/base/apiserver.py).

Kopf's default session opens a new TLS connection for every request that finds none idle: when
1,000 objects arrive at once, hundreds of connections, and the heap they fragment stays after the
burst (docs/benchmarks.md). Kopf's default login would also import the `kubernetes` client were it
installed (about 15 MB of RSS); the operator does not depend on it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from habitat_operator.controllers.base import apiserver, kube


def find_connection(settings: kopf.OperatorSettings) -> apiserver.Connection | None:
    """In a pod, its ServiceAccount; else the current context of $KUBECONFIG or ~/.kube/config."""
    in_pod = apiserver.service_account()
    if in_pod is not None:
        return in_pod
    info = kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        return None
    return apiserver.Connection(
        server=info.server,
        ssl=info.as_ssl_context(),
        headers=info.as_http_headers(),
        default_namespace=info.default_namespace,
        proxy=info.proxy_url,
        trust_env=info.trust_env,
    )


async def login(*, settings: kopf.OperatorSettings, **_: Any) -> kopf.AiohttpSession | None:
    """Kopf calls it at start and again whenever the apiserver refuses the credentials (HTTP 401): the
    files are read afresh, as Kopf's default login does."""
    # Reads the token or kubeconfig files: off the loop.
    connection = await asyncio.to_thread(find_connection, settings)
    if connection is None:
        return None
    await kube.connect(connection)
    return kopf.AiohttpSession(
        aiohttp_session=apiserver.open_session(connection),
        server=connection.server,
        default_namespace=connection.default_namespace,
    )


kopf.on.login()(login)  # registered without rebinding the name: callers keep its own signature
