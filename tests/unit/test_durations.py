from datetime import timedelta

import pytest

from habitat_operator.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("250ms", timedelta(milliseconds=250)),
        ("1m5ms", timedelta(minutes=1, milliseconds=5)),
        ("0s", timedelta()),
        ("1d1h1m1s", timedelta(days=1, hours=1, minutes=1, seconds=1)),
    ],
)
def test_parses(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "10", "h", "1.5h", "-1h", "1y", "1h 30m", " 1h", "1H", "1hm"])
def test_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_rejects_overflow() -> None:
    with pytest.raises(ValueError, match="too large"):
        parse_duration("99999999999w")
