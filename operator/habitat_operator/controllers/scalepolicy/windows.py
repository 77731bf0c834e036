"""Schedule triggers: whether a cron-started window is open now, in its own time zone."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from croniter import croniter

from habitat_operator.api.scalepolicy import ScheduleTrigger
from habitat_operator.durations import parse_duration


def is_open(window: ScheduleTrigger, now: dt.datetime) -> bool:
    """The window opened at the latest cron time at or before `now`, and has not yet lasted `duration`."""
    local = now.astimezone(ZoneInfo(window.timezone))
    # croniter's get_prev from an exact start time returns the one before; a microsecond later it
    # returns that start itself.
    started: dt.datetime = croniter(window.start, local + dt.timedelta(microseconds=1)).get_prev(dt.datetime)
    return local < started + parse_duration(window.duration)
