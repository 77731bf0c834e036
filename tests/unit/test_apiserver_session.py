"""The connection to the apiserver (handlers/login.py, controllers/base/apiserver.py): the operator's
credentials, a rotated ServiceAccount token read again, and at most API_REQUESTS_AT_ONCE requests (and so
connections) in flight besides the watches, Kopf's and kube.py's together. Unbounded, a burst of 1,000
new objects opened hundreds of TLS connections at once, each with its read buffers, and the heap they
fragmented stayed (docs/benchmarks.md). Against a real local HTTP server."""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
from aiohttp import web
from kopf._cogs.clients import watching

from dev_stack.pki import write_pki
from habitat_operator.controllers.base import apiserver, kube
from habitat_operator.controllers.base.apiserver import API_REQUESTS_AT_ONCE
from habitat_operator.handlers import login

TOKEN = "s3cret-token"


class FakeApiserver:
    """Answers GETs after a moment, keeps watches open until stopped, and counts what it saw."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most_in_flight = 0
        self.connections: set[Any] = set()
        self.bearer_tokens: set[str] = set()  # the scheme is case-insensitive (RFC 7235)
        self.accepted_token: str | None = None  # when set, any other token is refused (HTTP 401)
        self.stopping = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        self.bearer_tokens.add(token if scheme.lower() == "bearer" else f"(not a bearer token: {scheme!r})")
        if self.accepted_token is not None and token != self.accepted_token:
            return web.json_response({"kind": "Status", "code": 401}, status=401)
        assert request.transport is not None
        self.connections.add(request.transport.get_extra_info("peername"))
        if request.query.get("watch") == "true":
            stream = web.StreamResponse()
            await stream.prepare(request)
            await stream.write(b'{"type": "ADDED", "object": {}}\n')
            await self.stopping.wait()
            return stream
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.02)
            return web.json_response({"kind": "Status", "items": ["x" * 1000] * 20})
        finally:
            self.in_flight -= 1


@pytest.fixture
def kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The operator outside a cluster: a kubeconfig with a bearer token (Kopf's login reads it)."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    path = tmp_path / "kubeconfig"
    monkeypatch.setenv("KUBECONFIG", str(path))
    yield path


Scenario = Callable[[FakeApiserver, str], Awaitable[None]]


def against_apiserver(kubeconfig: Path, scenario: Scenario, pki: Path | None = None) -> FakeApiserver:
    """Runs `scenario` with a local apiserver that the kubeconfig names, over TLS with the serving
    certificate in `pki` if given; returns what it saw."""

    async def main() -> FakeApiserver:
        server = FakeApiserver()
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", server.handle)
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        tls = None
        if pki is not None:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(pki / "serving.crt", pki / "serving.key")
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
        url = f"{'https' if tls else 'http'}://127.0.0.1:{runner.addresses[0][1]}"
        kubeconfig.write_text(
            f"""
