"""Status conditions as plain dicts in wire format (camelCase), pure functions only.

Every kind carries the same three kstatus-style conditions, so generic tooling
(`kubectl wait --for=condition=Ready`, kstatus, Argo CD/Flux health) understands them:

- Ready: the resource has reached what its spec asks for.
- Reconciling: the operator is working on it (includes retrying after a transient failure).
- Stalled: it cannot progress without a change to the spec or its environment
  (invalid spec, missing Secret, retries exhausted).

A run suspended on purpose (`spec.suspend`) has all three False: it waits, without an error.
"""

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from habitat_operator.errors import one_line
from habitat_operator.timestamps import rfc3339

ConditionStatus = Literal["True", "False", "Unknown"]
ConditionState = Literal["reconciling", "ready", "stalled", "paused"]

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"

# (Ready, Reconciling, Stalled) for each state.
_STATE_STATUSES: dict[ConditionState, tuple[ConditionStatus, ConditionStatus, ConditionStatus]] = {
    "reconciling": ("False", "True", "False"),
    "ready": ("True", "False", "False"),
    "stalled": ("False", "False", "True"),
    # Suspended on purpose before it is done: not ready, not working, and no error (kstatus: Current).
    "paused": ("False", "False", "False"),
}


def find_condition(conditions: Sequence[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    """The condition of that type, or None."""
    return next((c for c in conditions if c.get("type") == type_), None)


def set_condition(
    conditions: Sequence[dict[str, Any]],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """Return a new list with the condition of `type_` added or updated; the input is not modified.

    lastTransitionTime moves only when the status flips, so it tells how long the
    condition has held; reason, message and observedGeneration always follow the caller.
    """
    previous = find_condition(conditions, type_)
    if previous is not None and previous.get("status") == status and "lastTransitionTime" in previous:
        transition = previous["lastTransitionTime"]
    else:
        transition = rfc3339(now)
    updated: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": one_line(message),
        "lastTransitionTime": transition,
    }
    if generation is not None:
        updated["observedGeneration"] = generation
    result = [updated if c.get("type") == type_ else dict(c) for c in conditions]
    if previous is None:
        result.append(updated)
    return result


def standard_conditions(
    existing: Sequence[dict[str, Any]],
    state: ConditionState,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """Set Ready, Reconciling and Stalled consistently for `state`; other conditions are kept.

    The same reason and message go on all three, so whichever one a tool reads explains the state.
    """
    ready, reconciling, stalled = _STATE_STATUSES[state]
    conditions = set_condition(existing, READY, ready, reason, message, generation, now)
    conditions = set_condition(conditions, RECONCILING, reconciling, reason, message, generation, now)
    return set_condition(conditions, STALLED, stalled, reason, message, generation, now)
