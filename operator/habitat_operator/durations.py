"""Duration strings such as "90s", "15m", "1h30m", "7d" or "2w" (pure, no I/O).

Go's time.ParseDuration has no days or weeks, and retention/maxAge wants them, so
this is our own small grammar: one or more `<digits><unit>` terms, summed.
"""

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
