"""Starts the operator: logging, Kopf's settings, and the metrics/health server."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass

import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from habitat_operator import logging as habitat_logging
from habitat_operator import metrics
from habitat_operator.api import GROUP
from habitat_operator.config import OperatorConfig
from habitat_operator.controllers.base import kube
from habitat_operator.controllers.base.slots import OperationSlots
from habitat_operator.engines.artifacts.store import sweep_partials, sweep_scratch_folders
from habitat_operator.health import Heartbeat, map_large_buffers, release_memory_periodically
from habitat_operator.kopf_hooks import keep_bodies_lean

log = logging.getLogger(__name__)

# How long Kopf waits for a stopped daemon (a deleted object's run cleaning up) before it polls.
DAEMON_EXIT_WAIT_SECONDS = 3.0


@dataclass(frozen=True)
class Peering:
    """Several replicas, one active: Kopf pauses every replica that sees a peer of higher priority."""

    name: str
    lifetime_seconds: int

    @staticmethod
    def startup_priority() -> int:
        """Earlier start, higher priority: a replica that starts later (a rollout, a rescheduled pod)
        stands by instead of taking over from the one at work. Equal priorities would pause both,
        so the low digits are random."""
        return -(time.time_ns() // 1_000_000 * 1000 + secrets.randbelow(1000))


@dataclass(frozen=True)
class Options:
    namespaces: list[str]
    metrics_port: int
    config: OperatorConfig
    slots: OperationSlots
    peering: Peering | None
    log_format: habitat_logging.LogFormat
    verbose: bool


def settings(peering: Peering | None) -> kopf.OperatorSettings:
    s = kopf.OperatorSettings()
    # Everything Kopf stores on our objects lives under our own group, not kopf.zalando.org.
    s.persistence.finalizer = f"{GROUP}/finalizer"
    s.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    s.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    s.posting.reporting_component = "habitat-operator"
    s.posting.level = logging.WARNING  # Events are posted on purpose (kube.event), not for every log line.
    if peering is None:
        s.peering.standalone = True  # one replica (the Deployment uses the Recreate strategy)
    else:
        s.peering.name = peering.name
        s.peering.mandatory = True  # paused until the peering says this replica is the active one
        s.peering.priority = Peering.startup_priority()
        s.peering.lifetime = peering.lifetime_seconds
        s.peering.stealth = True  # keep-alives every few seconds would drown the log
    # A deleted object's daemon stops its run and cleans up (a connection closed, a client tool
    # killed) in about a second: Kopf waits up to DAEMON_EXIT_WAIT_SECONDS for it instead of looking
    # again only when the daemon's cancellation_backoff (30 s) has passed, so the finalizer goes as
    # soon as the clean-up is done.
    s.background.instant_exit_timeout = DAEMON_EXIT_WAIT_SECONDS
    # A watch that silently stops delivering events is a known failure mode; reconnect regularly.
    s.watching.server_timeout = 270
    s.watching.client_timeout = 300
    return s


async def _serve_metrics(port: int, ready: asyncio.Event, heartbeat: Heartbeat) -> web.AppRunner:
    async def scrape(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        if heartbeat.healthy():
            return web.Response(text="ok")
        return web.Response(status=503, text=f"stalled for {heartbeat.stalled_for():.0f}s")

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
    from habitat_operator.handlers.driver import Shared, Wakeups

    ready = asyncio.Event()
    heartbeat = Heartbeat()
    beating = asyncio.create_task(heartbeat.run())
    trimming = asyncio.create_task(release_memory_periodically())
    runner = await _serve_metrics(options.metrics_port, ready, heartbeat)
    # Kopf hands each object a shallow copy of this memo: the Shared in it is the same for all.
    memo = kopf.Memo(shared=Shared(options.config, options.slots, Wakeups()))
    operator = asyncio.create_task(
        kopf.operator(
            settings=settings(options.peering),
            clusterwide=not options.namespaces,
            namespaces=options.namespaces,
            memo=memo,
            ready_flag=ready,  # Kopf sets it once its watches are up; /readyz reports it
        )
    )
    try:
        await operator
    finally:
        beating.cancel()
        trimming.cancel()
        await runner.cleanup()
        await kube.close()


def run(options: Options) -> None:
    habitat_logging.configure(options.log_format, logging.DEBUG if options.verbose else logging.INFO)
    root = options.config.backup_root
    root.mkdir(parents=True, exist_ok=True)
    # Partial artifacts of runs that a crash cut off: never complete, and nobody else removes them.
    for partial in sweep_partials(root):
        log.warning("removed a partial artifact left by an interrupted run", extra={"path": str(partial)})
    for folder in sweep_scratch_folders(options.config.scratch_dir):
        log.warning("removed a scratch folder left by a crash", extra={"path": str(folder)})
    map_large_buffers()
    keep_bodies_lean()
    metrics.record_build_info()
    log.info("starting habitat-operator", extra={"namespaces": options.namespaces or "all"})
    asyncio.run(_main(options))
