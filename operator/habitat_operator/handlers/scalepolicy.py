"""ScalePolicy: a daemon per policy that polls at its interval, and an index of policies by target."""

from __future__ import annotations

import time
from typing import Any

import kopf
import structlog

from habitat_operator.api import GROUP, VERSION
from habitat_operator.api.scalepolicy import SCALE_POLICY
from habitat_operator.controllers.scalepolicy.run import Claim, ScalePolicyLoop, target_key
from habitat_operator.handlers.common import reconcile_timer

log = structlog.get_logger(__name__)
INDEX = "scalepolicies_by_target"  # Kopf passes the index to handlers as a keyword of this name


@kopf.index(GROUP, VERSION, SCALE_POLICY.plural, id=INDEX)
async def by_target(body: kopf.Body, namespace: str | None, spec: kopf.Spec, **_: Any) -> dict[Any, Claim]:
    """Who claims which target; the oldest claim wins, the others report a Conflict."""
    return {target_key(str(namespace), dict(spec)): Claim.of(dict(body))}


@kopf.daemon(GROUP, VERSION, SCALE_POLICY.plural, id="poll", cancellation_timeout=10)
async def poll(body: kopf.Body, stopped: kopf.DaemonStopped, memo: kopf.Memo, **kwargs: Any) -> None:
    index: kopf.Index[Any, Claim] = kwargs[INDEX]
    namespace = body["metadata"]["namespace"]
    claims = lambda: list(index.get(target_key(namespace, dict(body["spec"])), []))  # noqa: E731
    loop = ScalePolicyLoop(dict(body), claims, memo.config.allowed_metrics_endpoints)
    try:
        while not stopped:
            started = time.monotonic()
            delay = 10.0
            try:
                with reconcile_timer(SCALE_POLICY.kind):
                    delay = await loop.poll(
                        dict(body)
                    )  # Kopf's daemon body is a live view of the latest object
            except Exception:  # the next poll tries again; the daemon and its memory survive
                log.exception(
                    "scalepolicy poll failed", namespace=namespace, scalepolicy=body["metadata"]["name"]
                )
            await stopped.wait(max(0.0, delay - (time.monotonic() - started)))
    finally:
        loop.forget()
