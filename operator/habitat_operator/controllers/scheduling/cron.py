"""Cron arithmetic for scheduled runs (pure, croniter based). All datetimes are timezone-aware; results
are in UTC, and cron expressions are evaluated in UTC, like a Kubernetes CronJob without timeZone."""

from datetime import UTC, datetime, timedelta
from functools import lru_cache

from croniter import CroniterError, croniter

from habitat_operator.api.common import Reason
from habitat_operator.errors import PermanentError

# Counting missed runs walks the schedule one run at a time; after a long outage of a frequent
# schedule that could be millions of steps, so the count stops here ("at least this many").
MAX_COUNTED_MISSES = 1000

_INTERVAL_SAMPLE_RUNS = 1000
_INTERVAL_SAMPLE_SPAN = timedelta(days=366)
# A fixed start keeps expected_interval_seconds a pure function of the expression.
_INTERVAL_SAMPLE_START = datetime(2024, 1, 1, tzinfo=UTC)


def next_run(cron: str, after: datetime) -> datetime:
    """The first scheduled time strictly after `after`."""
    return _next(_iterator(cron, after))


def due_runs(
    cron: str, last_schedule_time: datetime | None, created_at: datetime, now: datetime
) -> tuple[datetime | None, int]:
    """The latest scheduled time in (last run or creation, now], and how many earlier ones it skips.

    Like a CronJob, only the latest missed time is run; the others are counted (up to
    MAX_COUNTED_MISSES) so they can be reported. (None, 0) when nothing is due.
    """
    since = _utc(last_schedule_time if last_schedule_time is not None else created_at)
    latest = _latest_at_or_before(cron, _utc(now))
    if latest is None or latest <= since:
        return None, 0
    times = _iterator(cron, since)
    missed = 0
    while missed < MAX_COUNTED_MISSES and _next(times) < latest:
        missed += 1
    return latest, missed


@lru_cache(maxsize=4096)  # up to 1000 croniter steps, and every tick of a Backup schedule asks
def expected_interval_seconds(cron: str) -> float:
    """The longest gap between consecutive runs: how long a healthy schedule may go without one.

    Sampled over about a year of runs (at most 1000), so "0 3 * * 1-5" gives 3 days, not 1.
    """
    times = _iterator(cron, _INTERVAL_SAMPLE_START)
    first = previous = _next(times)
    longest = timedelta(0)
    for _ in range(_INTERVAL_SAMPLE_RUNS):
        current = _next(times)
        longest = max(longest, current - previous)
        previous = current
        if current - first >= _INTERVAL_SAMPLE_SPAN:
            break
    return longest.total_seconds()


def _latest_at_or_before(cron: str, moment: datetime) -> datetime | None:
    try:
        before = _iterator(cron, moment).get_prev(datetime)
    except CroniterError:
        return None
    # get_prev is strictly before `moment`; a run at exactly `moment` is due too.
    following = next_run(cron, before)
    return following if following <= moment else before


def _iterator(cron: str, start: datetime) -> croniter:
    start = _utc(start)
    try:
        return croniter(cron, start)
    except (CroniterError, ValueError) as error:
        raise PermanentError(Reason.INVALID_SCHEDULE, f"invalid cron expression {cron!r}: {error}") from None


def _next(times: croniter) -> datetime:
    try:
        moment = times.get_next(datetime)
    except CroniterError as error:
        raise PermanentError(Reason.INVALID_SCHEDULE, f"cron expression never fires: {error}") from None
    assert isinstance(moment, datetime)
    return moment.astimezone(UTC)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("schedule needs timezone-aware datetimes")
    return moment.astimezone(UTC)
