from datetime import UTC, datetime, timedelta, timezone

import pytest

from habitat_operator.controllers.scheduling.retention import RetentionPolicy, RunRecord, select_expired

NOW = datetime(2024, 6, 30, 12, 0, tzinfo=UTC)  # a Sunday


def ok(name: str, at: datetime) -> RunRecord:
    return RunRecord(name=name, completed_at=at, succeeded=True)


def failed(name: str, at: datetime) -> RunRecord:
    return RunRecord(name=name, completed_at=at, succeeded=False)


def daily(days: int, *, hour: int = 3) -> list[RunRecord]:
    """One successful run per day at `hour`, named d0 (today) .. d{days-1}."""
    today = NOW.replace(hour=hour, minute=0)
    return [ok(f"d{i}", today - timedelta(days=i)) for i in range(days)]


def kept(runs: list[RunRecord], policy: RetentionPolicy) -> set[str]:
    return {run.name for run in runs} - set(select_expired(runs, policy, NOW))


def test_no_rule_expires_nothing() -> None:
    runs = [*daily(10), failed("f", NOW - timedelta(days=30))]
    assert select_expired(runs, RetentionPolicy(), NOW) == []


def test_no_runs() -> None:
    assert select_expired([], RetentionPolicy(keep_last=3), NOW) == []


def test_keep_last_keeps_newest_successes() -> None:
    runs = daily(5)
    assert kept(runs, RetentionPolicy(keep_last=2)) == {"d0", "d1"}


def test_expired_are_listed_oldest_first() -> None:
    runs = daily(5)
    assert select_expired(runs, RetentionPolicy(keep_last=2), NOW) == ["d4", "d3", "d2"]


def test_input_order_does_not_matter() -> None:
    runs = daily(6)
    policy = RetentionPolicy(keep_last=2, keep_weekly=2)
    assert select_expired(runs, policy, NOW) == select_expired(list(reversed(runs)), policy, NOW)


def test_keep_last_larger_than_runs_keeps_all() -> None:
    runs = daily(3)
    assert select_expired(runs, RetentionPolicy(keep_last=10), NOW) == []


def test_keep_daily_keeps_newest_run_of_each_day() -> None:
    runs = [
        *daily(4, hour=3),
        *(ok(f"late{i}", NOW.replace(hour=20) - timedelta(days=i)) for i in range(1, 4)),
    ]
    # Today only has d0; the three days before have a later run too, which wins.
    assert kept(runs, RetentionPolicy(keep_daily=3)) == {"d0", "late1", "late2"}


def test_keep_daily_counts_only_days_with_runs() -> None:
    runs = [
        ok("a", NOW - timedelta(days=1)),
        ok("b", NOW - timedelta(days=5)),
        ok("c", NOW - timedelta(days=9)),
    ]
    assert kept(runs, RetentionPolicy(keep_daily=2)) == {"a", "b"}


def test_keep_daily_uses_utc_days() -> None:
    plus_two = timezone(timedelta(hours=2))
    # 01:00 at +02:00 is the previous UTC day, so these are two different UTC days.
    first = ok("first", datetime(2024, 6, 29, 23, 30, tzinfo=UTC))
    second = ok("second", datetime(2024, 6, 30, 1, 0, tzinfo=plus_two))
    third = ok("third", datetime(2024, 6, 29, 10, 0, tzinfo=UTC))
    assert kept([first, second, third], RetentionPolicy(keep_daily=1)) == {"first"}


def test_keep_weekly_uses_iso_weeks() -> None:
    runs = daily(15)  # NOW is Sunday: d0..d6 are this ISO week, d7..d13 the previous one, d14 before
    assert kept(runs, RetentionPolicy(keep_weekly=2)) == {"d0", "d7"}


def test_keep_weekly_across_year_boundary() -> None:
    # 2020-12-31 (Thursday) and 2021-01-03 (Sunday) are both in ISO week 2020-W53.
    runs = [
        ok("w53-thu", datetime(2020, 12, 31, tzinfo=UTC)),
        ok("w53-sun", datetime(2021, 1, 3, tzinfo=UTC)),
        ok("w01", datetime(2021, 1, 4, tzinfo=UTC)),
    ]
    assert kept(runs, RetentionPolicy(keep_weekly=2)) == {"w53-sun", "w01"}


def test_keep_monthly() -> None:
    runs = [
        ok("jun", datetime(2024, 6, 1, tzinfo=UTC)),
        ok("may-late", datetime(2024, 5, 31, tzinfo=UTC)),
        ok("may-early", datetime(2024, 5, 2, tzinfo=UTC)),
        ok("apr", datetime(2024, 4, 15, tzinfo=UTC)),
        ok("jan", datetime(2024, 1, 15, tzinfo=UTC)),
    ]
    assert kept(runs, RetentionPolicy(keep_monthly=3)) == {"jun", "may-late", "apr"}


