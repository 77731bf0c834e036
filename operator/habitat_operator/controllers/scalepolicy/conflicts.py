"""A ScalePolicy stands aside from a HorizontalPodAutoscaler on its target, as KEDA does.

Both would write the target's spec.replicas, each undoing the other's change on every sync. So a
policy whose target is also the `scaleTargetRef` of an HPA it does not own changes nothing and is
Stalled (`ConflictWithHPA`, naming the HPA) until that HPA is gone. The HPAs come from the
operator's index of HPAs by target (kept from the watch), so a poll costs no API request.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from habitat_operator.api.scalepolicy import ScalePolicyReason, ScaleTarget
from habitat_operator.controllers.base import kube


@dataclass(frozen=True)
class Autoscaler:
    """An HPA as the index keeps it: its name and the uids of its owners."""

    name: str
    owners: tuple[str, ...]

    @staticmethod
    def of(body: kube.JsonDict) -> Autoscaler:
        meta = body.get("metadata") or {}
        return Autoscaler(
            str(meta.get("name")), tuple(o.get("uid", "") for o in meta.get("ownerReferences") or [])
        )


def autoscaled_target(namespace: str, body: kube.JsonDict) -> tuple[str, str, str] | None:
    """The key (namespace, kind, name) of the apps/v1 workload an HPA scales, as `run.target_key`
    keys a policy's target; None for any other kind of target."""
    ref = (body.get("spec") or {}).get("scaleTargetRef") or {}
    if str(ref.get("apiVersion") or "apps/v1").split("/")[0] != "apps":
        return None
    return namespace, str(ref.get("kind")), str(ref.get("name"))


@dataclass(frozen=True)
class Standoff:
    """Why the policy must leave its target alone this poll."""

    reason: ScalePolicyReason
    message: str


def standoff(autoscalers: Iterable[Autoscaler], target: ScaleTarget, uid: str) -> Standoff | None:
    """A Standoff when an HPA not owned by the policy `uid` scales its target; None to go ahead."""
    name = next(
        (hpa.name for hpa in sorted(autoscalers, key=lambda a: a.name) if uid not in hpa.owners), None
    )
    if name is None:
        return None
    return Standoff(
        ScalePolicyReason.CONFLICT_WITH_HPA,
        f"HorizontalPodAutoscaler {name} already scales {target.kind} {target.name}; "
        "this policy changes nothing until it is gone",
    )
