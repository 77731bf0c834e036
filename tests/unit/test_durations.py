from datetime import timedelta

import pytest

from habitat_operator.durations import format_duration, parse_duration


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


MINUTE, HOUR, DAY, YEAR = 60, 3600, 86400, 365 * 86400
MS = 0.001


# The cases of kubectl's own tests (k8s.io/apimachinery/pkg/util/duration, HumanDuration).
@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (1, "1s"),
        (12.7, "12s"),
        (70, "70s"),
        (184, "3m4s"),
        (190, "3m10s"),
        (70 * MINUTE, "70m"),
        (62 * MINUTE, "62m"),
        (3 * HOUR + 2 * MINUTE, "3h2m"),
        (47 * HOUR, "47h"),
        (49 * HOUR, "2d1h"),
        ((8 * 24 + 2) * HOUR, "8d"),
        (367 * DAY, "367d"),
        (2 * YEAR + 25 * HOUR, "2y1d"),
        (8 * YEAR + 2 * HOUR, "8y"),
    ],
)
def test_formats_like_kubectl(seconds: float, expected: str) -> None:
    assert format_duration(seconds) == expected


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (-2, "<invalid>"),
        (-2 + 1e-9, "0s"),
        (0, "0s"),
        (0.317, "0s"),
        (1 - MS, "0s"),
        (2 * MINUTE - MS, "119s"),
        (2 * MINUTE, "2m"),
        (2 * MINUTE + 1, "2m1s"),
        (10 * MINUTE - MS, "9m59s"),
        (10 * MINUTE, "10m"),
        (10 * MINUTE + 1, "10m"),
        (3 * HOUR - MS, "179m"),
        (3 * HOUR, "3h"),
        (3 * HOUR + MINUTE, "3h1m"),
        (8 * HOUR - MS, "7h59m"),
        (8 * HOUR, "8h"),
        (8 * HOUR + 59 * MINUTE, "8h"),
        (2 * DAY - MS, "47h"),
        (2 * DAY, "2d"),
        (2 * DAY + HOUR, "2d1h"),
        (8 * DAY - MS, "7d23h"),
        (8 * DAY, "8d"),
        (8 * DAY + 23 * HOUR, "8d"),
        (2 * YEAR - MS, "729d"),
        (2 * YEAR, "2y"),
        (2 * YEAR + 23 * HOUR + 59 * MINUTE, "2y"),
        (2 * YEAR + DAY - MS, "2y"),
        (2 * YEAR + DAY, "2y1d"),
        (7 * YEAR, "7y"),
        (8 * YEAR - MS, "7y364d"),
        (8 * YEAR, "8y"),
        (8 * YEAR + 364 * DAY, "8y"),
        (9 * YEAR, "9y"),
    ],
)
def test_format_boundaries(seconds: float, expected: str) -> None:
    assert format_duration(seconds) == expected


@pytest.mark.parametrize("seconds", [float("nan"), float("inf"), float("-inf")])
def test_format_rejects_non_finite(seconds: float) -> None:
    with pytest.raises(ValueError, match="not a finite"):
        format_duration(seconds)
