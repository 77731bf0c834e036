"""Writing an object's status the same way for every kind: phase, the three conditions, generation."""

from __future__ import annotations

from typing import Any

from habitat_operator import kube
from habitat_operator.conditions import ConditionState, standard_conditions

# A one-shot object in one of these has run; it never runs again.
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


class StatusReporter:
    """Patches one object's status at once, keeping conditions' transition times across writes."""

    def __init__(self, plural: str, body: kube.JsonDict) -> None:
        meta = body["metadata"]
        self.plural = plural
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.generation: int | None = meta.get("generation")
        self.current: dict[str, Any] = dict(body.get("status") or {})

    async def write(
        self, state: ConditionState, phase: str, reason: str, summary: str, **fields: Any
    ) -> None:
        """`summary` is the conditions' message; `fields` are further status fields, wire-named
        (camelCase) and JSON-ready, where None removes a field."""
        conditions = standard_conditions(
            self.current.get("conditions", []), state, reason, summary, self.generation, kube.now()
        )
        update = {
            "phase": phase,
            "observedGeneration": self.generation,
            "conditions": conditions,
            **fields,
        }
        merged = {k: v for k, v in {**self.current, **update}.items() if v is not None}
        if merged == self.current:
            return  # nothing changed: no write, no watch event, no churn
        await kube.patch_status(self.plural, self.namespace, self.name, update)
        self.current = merged


async def record_ignored_change(plural: str, body: kube.JsonDict) -> None:
    """A finished one-shot object's spec changed: like a Job, it runs once. Say so; do nothing else."""
    status = body.get("status") or {}
    generation = body["metadata"].get("generation")
    if status.get("phase") not in TERMINAL_PHASES or status.get("ignoredGeneration") == generation:
        return
    meta = body["metadata"]
    await kube.patch_status(plural, meta["namespace"], meta["name"], {"ignoredGeneration": generation})
    kind = body["kind"]
    await kube.event(
        body, "Warning", "SpecChangeIgnored", f"a {kind} runs once; create a new {kind} to run again"
    )
