"""ScalePolicy's status: the three kstatus conditions plus Active, ScalingLimited, Fallback and Paused.

Written only when something in it changed. Messages name triggers, never their values, so a queue
that fills and drains without changing the decision causes no write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from habitat_operator import timestamps
from habitat_operator.api.scalepolicy import SCALE_POLICY, ScalePhase, ScalePolicyStatus
from habitat_operator.controllers.base import kube
from habitat_operator.controllers.base.conditions import (
    ConditionState,
    ConditionStatus,
    set_condition,
    standard_conditions,
)
from habitat_operator.controllers.base.status import merge_patch, read_status

ACTIVE = "Active"
SCALING_LIMITED = "ScalingLimited"
FALLBACK = "Fallback"
PAUSED = "Paused"


@dataclass(frozen=True)
class Flag:
    """One extra condition: its status, reason and message."""

    type: str
    on: bool
    reason: str
    message: str


class PolicyStatus:
    def __init__(self, body: kube.JsonDict) -> None:
        meta = body["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.generation: int | None = meta.get("generation")
        self.wire = self._dump(read_status(ScalePolicyStatus, body))

    @staticmethod
    def _dump(status: ScalePolicyStatus) -> dict[str, Any]:
        return status.model_dump(by_alias=True, exclude_none=True, mode="json")

    def condition(self, type_: str) -> dict[str, Any] | None:
        return next((c for c in self.wire.get("conditions", []) if c.get("type") == type_), None)

    async def write(
        self,
        state: ConditionState,
        phase: ScalePhase,
        reason: str,
        summary: str,
        flags: tuple[Flag, ...] = (),
        **fields: Any,
    ) -> bool:
        """Patches what changed; True when it wrote. `fields` are status fields by Python name."""
        now = timestamps.now()
        conditions = standard_conditions(
            self.wire.get("conditions", []), state, reason, summary, self.generation, now
        )
        for flag in flags:
            status: ConditionStatus = "True" if flag.on else "False"
            conditions = set_condition(
                conditions, flag.type, status, flag.reason, flag.message, self.generation, now
            )
        current = ScalePolicyStatus.model_validate(self.wire)
        updated = ScalePolicyStatus.model_validate(
            {
                **current.model_dump(),
                **fields,
                "phase": phase,
                "observed_generation": self.generation,
                "conditions": conditions,
            }
        )
        wire = self._dump(updated)
        if wire == self.wire:
            return False
        await kube.patch_status(SCALE_POLICY.plural, self.namespace, self.name, merge_patch(self.wire, wire))
        self.wire = wire
        return True
