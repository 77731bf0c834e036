"""Duration strings such as "90s", "15m", "1h30m", "7d" or "2w" (pure, no I/O).

Go's time.ParseDuration has no days or weeks, and retention/maxAge wants them, so
this is our own small grammar: one or more `<digits><unit>` terms, summed.
format_duration() goes the other way for humans, exactly as kubectl prints an age.
"""

import math
import re
from datetime import timedelta

# Mirrored as the `pattern` of every duration field in the CRDs, so the apiserver rejects
# exactly what parse_duration() rejects (except values too large for a timedelta).
DURATION_PATTERN = r"^([0-9]+(ms|s|m|h|d|w))+$"

_UNITS: dict[str, timedelta] = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}
# "ms" must come before "m" so that "5ms" is not read as five minutes and a stray "s".
_TERM = re.compile(r"([0-9]+)(ms|s|m|h|d|w)")
_WHOLE = re.compile(DURATION_PATTERN)


def parse_duration(text: str) -> timedelta:
    """Parse e.g. "1h30m" into a timedelta; raise ValueError on anything else."""
    if not _WHOLE.fullmatch(text):
        raise ValueError(f"invalid duration {text!r}: expected e.g. 90s, 15m, 1h30m, 7d, 2w")
    try:
        return sum(
            (int(amount) * _UNITS[unit] for amount, unit in _TERM.findall(text)),
            start=timedelta(),
        )
    except OverflowError:
        raise ValueError(f"duration {text!r} is too large") from None


_MINUTE = 60
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR
_YEAR = 365 * _DAY


def format_duration(seconds: float) -> str:
    """A duration as kubectl shows it (`duration.HumanDuration`): "12s", "3m4s", "62m", "3h2m", "2d1h".

    About two significant figures; sub-second parts are dropped. Like kubectl, a slightly negative
    value (clock skew, under 2 s) is "0s" and a more negative one "<invalid>".
    """
    if not math.isfinite(seconds):
        raise ValueError(f"duration {seconds!r} is not a finite number of seconds")
    whole = int(seconds)  # truncates toward zero, as Go's int(d.Seconds()) does
    if whole < -1:
        return "<invalid>"
    if whole < 0:
        return "0s"
    if whole < 2 * _MINUTE:
        return f"{whole}s"
    minutes = whole // _MINUTE
    if minutes < 10:
        return _two_units(minutes, "m", whole % _MINUTE, "s")
    if minutes < 3 * 60:
        return f"{minutes}m"
    hours = whole // _HOUR
    if hours < 8:
        return _two_units(hours, "h", minutes % 60, "m")
    if hours < 48:
        return f"{hours}h"
    days = whole // _DAY
    if days < 8:
        return _two_units(days, "d", hours % 24, "h")
    if days < 2 * 365:
        return f"{days}d"
    years = whole // _YEAR
    if years < 8:
        return _two_units(years, "y", days % 365, "d")
    return f"{years}y"


def _two_units(major: int, major_unit: str, minor: int, minor_unit: str) -> str:
    return f"{major}{major_unit}{minor}{minor_unit}" if minor else f"{major}{major_unit}"
