import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from habitat_operator.controllers.scheduling.cron import (
    MAX_COUNTED_MISSES,
    due_runs,
    expected_interval_seconds,
    next_run,
)
from habitat_operator.errors import OperationError


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


CREATED = at(2024, 1, 1, 0, 30)


def test_next_run_is_strictly_after() -> None:
    assert next_run("0 3 * * *", at(2024, 1, 1, 2, 59)) == at(2024, 1, 1, 3, 0)
    assert next_run("0 3 * * *", at(2024, 1, 1, 3, 0)) == at(2024, 1, 2, 3, 0)


def test_next_run_accepts_macros() -> None:
    assert next_run("@daily", at(2024, 1, 1, 12)) == at(2024, 1, 2)
    assert next_run("@hourly", at(2024, 1, 1, 12, 1)) == at(2024, 1, 1, 13)


def test_next_run_converts_to_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    result = next_run("0 3 * * *", datetime(2024, 1, 1, 4, 0, tzinfo=plus_two))  # 02:00 UTC
    assert result == at(2024, 1, 1, 3, 0)
    assert result.tzinfo == UTC


def test_nothing_due_before_first_time() -> None:
    assert due_runs("0 3 * * *", None, CREATED, at(2024, 1, 1, 2, 59)) == (None, 0)


def test_first_run_due_after_creation() -> None:
    assert due_runs("0 3 * * *", None, CREATED, at(2024, 1, 1, 3, 0, 10)) == (at(2024, 1, 1, 3), 0)


def test_time_exactly_now_is_due() -> None:
    assert due_runs("0 3 * * *", None, CREATED, at(2024, 1, 1, 3, 0)) == (at(2024, 1, 1, 3), 0)


def test_time_before_creation_is_not_due() -> None:
    # 00:00 lies before the creation at 00:30.
    assert due_runs("0 0 * * *", None, CREATED, at(2024, 1, 1, 12)) == (None, 0)


def test_last_schedule_time_is_not_due_again() -> None:
    last = at(2024, 1, 1, 3)
    assert due_runs("0 3 * * *", last, CREATED, at(2024, 1, 1, 3, 0, 30)) == (None, 0)
    assert due_runs("0 3 * * *", last, CREATED, at(2024, 1, 2, 2, 59)) == (None, 0)
    assert due_runs("0 3 * * *", last, CREATED, at(2024, 1, 2, 3, 1)) == (at(2024, 1, 2, 3), 0)


def test_missed_runs_only_latest_is_due() -> None:
    last = at(2024, 1, 1, 3)
    latest, missed = due_runs("0 3 * * *", last, CREATED, at(2024, 1, 5, 12))
    assert latest == at(2024, 1, 5, 3)
    assert missed == 3  # Jan 2, 3 and 4 were skipped


def test_missed_count_is_capped() -> None:
    started = time.monotonic()
    latest, missed = due_runs("* * * * *", at(2020, 1, 1), CREATED, at(2024, 1, 1))
    assert latest == at(2024, 1, 1)
    assert missed == MAX_COUNTED_MISSES
    assert time.monotonic() - started < 5


def test_naive_datetimes_are_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        due_runs("0 3 * * *", None, datetime(2024, 1, 1), at(2024, 1, 2))
    with pytest.raises(ValueError, match="timezone-aware"):
        next_run("0 3 * * *", datetime(2024, 1, 1))


@pytest.mark.parametrize("cron", ["", "bad", "61 * * * *", "* * * *"])
def test_invalid_expression(cron: str) -> None:
    with pytest.raises(OperationError) as caught:
        next_run(cron, at(2024, 1, 1))
    assert caught.value.reason == "InvalidSchedule"
    assert not caught.value.retryable


def test_expression_that_never_fires_is_never_due() -> None:
    assert due_runs("0 0 30 2 *", None, CREATED, at(2024, 6, 1)) == (None, 0)


@pytest.mark.parametrize(
    ("cron", "seconds"),
    [
        ("* * * * *", 60),
        ("*/15 * * * *", 15 * 60),
        ("0 * * * *", 3600),
        ("0 3 * * *", 86400),
        ("@daily", 86400),
        ("0 3 * * 1-5", 3 * 86400),  # Friday to Monday
        ("0 3 * * 0", 7 * 86400),
        ("0 0 1 * *", 31 * 86400),
        ("0 9,17 * * *", 16 * 3600),
    ],
)
def test_expected_interval_is_longest_gap(cron: str, seconds: int) -> None:
    assert expected_interval_seconds(cron) == seconds
