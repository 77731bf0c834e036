"""Status conditions as typed `Condition` models (api/common.py), pure functions only.

Every kind carries the same three kstatus-style conditions, so generic tooling
(`kubectl wait --for=condition=Ready`, kstatus, Argo CD/Flux health) understands them:

- Ready: the resource has reached what its spec asks for.
- Reconciling: the operator is working on it (includes retrying after a transient failure).
- Stalled: it cannot progress without a change to the spec or its environment
  (invalid spec, missing Secret, retries exhausted).

A run suspended on purpose (`spec.suspend`) has all three False: it waits, without an error.
A kind may add conditions of its own (ScalePolicy's Active, Fallback, ...) as `Flag`s.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from habitat_operator.api.common import Condition
from habitat_operator.errors import one_line

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


@dataclass(frozen=True)
class Flag:
    """A condition of the kind's own beside the three standard ones: on is True, off is False."""

    type: str
    on: bool
    reason: str
    message: str


def find_condition(conditions: Sequence[Condition], type_: str) -> Condition | None:
    """The condition of that type, or None."""
    return next((c for c in conditions if c.type == type_), None)


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    """Return a new list with the condition of `type_` added or updated; the input is not modified.

    lastTransitionTime moves only when the status flips, so it tells how long the
    condition has held; reason, message and observedGeneration always follow the caller.
    """
    previous = find_condition(conditions, type_)
    if previous is not None and previous.status == status and previous.last_transition_time is not None:
        transition = previous.last_transition_time
    else:
        transition = now
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=one_line(message),
        last_transition_time=transition,
        observed_generation=generation,
    )
    result = [updated if c.type == type_ else c.model_copy() for c in conditions]
    if previous is None:
        result.append(updated)
    return result


def standard_conditions(
    existing: Sequence[Condition],
    state: ConditionState,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
    flags: Sequence[Flag] = (),
) -> list[Condition]:
    """Set Ready, Reconciling and Stalled consistently for `state`, then the kind's `flags`; other
    conditions are kept.

    The same reason and message go on all three, so whichever one a tool reads explains the state.
    """
    ready, reconciling, stalled = _STATE_STATUSES[state]
    conditions = set_condition(existing, READY, ready, reason, message, generation, now)
    conditions = set_condition(conditions, RECONCILING, reconciling, reason, message, generation, now)
    conditions = set_condition(conditions, STALLED, stalled, reason, message, generation, now)
    for flag in flags:
        on: ConditionStatus = "True" if flag.on else "False"
        conditions = set_condition(conditions, flag.type, on, flag.reason, flag.message, generation, now)
    return conditions