apiVersion: v1
kind: Config
clusters: [{{name: local, cluster: {{server: "{url}"}}}}]
users: [{{name: operator, user: {{token: {TOKEN}}}}}]
contexts: [{{name: local, context: {{cluster: local, user: operator}}}}]
current-context: local
"""
        )
        try:
            await scenario(server, url)
        finally:
            await kube.close()
            server.stopping.set()
            await runner.cleanup()
        return server

    return asyncio.run(main())


async def kopf_session(url: str) -> kopf.AiohttpSession:
    context = await login.login(logger=logging.getLogger("test"), settings=kopf.OperatorSettings())
    assert isinstance(context, kopf.AiohttpSession)
    assert context.server == url
    return context


async def get(session: aiohttp.ClientSession, url: str) -> Any:
    # As Kopf's client reads an answer (kopf/_cogs/clients/api.py).
    async with session.get(f"{url}/apis/ops.habitat.dev/v1alpha1/backups") as response:
        return await response.json()


def test_kopf_logs_in_with_the_kubeconfig_token(kubeconfig: Path) -> None:
    async def scenario(_: FakeApiserver, url: str) -> None:
        context = await kopf_session(url)
        async with context.aiohttp_session as session:
            assert (await get(session, url))["kind"] == "Status"

    server = against_apiserver(kubeconfig, scenario)
    assert server.bearer_tokens == {TOKEN}


def test_a_burst_of_requests_opens_no_more_connections_than_the_bound(kubeconfig: Path) -> None:
    async def scenario(_: FakeApiserver, url: str) -> None:
        context = await kopf_session(url)
        async with context.aiohttp_session as session:
            burst = [get(session, url) for _ in range(10 * API_REQUESTS_AT_ONCE)]
            assert len(await asyncio.gather(*burst)) == len(burst)

    server = against_apiserver(kubeconfig, scenario)
    assert server.most_in_flight == API_REQUESTS_AT_ONCE
    assert len(server.connections) <= API_REQUESTS_AT_ONCE


def test_watches_leave_the_requests_their_slots(kubeconfig: Path) -> None:
    # With a namespace list, Kopf holds a watch per kind and namespace: more than the bound.
    async def scenario(_: FakeApiserver, url: str) -> None:
        context = await kopf_session(url)
        async with context.aiohttp_session as session, asyncio.timeout(10):
            watches = [
                await session.get(f"{url}/apis/ops.habitat.dev/v1alpha1/namespaces/n{i}/backups?watch=true")
                for i in range(2 * API_REQUESTS_AT_ONCE)
            ]
            assert (await get(session, url))["kind"] == "Status"
            for watch in watches:
                watch.close()

    server = against_apiserver(kubeconfig, scenario)
    assert len(server.connections) == 2 * API_REQUESTS_AT_ONCE + 1


def test_kopf_and_kube_together_keep_to_the_bound(kubeconfig: Path) -> None:
    async def scenario(_: FakeApiserver, url: str) -> None:
        context = await kopf_session(url)  # the login connects kube.py too
        async with context.aiohttp_session as session:
            kopf_burst = [get(session, url) for _ in range(5 * API_REQUESTS_AT_ONCE)]
            kube_burst = [kube.get("backups", "n", f"b{i}") for i in range(5 * API_REQUESTS_AT_ONCE)]
            await asyncio.gather(*kopf_burst, *kube_burst)

    server = against_apiserver(kubeconfig, scenario)
    assert server.most_in_flight == API_REQUESTS_AT_ONCE
    assert len(server.connections) <= 2 * API_REQUESTS_AT_ONCE  # each session has its own pool


@pytest.fixture
def service_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The pod's ServiceAccount folder, as the kubelet mounts it, with the test's CA."""
    pki = tmp_path / "pki"
    write_pki(pki)
    folder = tmp_path / "serviceaccount"
    folder.mkdir()
    (folder / "ca.crt").write_bytes((pki / "ca.crt").read_bytes())
    (folder / "namespace").write_text("habitat-system\n")
    monkeypatch.setattr(apiserver, "SERVICE_ACCOUNT", folder)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "0")  # set by the scenario, once the server has its port
    return pki


def test_in_a_pod_the_rotated_token_is_read_again_when_the_apiserver_refuses_the_old_one(
    kubeconfig: Path, service_account: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kubelet replaces the token file; once the apiserver refuses the old token (HTTP 401), Kopf's
    session and kube.py's calls send the new one at once, without a new login."""
    token_file = apiserver.SERVICE_ACCOUNT / "token"

    async def scenario(server: FakeApiserver, url: str) -> None:
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", url.rsplit(":", 1)[1])
        token_file.write_text("first-token\n")
        server.accepted_token = "first-token"
        context = await kopf_session(url)
        assert context.default_namespace == "habitat-system"
        async with context.aiohttp_session as session:
            await get(session, url)
            await kube.get("backups", "n", "b")
            assert server.bearer_tokens == {"first-token"}

            token_file.write_text("rotated-token\n")
            server.accepted_token = "rotated-token"
            assert (await get(session, url))["kind"] == "Status"
            assert (await kube.get("backups", "n", "b")) is not None
            assert server.bearer_tokens == {"first-token", "rotated-token"}

    against_apiserver(kubeconfig, scenario, service_account)


def test_in_a_pod_the_token_is_read_again_every_minute(
    kubeconfig: Path, service_account: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the old token is refused, the new one is sent within TOKEN_REREAD_SECONDS."""
    token_file = apiserver.SERVICE_ACCOUNT / "token"
    monkeypatch.setattr(apiserver, "TOKEN_REREAD_SECONDS", 0.2)

    async def scenario(server: FakeApiserver, url: str) -> None:
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", url.rsplit(":", 1)[1])
        token_file.write_text("first-token")
        context = await kopf_session(url)
        async with context.aiohttp_session as session:
            await get(session, url)
            token_file.write_text("rotated-token")
            await get(session, url)
            assert server.bearer_tokens == {"first-token"}
            await asyncio.sleep(0.3)
            server.bearer_tokens.clear()
            await get(session, url)
            await kube.get("backups", "n", "b")
            assert server.bearer_tokens == {"rotated-token"}

    against_apiserver(kubeconfig, scenario, service_account)


def test_kopf_still_marks_its_watch_requests_with_watch_true() -> None:
    # The bound tells watches from other requests by this parameter: were Kopf to mark them another
    # way, watches would take the slots, and more watches than slots would stop every request.
    assert "params['watch'] = 'true'" in inspect.getsource(watching.watch_objs)
