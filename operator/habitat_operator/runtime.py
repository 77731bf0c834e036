"""Starts the operator: logging, Kubernetes clients, Kopf's settings, and the metrics/health server."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from habitat_operator import kube, metrics
from habitat_operator import logging as habitat_logging
from habitat_operator.api import GROUP
from habitat_operator.config import OperatorConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    namespaces: list[str]
    metrics_port: int
    backup_root: Path
    log_format: habitat_logging.LogFormat
    verbose: bool


def settings() -> kopf.OperatorSettings:
    s = kopf.OperatorSettings()
    # Everything Kopf stores on our objects lives under our own group, not kopf.zalando.org.
    s.persistence.finalizer = f"{GROUP}/finalizer"
    s.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    s.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    s.posting.reporting_component = "habitat-operator"
    s.posting.level = logging.WARNING  # Events are posted on purpose (kube.event), not for every log line.
    s.peering.standalone = True  # one replica (the Deployment uses the Recreate strategy)
    # A watch that silently stops delivering events is a known failure mode; reconnect regularly.
    s.watching.server_timeout = 270
    s.watching.client_timeout = 300
    return s


async def _serve_metrics(port: int, ready: asyncio.Event) -> web.AppRunner:
    async def scrape(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        return web.Response(text="ok") if ready.is_set() else web.Response(status=503, text="starting")

    app = web.Application()
    app.add_routes([web.get("/metrics", scrape), web.get("/healthz", healthz), web.get("/readyz", readyz)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner


async def _main(options: Options) -> None:
    from habitat_operator import handlers  # noqa: F401  (registers the Kopf handlers)

    ready = asyncio.Event()
    runner = await _serve_metrics(options.metrics_port, ready)
    memo = kopf.Memo(config=OperatorConfig(backup_root=options.backup_root))
    operator = asyncio.create_task(
        kopf.operator(
            settings=settings(),
            clusterwide=not options.namespaces,
            namespaces=options.namespaces,
            memo=memo,
            ready_flag=ready,  # Kopf sets it once its watches are up; /readyz reports it
            standalone=True,
        )
    )
    try:
        await operator
    finally:
        await runner.cleanup()


def run(options: Options) -> None:
    habitat_logging.configure(options.log_format, logging.DEBUG if options.verbose else logging.INFO)
    options.backup_root.mkdir(parents=True, exist_ok=True)
    kube.configure()
    metrics.record_build_info()
    log.info("starting habitat-operator", extra={"namespaces": options.namespaces or "all"})
    asyncio.run(_main(options))
