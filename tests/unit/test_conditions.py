from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from habitat_operator.api.common import Condition
from habitat_operator.controllers.base.conditions import (
    Flag,
    find_condition,
    set_condition,
    standard_conditions,
)
from habitat_operator.errors import MESSAGE_LIMIT, one_line
from habitat_operator.timestamps import rfc3339

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def test_one_line_collapses_whitespace() -> None:
    assert one_line("  pg_dump: error:\n  connection\trefused\r\n") == "pg_dump: error: connection refused"


def test_one_line_caps_length() -> None:
    capped = one_line("x" * 1000)
    assert len(capped) == MESSAGE_LIMIT
    assert capped.endswith("…")
    assert one_line("abcdef", limit=5) == "abcd…"


def test_rfc3339() -> None:
    assert rfc3339(T0) == "2024-05-01T12:00:00Z"
    assert rfc3339(datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))) == "2024-05-01T12:00:00Z"
    assert rfc3339(datetime(2024, 5, 1, 12, 0)) == "2024-05-01T12:00:00Z"


def _condition(**fields: Any) -> Condition:
    return Condition.model_validate(fields)


def test_set_condition_adds_and_does_not_mutate() -> None:
    existing = [_condition(type="Other", status="True")]
    result = set_condition(existing, "Ready", "False", "Running", "dumping", 3, T0)
    assert existing == [_condition(type="Other", status="True")]
    assert [c.model_dump(by_alias=True, exclude_none=True, mode="json") for c in result] == [
        {"type": "Other", "status": "True"},
        {
            "type": "Ready",
            "status": "False",
            "reason": "Running",
            "message": "dumping",
            "lastTransitionTime": "2024-05-01T12:00:00Z",
            "observedGeneration": 3,
        },
    ]
    result[0].status = "False"
    assert existing[0].status == "True"


def test_transition_time_moves_only_when_status_flips() -> None:
    first = set_condition([], "Ready", "False", "Running", "a", 1, T0)
    same = set_condition(first, "Ready", "False", "Retrying", "b\nc", 2, T1)
    assert [c.model_dump(by_alias=True, exclude_none=True, mode="json") for c in same] == [
        {
            "type": "Ready",
            "status": "False",
            "reason": "Retrying",
            "message": "b c",
            "lastTransitionTime": "2024-05-01T12:00:00Z",
            "observedGeneration": 2,
        }
    ]
    flipped = set_condition(same, "Ready", "True", "Succeeded", "done", 2, T1)
    assert flipped[0].last_transition_time is not None
    assert rfc3339(flipped[0].last_transition_time) == "2024-05-01T12:05:00Z"


def test_missing_transition_time_is_filled() -> None:
    result = set_condition([_condition(type="Ready", status="True")], "Ready", "True", "Ok", "", None, T1)
    assert result[0].last_transition_time == T1
    assert result[0].observed_generation is None


def _statuses(conditions: list[Condition]) -> dict[str, str]:
    return {c.type: c.status for c in conditions}


def test_standard_conditions_states() -> None:
    reconciling = standard_conditions([], "reconciling", "Running", "dumping", 1, T0)
    assert _statuses(reconciling) == {"Ready": "False", "Reconciling": "True", "Stalled": "False"}
    ready = standard_conditions(reconciling, "ready", "Succeeded", "done", 1, T1)
    assert _statuses(ready) == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}
    stalled = standard_conditions(ready, "stalled", "InvalidSpec", "bad", 2, T1)
    assert _statuses(stalled) == {"Ready": "False", "Reconciling": "False", "Stalled": "True"}
    assert all(c.reason == "InvalidSpec" and c.observed_generation == 2 for c in stalled)


def test_standard_conditions_keeps_others_and_transition_times() -> None:
    first = standard_conditions(
        [_condition(type="Verified", status="True")], "reconciling", "Running", "", 1, T0
    )
    second = standard_conditions(first, "stalled", "Failed", "boom", 1, T1)
    assert find_condition(second, "Verified") == _condition(type="Verified", status="True")
    assert find_condition(second, "Stalled").status == "True"  # type: ignore[union-attr]
    assert find_condition(second, "Ready").status == "False"  # type: ignore[union-attr]
    assert find_condition(second, "Missing") is None
    times = {c.type: rfc3339(c.last_transition_time) for c in second if c.last_transition_time is not None}
    assert times == {
        "Ready": "2024-05-01T12:00:00Z",  # stayed False
        "Reconciling": "2024-05-01T12:05:00Z",
        "Stalled": "2024-05-01T12:05:00Z",
    }


def test_flags_are_set_after_the_standard_three() -> None:
    flags = (Flag("Active", True, "TriggerActive", "queue"), Flag("Paused", False, "NotPaused", "no"))
    conditions = standard_conditions([], "ready", "TargetFound", "scaling", 4, T0, flags)
    assert _statuses(conditions) == {
        "Ready": "True",
        "Reconciling": "False",
        "Stalled": "False",
        "Active": "True",
        "Paused": "False",
    }
    assert find_condition(conditions, "Active").reason == "TriggerActive"  # type: ignore[union-attr]
