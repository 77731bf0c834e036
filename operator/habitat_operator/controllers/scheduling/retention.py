"""Which runs of a schedule to expire, like `restic forget` / K8up's prune (pure, no I/O).

Successful runs:
- keepLast N keeps the N newest.
- keepDaily/keepWeekly/keepMonthly N keep the newest run of each of the N most recent UTC days /
  ISO weeks / months that have a run (days without a run do not use up the count).
- A run kept by any of those rules is kept; when at least one of them is set, the others expire.
- maxAge is a hard ceiling: a run completed more than maxAge before `now` expires even if a
  daily/weekly/monthly rule keeps it; only keepLast overrides it. With maxAge as the only rule,
  everything younger is kept.
- The newest successful run is never expired, so retention never leaves a schedule without a
  good artifact (e.g. maxAge after the schedule was suspended for a long time).

Failed runs older than the newest success are expired (when any rule is set); newer failed runs
are kept so people can see them, unless maxAge expires them.

With no rule set nothing expires.
"""

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True)
class RunRecord:
    """A finished run of a schedule."""

    name: str
    completed_at: datetime
    succeeded: bool


@dataclass(frozen=True)
class RetentionPolicy:
    """Retention rules; None means the rule is not set."""

    keep_last: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    max_age: timedelta | None = None

    def __post_init__(self) -> None:
        for count in (self.keep_last, self.keep_daily, self.keep_weekly, self.keep_monthly):
            if count is not None and count < 0:
                raise ValueError("retention counts must not be negative")
        if self.max_age is not None and self.max_age < timedelta(0):
            raise ValueError("retention maxAge must not be negative")

    @property
    def is_empty(self) -> bool:
        return self == RetentionPolicy()


def _day(moment: datetime) -> Hashable:
    return moment.date()


def _iso_week(moment: datetime) -> Hashable:
    year, week, _ = moment.isocalendar()
    return (year, week)


def _month(moment: datetime) -> Hashable:
    return (moment.year, moment.month)


def select_expired(runs: Sequence[RunRecord], policy: RetentionPolicy, now: datetime) -> list[str]:
    """Names of the runs to expire under `policy` at `now`, oldest first."""
    if policy.is_empty:
        return []
    for moment in (now, *(run.completed_at for run in runs)):
        if moment.tzinfo is None:
            raise ValueError("retention needs timezone-aware datetimes")

    newest_first = sorted(runs, key=lambda run: (run.completed_at, run.name), reverse=True)
    successes = [run for run in newest_first if run.succeeded]
    kept = _kept_successes(successes, policy, now)
    if successes:
        kept.add(successes[0].name)
        newest_success_at = successes[0].completed_at
        for run in newest_first:
            if not run.succeeded and run.completed_at > newest_success_at and not _too_old(run, policy, now):
                kept.add(run.name)
    else:
        kept.update(run.name for run in newest_first if not _too_old(run, policy, now))
    return [run.name for run in reversed(newest_first) if run.name not in kept]


def _kept_successes(successes: list[RunRecord], policy: RetentionPolicy, now: datetime) -> set[str]:
    by_last = {run.name for run in successes[: policy.keep_last or 0]}
    bucket_rules: list[tuple[int | None, Callable[[datetime], Hashable]]] = [
        (policy.keep_daily, _day),
        (policy.keep_weekly, _iso_week),
        (policy.keep_monthly, _month),
    ]
    by_bucket: set[str] = set()
    for count, bucket in bucket_rules:
        if count is not None:
            by_bucket |= _newest_per_bucket(successes, count, bucket)
    counting = any(count is not None for count, _ in bucket_rules) or policy.keep_last is not None
    candidates = by_bucket if counting else {run.name for run in successes}
    young = {run.name for run in successes if not _too_old(run, policy, now)}
    return by_last | (candidates & young)


def _newest_per_bucket(
    newest_first: list[RunRecord], count: int, bucket: Callable[[datetime], Hashable]
) -> set[str]:
    kept: dict[Hashable, str] = {}
    for run in newest_first:
        if len(kept) >= count:
            break
        kept.setdefault(bucket(run.completed_at.astimezone(UTC)), run.name)
    return set(kept.values())


def _too_old(run: RunRecord, policy: RetentionPolicy, now: datetime) -> bool:
    return policy.max_age is not None and now - run.completed_at > policy.max_age