def test_rules_are_a_union() -> None:
    runs = daily(40)
    # keepLast 2: d0, d1; keepWeekly 3: d0 (this week), d7, d14; keepMonthly 2: d0 (June), d30 (May 31).
    policy = RetentionPolicy(keep_last=2, keep_weekly=3, keep_monthly=2)
    assert kept(runs, policy) == {"d0", "d1", "d7", "d14", "d30"}


def test_zero_counts_still_keep_the_newest_success() -> None:
    runs = daily(3)
    assert kept(runs, RetentionPolicy(keep_last=0)) == {"d0"}
    assert kept(runs, RetentionPolicy(keep_daily=0)) == {"d0"}


def test_max_age_alone_keeps_everything_younger() -> None:
    runs = daily(10)
    assert kept(runs, RetentionPolicy(max_age=timedelta(days=3))) == {"d0", "d1", "d2"}


def test_max_age_is_a_ceiling_for_bucket_rules() -> None:
    runs = daily(10)
    policy = RetentionPolicy(keep_daily=7, max_age=timedelta(days=3))
    assert kept(runs, policy) == {"d0", "d1", "d2"}


def test_max_age_does_not_override_keep_last() -> None:
    runs = daily(10)
    policy = RetentionPolicy(keep_last=5, max_age=timedelta(days=2))
    assert kept(runs, policy) == {"d0", "d1", "d2", "d3", "d4"}


def test_max_age_with_counts_does_not_keep_unselected_young_runs() -> None:
    runs = daily(5)
    policy = RetentionPolicy(keep_last=1, max_age=timedelta(days=30))
    assert kept(runs, policy) == {"d0"}


def test_max_age_boundary_is_inclusive() -> None:
    runs = [ok("new", NOW - timedelta(hours=1)), ok("edge", NOW - timedelta(days=2))]
    assert kept(runs, RetentionPolicy(max_age=timedelta(days=2))) == {"new", "edge"}


def test_newest_success_survives_max_age() -> None:
    runs = [ok("old", NOW - timedelta(days=100)), ok("older", NOW - timedelta(days=200))]
    assert kept(runs, RetentionPolicy(max_age=timedelta(days=30))) == {"old"}


def test_failed_runs_older_than_newest_success_expire() -> None:
    runs = [
        failed("f-new", NOW - timedelta(hours=1)),
        ok("s", NOW - timedelta(hours=2)),
        failed("f-old", NOW - timedelta(hours=3)),
    ]
    assert kept(runs, RetentionPolicy(keep_last=5)) == {"f-new", "s"}


def test_failed_runs_without_any_success_are_kept() -> None:
    runs = [failed("f1", NOW - timedelta(days=1)), failed("f2", NOW - timedelta(days=2))]
    assert select_expired(runs, RetentionPolicy(keep_last=1), NOW) == []


def test_max_age_expires_failed_runs_too() -> None:
    runs = [failed("f1", NOW - timedelta(days=1)), failed("f2", NOW - timedelta(days=20))]
    assert select_expired(runs, RetentionPolicy(max_age=timedelta(days=7)), NOW) == ["f2"]


def test_failed_runs_do_not_use_up_counts() -> None:
    runs = [
        failed("f", NOW - timedelta(hours=1)),
        ok("s1", NOW - timedelta(days=1)),
        ok("s2", NOW - timedelta(days=2)),
        ok("s3", NOW - timedelta(days=3)),
    ]
    assert kept(runs, RetentionPolicy(keep_last=2)) == {"f", "s1", "s2"}
    assert kept(runs, RetentionPolicy(keep_daily=2)) == {"f", "s1", "s2"}


def test_ties_are_broken_by_name() -> None:
    at = NOW - timedelta(hours=1)
    runs = [ok("a", at), ok("b", at)]
    assert kept(runs, RetentionPolicy(keep_last=1)) == {"b"}


def test_naive_datetimes_are_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        select_expired([ok("a", datetime(2024, 1, 1))], RetentionPolicy(keep_last=1), NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        select_expired([], RetentionPolicy(keep_last=1), datetime(2024, 1, 1))


@pytest.mark.parametrize(
    "policy",
    [
        {"keep_last": -1},
        {"keep_daily": -1},
        {"keep_weekly": -2},
        {"keep_monthly": -3},
        {"max_age": timedelta(seconds=-1)},
    ],
)
def test_negative_rules_are_rejected(policy: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="negative"):
        RetentionPolicy(**policy)  # type: ignore[arg-type]
