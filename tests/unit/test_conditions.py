from datetime import UTC, datetime, timedelta, timezone

from habitat_operator.controllers.base.conditions import find_condition, set_condition, standard_conditions
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


def test_set_condition_adds_and_does_not_mutate() -> None:
    existing = [{"type": "Other", "status": "True"}]
    result = set_condition(existing, "Ready", "False", "Running", "dumping", 3, T0)
    assert existing == [{"type": "Other", "status": "True"}]
    assert result == [
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
    result[0]["status"] = "False"
    assert existing[0]["status"] == "True"


def test_transition_time_moves_only_when_status_flips() -> None:
    first = set_condition([], "Ready", "False", "Running", "a", 1, T0)
    same = set_condition(first, "Ready", "False", "Retrying", "b\nc", 2, T1)
    assert same == [
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
    assert flipped[0]["lastTransitionTime"] == "2024-05-01T12:05:00Z"


def test_missing_transition_time_is_filled() -> None:
    result = set_condition([{"type": "Ready", "status": "True"}], "Ready", "True", "Ok", "", None, T1)
    assert result[0]["lastTransitionTime"] == "2024-05-01T12:05:00Z"
    assert "observedGeneration" not in result[0]


def _statuses(conditions: list[dict[str, str]]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in conditions}


def test_standard_conditions_states() -> None:
    reconciling = standard_conditions([], "reconciling", "Running", "dumping", 1, T0)
    assert _statuses(reconciling) == {"Ready": "False", "Reconciling": "True", "Stalled": "False"}
    ready = standard_conditions(reconciling, "ready", "Succeeded", "done", 1, T1)
    assert _statuses(ready) == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}
    stalled = standard_conditions(ready, "stalled", "InvalidSpec", "bad", 2, T1)
    assert _statuses(stalled) == {"Ready": "False", "Reconciling": "False", "Stalled": "True"}
    assert all(c["reason"] == "InvalidSpec" and c["observedGeneration"] == 2 for c in stalled)


def test_standard_conditions_keeps_others_and_transition_times() -> None:
    first = standard_conditions([{"type": "Verified", "status": "True"}], "reconciling", "Running", "", 1, T0)
    second = standard_conditions(first, "stalled", "Failed", "boom", 1, T1)
    assert find_condition(second, "Verified") == {"type": "Verified", "status": "True"}
    assert find_condition(second, "Stalled")["status"] == "True"  # type: ignore[index]
    assert find_condition(second, "Ready")["status"] == "False"  # type: ignore[index]
    assert find_condition(second, "Missing") is None
    times = {c["type"]: c["lastTransitionTime"] for c in second if "lastTransitionTime" in c}
    assert times == {
        "Ready": "2024-05-01T12:00:00Z",  # stayed False
        "Reconciling": "2024-05-01T12:05:00Z",
        "Stalled": "2024-05-01T12:05:00Z",
    }
