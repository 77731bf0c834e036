"""Writing an object's status the same way for every kind: phase, the three conditions, generation.

Status is read and written through the kind's status model in `api/`: validated on read, dumped in
wire form (camelCase, JSON-ready, no nulls) on write, so a field the CRD does not know cannot be
written by mistake.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Generic, TypeVar

from habitat_operator import timestamps
from habitat_operator.api.common import Phase, ResourceStatus
from habitat_operator.controllers.base import kube
from habitat_operator.controllers.base.conditions import ConditionState, standard_conditions

# A one-shot object in one of these has run; it never runs again.
TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})

StatusT = TypeVar("StatusT", bound=ResourceStatus)


def read_status(model: type[StatusT], body: kube.JsonDict) -> StatusT:
    """The object's status as its model; fields the model no longer has (an older operator's) are
    dropped, as the apiserver prunes them on the next write anyway."""
    raw = body.get("status") or {}
    known = {field.alias or name for name, field in model.model_fields.items()}
    return model.model_validate({k: v for k, v in raw.items() if k in known})


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`: changed keys, and null for
    removed ones at any depth (a merge patch merges nested objects, so a dropped key must be named)."""
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            nested = merge_patch(before, value)
            if nested:
                patch[key] = nested
        elif before != value:
            patch[key] = value
    return patch


class StatusReporter(Generic[StatusT]):
    """Patches one object's status at once, keeping conditions' transition times across writes."""

    def __init__(self, plural: str, body: kube.JsonDict, model: type[StatusT]) -> None:
        meta = body["metadata"]
        self.plural = plural
        self.model = model
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.generation: int | None = meta.get("generation")
        self.status: StatusT = read_status(model, body)
        self._wire = self._dump(self.status)

    @staticmethod
    def _dump(status: ResourceStatus) -> dict[str, Any]:
        return status.model_dump(by_alias=True, exclude_none=True, mode="json")

    async def write(
        self, state: ConditionState, phase: Phase, reason: StrEnum, summary: str, **changes: Any
    ) -> None:
        """`summary` is the conditions' message; `changes` are further fields of the status model,
        by their Python names, where None removes a field."""
        conditions = standard_conditions(
            self._wire.get("conditions", []), state, reason, summary, self.generation, timestamps.now()
        )
        updated = self.model.model_validate(
            {
                **self.status.model_dump(),
                **changes,
                "phase": phase,
                "observed_generation": self.generation,
                "conditions": conditions,
            }
        )
        wire = self._dump(updated)
        if wire == self._wire:
            return  # nothing changed: no write, no watch event, no churn
        await kube.patch_status(self.plural, self.namespace, self.name, merge_patch(self._wire, wire))
        self.status, self._wire = updated, wire
