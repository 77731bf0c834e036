"""A ScalePolicy stands aside from a HorizontalPodAutoscaler on its target, as KEDA does.

Both would write the target's spec.replicas, each undoing the other's change on every sync. So a
policy whose target is also the `scaleTargetRef` of an HPA it does not own changes nothing and is
Stalled (`ConflictWithHPA`, naming the HPA) until that HPA is gone. Looked at on every poll.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from habitat_operator.api.scalepolicy import ScalePolicyReason, ScaleTarget
from habitat_operator.controllers.base import kube


@dataclass(frozen=True)
class Standoff:
    """Why the policy must leave its target alone this poll."""

    reason: str
    message: str


def competing_autoscaler(autoscalers: Iterable[kube.JsonDict], target: ScaleTarget, uid: str) -> str | None:
    """The name of the first HPA that scales `target` and is not owned by the policy `uid`."""
    for hpa in autoscalers:
        meta = hpa.get("metadata") or {}
        ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        group = str(ref.get("apiVersion") or "apps/v1").split("/")[0]
        owned = any(owner.get("uid") == uid for owner in meta.get("ownerReferences") or [])
        if (group, ref.get("kind"), ref.get("name")) == ("apps", target.kind, target.name) and not owned:
            return str(meta.get("name"))
    return None


async def standoff(namespace: str, target: ScaleTarget, uid: str) -> Standoff | None:
    """A Standoff when an HPA scales `target` (or the HPAs cannot be read); None to go ahead."""
    try:
        autoscalers = await kube.list_autoscalers(namespace)
    except kube.Forbidden:
        return Standoff(
            ScalePolicyReason.TARGET_FORBIDDEN,
            "the operator is not allowed to list HorizontalPodAutoscalers (check its RBAC); "
            "it changes nothing until it can tell that no HPA scales the target",
        )
    name = competing_autoscaler(autoscalers, target, uid)
    if name is None:
        return None
    return Standoff(
        ScalePolicyReason.CONFLICT_WITH_HPA,
        f"HorizontalPodAutoscaler {name} already scales {target.kind} {target.name}; "
        "this policy changes nothing until it is gone",
    )
