"""ScalePolicy: a daemon per policy that polls at its interval, and an index of policies by target.

Every ScalePolicy has a daemon, and so Kopf's finalizer: it polls its triggers for as long as it
exists, and the daemon keeps the HPA-style memory (stabilization, cooldown) between polls."""

from __future__ import annotations

from typing import Any

import kopf

from habitat_operator.api import GROUP, VERSION
from habitat_operator.api.scalepolicy import SCALE_POLICY
from habitat_operator.controllers.scalepolicy.conflicts import Autoscaler, autoscaled_target
from habitat_operator.controllers.scalepolicy.run import Claim, ScalePolicyRun, target_key
from habitat_operator.handlers.driver import drive, shared

INDEX = "scalepolicies_by_target"  # Kopf passes the index to handlers as a keyword of this name
HPA_INDEX = "autoscalers_by_target"


@kopf.index(GROUP, VERSION, SCALE_POLICY.plural, id=INDEX)
async def by_target(body: kopf.Body, namespace: str | None, spec: kopf.Spec, **_: Any) -> dict[Any, Claim]:
    """Who claims which target; the oldest claim wins, the others report a Conflict."""
    return {target_key(str(namespace), dict(spec)): Claim.of(dict(body))}


@kopf.index("autoscaling", "v2", "horizontalpodautoscalers", id=HPA_INDEX)
async def hpa_by_target(body: kopf.Body, namespace: str | None, **_: Any) -> dict[Any, Autoscaler]:
    """Which HPA scales which workload: a policy on the same target stands aside (ConflictWithHPA)."""
    key = autoscaled_target(str(namespace), dict(body))
    return {} if key is None else {key: Autoscaler.of(dict(body))}


@kopf.daemon(GROUP, VERSION, SCALE_POLICY.plural, id="poll", cancellation_timeout=10)
async def poll(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **kwargs: Any) -> None:
    index: kopf.Index[Any, Claim] = kwargs[INDEX]
    hpas: kopf.Index[Any, Autoscaler] = kwargs[HPA_INDEX]
    namespace = body["metadata"]["namespace"]
    state = shared(memo)
    policy = ScalePolicyRun(
        dict(body),
        state.config,
        state.slots,
        lambda: list(index.get(target_key(namespace, dict(body["spec"])), [])),
        lambda: list(hpas.get(target_key(namespace, dict(body["spec"])), [])),
    )

    def run_for(latest: dict[str, Any]) -> ScalePolicyRun:
        policy.observe(latest)
        return policy

    try:
        await drive(SCALE_POLICY.kind, body, stopped, run_for)
    finally:
        policy.forget()
