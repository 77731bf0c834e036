"""Writing an object's status the same way for every kind: phase, conditions, generation, fields.

Status is read and written through the kind's status model in `api/`: validated on read, dumped in
wire form (camelCase, JSON-ready, no nulls) on write. A kind changes its fields by typed edits
(`Edit`), functions that set attributes of a copy of the model, so mypy refuses a field the model
does not have. Each write is a merge patch that carries the resourceVersion it was computed from:
should anyone else have written the object meanwhile, the apiserver refuses it, and the edits are
applied again to the object as it is now.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any, Generic, TypeVar

from habitat_operator import timestamps
from habitat_operator.api.common import Phase, ResourceStatus
from habitat_operator.controllers.base import kube
from habitat_operator.controllers.base.conditions import (
    ConditionState,
    Flag,
    find_condition,
    standard_conditions,
)

# A one-shot object in one of these has run; it never runs again.
TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})
CONFLICT_RETRIES = 3

StatusT = TypeVar("StatusT", bound=ResourceStatus)
Edit = Callable[[StatusT], None]
"""A change of some status fields: sets attributes of the model copy it is given."""


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
        self.resource_version: str | None = meta.get("resourceVersion")
        self.status: StatusT = read_status(model, body)
        self._wire = self._dump(self.status)
        self._carried: list[Edit[StatusT]] = []

    @staticmethod
    def _dump(status: ResourceStatus) -> dict[str, Any]:
        return status.model_dump(by_alias=True, exclude_none=True, mode="json")

    def observe(self, body: kube.JsonDict) -> None:
        """A later body of the same object (a long-lived run's next step): its generation and, if
        it is newer than what this reporter wrote, its status."""
        meta = body["metadata"]
        self.generation = meta.get("generation")
        version = meta.get("resourceVersion")
        if version is not None and version != self.resource_version:
            self.resource_version = version
            self.status = read_status(self.model, body)
            self._wire = self._dump(self.status)

    def carry(self, *edits: Edit[StatusT]) -> None:
        """Edits that every later write applies first: what a step has learnt so far."""
        self._carried.extend(edits)

    def condition(self, type_: str) -> bool | None:
        """Whether the condition of that type is True; None when there is none."""
        found = find_condition(self.status.conditions or [], type_)
        return None if found is None else found.status == "True"

    def condition_reason(self, type_: str) -> str | None:
        found = find_condition(self.status.conditions or [], type_)
        return None if found is None else found.reason

    async def write(
        self,
        state: ConditionState,
        phase: StrEnum,
        reason: StrEnum,
        summary: str,
        *edits: Edit[StatusT],
        flags: Sequence[Flag] = (),
        drop: Sequence[str] = (),
    ) -> bool:
        """Sets the phase, the conditions (`summary` is their message, `flags` the kind's own, `drop`
        the types of the kind's own that no longer apply) and whatever `edits` change; True when it
        wrote (nothing is written when nothing changed)."""
        for _ in range(CONFLICT_RETRIES):
            updated = self._updated(state, phase, reason, summary, edits, flags, drop)
            wire = self._dump(updated)
            if wire == self._wire:
                return False  # nothing changed: no write, no watch event, no churn
            try:
                version = await kube.patch_status(
                    self.plural,
                    self.namespace,
                    self.name,
                    merge_patch(self._wire, wire),
                    self.resource_version,
                )
            except kube.Conflict:
                await self._reread()
                continue
            self.status, self._wire, self.resource_version = updated, wire, version
            return True
        raise kube.Conflict(f"{self.plural} {self.namespace}/{self.name}: changed during each of 3 writes")

    def _updated(
        self,
        state: ConditionState,
        phase: StrEnum,
        reason: StrEnum,
        summary: str,
        edits: Sequence[Edit[StatusT]],
        flags: Sequence[Flag],
        drop: Sequence[str] = (),
    ) -> StatusT:
        draft = self.status.model_copy(deep=True)
        for edit in (*self._carried, *edits):
            edit(draft)
        kept = [c for c in self.status.conditions or [] if c.type not in drop]
        conditions = standard_conditions(
            kept, state, reason, summary, self.generation, timestamps.now(), flags
        )
        # Validated whole again: an edit may set a value the schema refuses (a negative count).
        return self.model.model_validate(
            {
                **draft.model_dump(),
                "phase": phase,
                "observed_generation": self.generation,
                "conditions": conditions,
            }
        )

    async def _reread(self) -> None:
        body = await kube.get(self.plural, self.namespace, self.name)
        if body is None:
            raise kube.Conflict(f"{self.plural} {self.namespace}/{self.name} is gone")
        self.observe(body)
