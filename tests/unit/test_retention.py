"""retention.py: keep values, promotion to higher frequencies, and which archives a prune keeps.

Expected sets are written out as dates, never computed with the code under test.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest

from sidecar.core.errors import SidecarError
from sidecar.core.naming import ArchiveName, parse_name
from sidecar.core.retention import (
    ACCEPTED,
    DEFAULT_KEEP,
    Keep,
    PruneRefused,
    parse_keep,
    period,
    plan_prune,
    promotions,
)
from sidecar.core.schedule import Frequency


def n(filename: str) -> ArchiveName:
    name = parse_name(filename)
    assert name is not None, filename
    return name


def same(name: ArchiveName) -> ArchiveName:
    return name


def fixed(keep: Keep):
    return lambda _service: keep


def filenames(names) -> set[str]:
    return {x.filename for x in names}


def files(stamps_by_frequency: dict[str, list[str]], prefix: str = "app_data") -> set[str]:
    """{"daily": ["2027-01-17"]} -> {"app_data_2027-01-17_daily.tar.zst"}."""
    return {f"{prefix}_{stamp}_{freq}.tar.zst" for freq, stamps in stamps_by_frequency.items() for stamp in stamps}


# --- parse_keep ------------------------------------------------------------------------

def test_defaults():
    assert DEFAULT_KEEP == Keep(hourly=24, daily=7, weekly=4, monthly=3)
    assert str(DEFAULT_KEEP) == "hourly=24,daily=7,weekly=4,monthly=3"


@pytest.mark.parametrize("text, base, expected", [
    ("daily=7,weekly=4,monthly=3", DEFAULT_KEEP, Keep(24, 7, 4, 3)),
    ("hourly=5", DEFAULT_KEEP, Keep(5, 7, 4, 3)),
    ("daily=3,weekly=0,monthly=1", DEFAULT_KEEP, Keep(24, 3, 0, 1)),
    ("daily=1", DEFAULT_KEEP, Keep(24, 1, 4, 3)),
    (" Daily = 3 , WEEKLY=0 ", DEFAULT_KEEP, Keep(24, 3, 0, 3)),
    ("monthly=12,hourly=0", DEFAULT_KEEP, Keep(0, 7, 4, 12)),
    ("daily=10000", DEFAULT_KEEP, Keep(24, 10000, 4, 3)),
    ("daily=007", DEFAULT_KEEP, Keep(24, 7, 4, 3)),
    # a label over BACKUP_KEEP: what it does not name comes from the setting
    ("daily=1", Keep(1, 2, 3, 4), Keep(1, 1, 3, 4)),
    ("hourly=0,daily=0,weekly=0,monthly=2", DEFAULT_KEEP, Keep(0, 0, 0, 2)),
])
def test_parse_keep_accepted(text, base, expected):
    assert parse_keep(text, base) == expected


@pytest.mark.parametrize("text, base, problem", [
    ("", DEFAULT_KEEP, "empty"),
    ("   ", DEFAULT_KEEP, "empty"),
    ("daily", DEFAULT_KEEP, "'daily' is not frequency=N"),
    ("daily=", DEFAULT_KEEP, "'daily=' is not frequency=N"),
    ("daily=x", DEFAULT_KEEP, "'daily=x' is not frequency=N"),
    ("daily=-1", DEFAULT_KEEP, "'daily=-1' is not frequency=N"),
    ("daily=1.5", DEFAULT_KEEP, "'daily=1.5' is not frequency=N"),
    ("daily:7", DEFAULT_KEEP, "'daily:7' is not frequency=N"),
    ("daily=7 weekly=4", DEFAULT_KEEP, "'daily=7 weekly=4' is not frequency=N"),
    ("daily=10001", DEFAULT_KEEP, "daily=10001 is too large"),
    ("daily=99999999999999999999", DEFAULT_KEEP, "too large"),
    ("yearly=1", DEFAULT_KEEP, "unknown frequency 'yearly'"),
    ("day=7", DEFAULT_KEEP, "unknown frequency 'day'"),
    ("daily=1,DAILY=2", DEFAULT_KEEP, "daily is named twice"),
    ("daily=7,,weekly=4", DEFAULT_KEEP, "empty item"),
    ("daily=7,", DEFAULT_KEEP, "empty item"),
    ("hourly=0,daily=0,weekly=0,monthly=0", DEFAULT_KEEP, "keeps nothing"),
    ("daily=0", Keep(0, 1, 0, 0), "keeps nothing"),
])
def test_parse_keep_rejected(text, base, problem):
    with pytest.raises(ValueError) as info:
        parse_keep(text, base)
    message = str(info.value)
    assert problem in message
    assert message.endswith("accepted: " + ACCEPTED)
    assert "hourly=N, daily=N, weekly=N, monthly=N" in message


def test_keep_round_trips_through_its_text():
    for keep in (DEFAULT_KEEP, Keep(0, 1, 0, 12), Keep(5, 0, 0, 0)):
        assert parse_keep(str(keep), Keep(9, 9, 9, 9)) == keep


@pytest.mark.parametrize("hourly, daily, weekly, monthly", [(-1, 7, 4, 3), (24, 10001, 4, 3), (24, 7, "4", 3)])
def test_keep_rejects_impossible_values(hourly, daily, weekly, monthly):
    with pytest.raises(ValueError, match="expected a whole number from 0 to 10000"):
        Keep(hourly, daily, weekly, monthly)


@pytest.mark.parametrize("keep, frequency, expected", [
    (DEFAULT_KEEP, Frequency.DAILY, True),
    (Keep(24, 0, 0, 0), Frequency.DAILY, False),  # hourly archives are not what a daily schedule makes
    (Keep(0, 0, 0, 1), Frequency.DAILY, True),  # promoted to monthly
    (Keep(0, 0, 0, 1), Frequency.HOURLY, True),
    (Keep(5, 0, 0, 0), Frequency.HOURLY, True),
    (Keep(5, 7, 4, 0), Frequency.MONTHLY, False),
    (Keep(0, 0, 1, 0), Frequency.WEEKLY, True),
])
def test_keep_retains(keep, frequency, expected):
    assert keep.retains(frequency) is expected


# --- periods -----------------------------------------------------------------------------

@pytest.mark.parametrize("a, b, frequency, same_period", [
    ("2026-03-02T100000", "2026-03-02T105959", Frequency.HOURLY, True),
    ("2026-03-02T100000", "2026-03-02T110000", Frequency.HOURLY, False),
    ("2026-03-02T000000", "2026-03-02T235959", Frequency.DAILY, True),
    ("2026-03-02T235959", "2026-03-03T000000", Frequency.DAILY, False),
    ("2026-12-28T000000", "2027-01-03T235959", Frequency.WEEKLY, True),  # 2026-W53 spans the new year
    ("2027-01-03T235959", "2027-01-04T000000", Frequency.WEEKLY, False),
    ("2024-12-30T000000", "2025-01-01T000000", Frequency.WEEKLY, True),  # 2025-W01 starts in 2024
    ("2025-12-29T000000", "2024-12-30T000000", Frequency.WEEKLY, False),  # both are "week 1"
    ("2026-02-01T000000", "2026-02-28T235959", Frequency.MONTHLY, True),
    ("2026-02-28T235959", "2026-03-01T000000", Frequency.MONTHLY, False),
    ("2026-03-01T000000", "2027-03-01T000000", Frequency.MONTHLY, False),
])
def test_period(a, b, frequency, same_period):
    sa, sb = (datetime.strptime(x, "%Y-%m-%dT%H%M%S") for x in (a, b))
    assert (period(frequency, sa) == period(frequency, sb)) is same_period
    assert (period(frequency, sa) < period(frequency, sb)) is (not same_period and sa < sb)


# --- promotions -----------------------------------------------------------------------

@pytest.mark.parametrize("new, existing, keep, expected", [
    pytest.param("app_data_2026-12-31_daily.tar.zst", [], DEFAULT_KEEP,
                 ["app_data_2026-12-31_weekly.tar.zst", "app_data_2026-12-31_monthly.tar.zst"], id="first-ever"),
    pytest.param("app_data_2027-01-01_daily.tar.zst",
                 ["app_data_2026-12-28_daily.tar.zst", "app_data_2026-12-28_weekly.tar.zst",
                  "app_data_2026-12-01_monthly.tar.zst"], DEFAULT_KEEP,
                 ["app_data_2027-01-01_monthly.tar.zst"], id="new-year-inside-iso-week-53"),
    pytest.param("app_data_2027-01-03_daily.tar.zst",
                 ["app_data_2026-12-28_weekly.tar.zst", "app_data_2027-01-01_monthly.tar.zst"], DEFAULT_KEEP,
                 [], id="sunday-of-week-53"),
    pytest.param("app_data_2027-01-04_daily.tar.zst",
                 ["app_data_2026-12-28_weekly.tar.zst", "app_data_2027-01-01_monthly.tar.zst"], DEFAULT_KEEP,
                 ["app_data_2027-01-04_weekly.tar.zst"], id="monday-of-2027-W01"),
    pytest.param("app_data_2025-01-01_daily.tar.zst",
                 ["app_data_2024-12-30_weekly.tar.zst", "app_data_2024-12-01_monthly.tar.zst"], DEFAULT_KEEP,
                 ["app_data_2025-01-01_monthly.tar.zst"], id="iso-week-starting-in-the-previous-year"),
    pytest.param("app_data_2025-12-29_daily.tar.zst",
                 ["app_data_2024-12-30_weekly.tar.zst", "app_data_2025-12-01_monthly.tar.zst"], DEFAULT_KEEP,
                 ["app_data_2025-12-29_weekly.tar.zst"], id="week-1-of-another-iso-year"),
    pytest.param("app_data_2026-03-01_daily.tar.zst",
                 ["app_data_2026-02-23_weekly.tar.zst", "app_data_2026-02-01_monthly.tar.zst"], DEFAULT_KEEP,
                 ["app_data_2026-03-01_monthly.tar.zst"], id="month-boundary"),
    pytest.param("app_data_2026-02-28_daily.tar.zst",
                 ["app_data_2026-02-23_weekly.tar.zst", "app_data_2026-02-01_monthly.tar.zst"], DEFAULT_KEEP,
                 [], id="last-day-of-month"),
    pytest.param("app_data_2026-03-03_daily.tar.zst",
                 ["app_data_2026-02-23_weekly.tar.zst", "app_data_2026-03-01_monthly.tar.zst",
                  "app_data_2026-03-02_daily.tar.zst"], DEFAULT_KEEP,
                 ["app_data_2026-03-03_weekly.tar.zst"], id="monday-missed-tuesday-is-first"),
    pytest.param("app_data_2026-03-02_daily.tar.zst",
                 ["db_data_2026-03-02_weekly.tar.zst", "app_logs_2026-03-02_weekly.tar.zst",
                  "my_app_data_2026-03-02_weekly.tar.zst", "app_data_2026-03-01_monthly.tar.zst"], DEFAULT_KEEP,
                 ["app_data_2026-03-02_weekly.tar.zst"], id="other-targets-do-not-count"),
    pytest.param("app_data_2026-03-02T150000_daily.tar.zst",
                 ["app_data_2026-03-02_daily.tar.zst", "app_data_2026-03-02_weekly.tar.zst",
                  "app_data_2026-03-01_monthly.tar.zst"], DEFAULT_KEEP, [], id="second-of-the-day"),
    pytest.param("app_data_2026-03-02T150000-2_daily.tar.zst.age",
                 ["app_data_2026-03-01_monthly.tar.zst"], DEFAULT_KEEP,
                 ["app_data_2026-03-02T150000-2_weekly.tar.zst.age"], id="time-sequence-and-age-kept"),
    pytest.param("app_data_2026-03-02_daily.tar.gz.age", [], Keep(24, 7, 0, 3),
                 ["app_data_2026-03-02_monthly.tar.gz.age"], id="weekly-keep-0"),
    pytest.param("app_data_2026-03-02_daily.tar", [], Keep(24, 7, 4, 0),
                 ["app_data_2026-03-02_weekly.tar"], id="monthly-keep-0"),
    pytest.param("app_data_2026-03-02_daily.tar", [], Keep(24, 7, 0, 0), [], id="nothing-above-kept"),
    pytest.param("app_data_2026-03-02_daily.tar", [], Keep(0, 0, 1, 1),
                 ["app_data_2026-03-02_weekly.tar", "app_data_2026-03-02_monthly.tar"], id="own-keep-0"),
    pytest.param("app_data_2026-03-03T000000_hourly.tar.zst",
                 ["app_data_2026-03-02T000000_daily.tar.zst", "app_data_2026-03-02T000000_weekly.tar.zst",
                  "app_data_2026-03-01T000000_monthly.tar.zst"], DEFAULT_KEEP,
                 ["app_data_2026-03-03T000000_daily.tar.zst"], id="hourly-first-of-day"),
    pytest.param("app_data_2026-03-02T010000_hourly.tar.zst",
                 ["app_data_2026-03-02T000000_hourly.tar.zst", "app_data_2026-03-02T000000_daily.tar.zst",
                  "app_data_2026-03-02T000000_weekly.tar.zst", "app_data_2026-03-01T000000_monthly.tar.zst"],
                 DEFAULT_KEEP, [], id="hourly-second-of-day"),
    pytest.param("app_data_2026-03-02T000000_hourly.tar.zst",
                 ["app_data_2026-03-01T000000_weekly.tar.zst", "app_data_2026-03-01T000000_monthly.tar.zst"],
                 Keep(24, 0, 4, 3), ["app_data_2026-03-02T000000_weekly.tar.zst"], id="hourly-skips-daily-keep-0"),
    pytest.param("app_data_2026-03-02_weekly.tar.zst", ["app_data_2026-02-23_weekly.tar.zst"], DEFAULT_KEEP,
                 ["app_data_2026-03-02_monthly.tar.zst"], id="weekly-schedule-to-monthly"),
    pytest.param("app_data_2026-03-09_weekly.tar.zst", ["app_data_2026-03-02_monthly.tar.zst"], DEFAULT_KEEP,
                 [], id="weekly-never-to-lower-levels"),
    pytest.param("app_data_2026-03-01_monthly.tar.zst", [], DEFAULT_KEEP, [], id="monthly-is-the-top"),
    pytest.param("app_data_2026-03-02_daily.tar.zst", ["app_data_2026-03-02_daily.tar.zst"], DEFAULT_KEEP,
                 ["app_data_2026-03-02_weekly.tar.zst", "app_data_2026-03-02_monthly.tar.zst"],
                 id="existing-may-hold-the-new-archive"),
])
def test_promotions(new, existing, keep, expected):
    got = promotions(n(new), [n(e) for e in existing], keep)
    assert [x.filename for x in got] == expected
    assert all(x.stamp == n(new).stamp and x.extension == n(new).extension for x in got)


# --- plan_prune over 120 days of a daily schedule ----------------------------------------

FIRST_DAY = date(2026, 9, 20)  # a Sunday: 120 days run to Sunday 2027-01-17, over ISO week 2026-W53
DAYS = 120


def simulate_daily(keep: Keep, rolling: bool) -> list[ArchiveName]:
    """What the sidecar would store: one daily archive a day plus its promoted copies;
    with `rolling`, pruned after every backup as the daemon does."""
    stored: list[ArchiveName] = []
    for i in range(DAYS):
        day = FIRST_DAY + timedelta(days=i)
        new = ArchiveName(datetime(day.year, day.month, day.day), "app", "data", Frequency.DAILY, ".tar.zst")
        stored += [new, *promotions(new, stored, keep)]
        if rolling:
            stored = list(plan_prune(stored, same, fixed(keep)).keep)
    return stored


DAILY_TABLE = [
    pytest.param("daily=7,weekly=4,monthly=3", 18, 5, {
        "daily": ["2027-01-11", "2027-01-12", "2027-01-13", "2027-01-14", "2027-01-15", "2027-01-16",
                  "2027-01-17"],
        "weekly": ["2026-12-21", "2026-12-28", "2027-01-04", "2027-01-11"],
        "monthly": ["2026-11-01", "2026-12-01", "2027-01-01"],
    }, id="default"),
    pytest.param("daily=3,weekly=0,monthly=1", 0, 5, {
        "daily": ["2027-01-15", "2027-01-16", "2027-01-17"],
        "monthly": ["2027-01-01"],
    }, id="daily3-weekly0-monthly1"),
    pytest.param("daily=1", 18, 5, {
        "daily": ["2027-01-17"],
        "weekly": ["2026-12-21", "2026-12-28", "2027-01-04", "2027-01-11"],
        "monthly": ["2026-11-01", "2026-12-01", "2027-01-01"],
    }, id="daily1"),
    pytest.param("daily=2,weekly=2,monthly=6", 18, 5, {
        "daily": ["2027-01-16", "2027-01-17"],
        "weekly": ["2027-01-04", "2027-01-11"],
        # fewer months than asked for: all of them, the first ever archive's month included
        "monthly": ["2026-09-20", "2026-10-01", "2026-11-01", "2026-12-01", "2027-01-01"],
    }, id="more-months-than-exist"),
    pytest.param("daily=0,weekly=1,monthly=0", 18, 0, {
        "daily": ["2027-01-17"],  # the newest archive is never deleted
        "weekly": ["2027-01-11"],
    }, id="weekly-only"),
]


@pytest.mark.parametrize("text, weekly_made, monthly_made, expected", DAILY_TABLE)
def test_daily_schedule_over_120_days(text, weekly_made, monthly_made, expected):
    keep = parse_keep(text)
    stored = simulate_daily(keep, rolling=False)
    assert sum(x.frequency is Frequency.DAILY for x in stored) == DAYS
    assert sum(x.frequency is Frequency.WEEKLY for x in stored) == weekly_made
    assert sum(x.frequency is Frequency.MONTHLY for x in stored) == monthly_made
    plan = plan_prune(stored, same, fixed(keep))
    assert filenames(plan.keep) == files(expected)
    assert sorted(plan.keep + plan.delete) == sorted(stored)
    assert len(plan.keep) + len(plan.delete) == len(stored)


@pytest.mark.parametrize("text, weekly_made, monthly_made, expected", DAILY_TABLE)
def test_pruning_after_every_backup_ends_the_same(text, weekly_made, monthly_made, expected):
    assert filenames(simulate_daily(parse_keep(text), rolling=True)) == files(expected)


def test_weekly_and_monthly_copies_are_the_first_of_each_period():
    stored = simulate_daily(DEFAULT_KEEP, rolling=False)
    weekly = sorted(x.stamp.date().isoformat() for x in stored if x.frequency is Frequency.WEEKLY)
    monthly = sorted(x.stamp.date().isoformat() for x in stored if x.frequency is Frequency.MONTHLY)
    assert weekly[:3] == ["2026-09-20", "2026-09-21", "2026-09-28"]
    assert weekly[-4:] == ["2026-12-21", "2026-12-28", "2027-01-04", "2027-01-11"]
    assert monthly == ["2026-09-20", "2026-10-01", "2026-11-01", "2026-12-01", "2027-01-01"]


# --- an hourly schedule over a few days ----------------------------------------------------

def simulate_hourly(keep: Keep) -> list[ArchiveName]:
    stored: list[ArchiveName] = []
    moment, end = datetime(2026, 2, 27, 0), datetime(2026, 3, 2, 5)  # Friday to Monday, over a month end
    while moment <= end:
        new = ArchiveName(moment, "app", "data", Frequency.HOURLY, ".tar.zst", has_time=True)
        stored += [new, *promotions(new, stored, keep)]
        moment += timedelta(hours=1)
    return stored


@pytest.mark.parametrize("text, expected", [
    ("hourly=5", {
        "hourly": ["2026-03-02T010000", "2026-03-02T020000", "2026-03-02T030000", "2026-03-02T040000",
                   "2026-03-02T050000"],
        "daily": ["2026-02-27T000000", "2026-02-28T000000", "2026-03-01T000000", "2026-03-02T000000"],
        "weekly": ["2026-02-27T000000", "2026-03-02T000000"],
        "monthly": ["2026-02-27T000000", "2026-03-01T000000"],
    }),
    ("hourly=5,daily=2,weekly=1,monthly=1", {
        "hourly": ["2026-03-02T010000", "2026-03-02T020000", "2026-03-02T030000", "2026-03-02T040000",
                   "2026-03-02T050000"],
        "daily": ["2026-03-01T000000", "2026-03-02T000000"],
        "weekly": ["2026-03-02T000000"],
        "monthly": ["2026-03-01T000000"],
    }),
    ("hourly=1,daily=0,weekly=0,monthly=1", {
        "hourly": ["2026-03-02T050000"],
        "monthly": ["2026-03-01T000000"],
    }),
])
def test_hourly_schedule(text, expected):
    keep = parse_keep(text)
    stored = simulate_hourly(keep)
    assert sum(x.frequency is Frequency.HOURLY for x in stored) == 3 * 24 + 6
    plan = plan_prune(stored, same, fixed(keep))
    assert filenames(plan.keep) == files(expected)


# --- plan_prune rules ------------------------------------------------------------------------

@pytest.mark.parametrize("stored, keep, expected", [
    pytest.param(["app_data_2026-03-28_daily.tar.zst", "app_data_2026-03-29_daily.tar.zst",
                  "app_data_2026-03-29T150000_daily.tar.zst", "app_data_2026-03-29T150000-2_daily.tar.zst"],
                 Keep(24, 1, 4, 3),
                 ["app_data_2026-03-29_daily.tar.zst", "app_data_2026-03-29T150000_daily.tar.zst",
                  "app_data_2026-03-29T150000-2_daily.tar.zst"], id="a-period-is-kept-whole"),
    pytest.param(["app_data_2026-03-02_daily.tar.zst", "app_data_2026-03-02_weekly.tar.zst",
                  "app_data_2026-03-03_daily.tar.zst", "app_data_2026-03-04_daily.tar.zst"],
                 Keep(24, 0, 4, 3),
                 ["app_data_2026-03-02_weekly.tar.zst", "app_data_2026-03-04_daily.tar.zst"],
                 id="newest-survives-keep-0"),
    pytest.param(["app_data_2026-03-23_weekly.tar.zst", "app_data_2026-03-29_daily.tar.zst",
                  "app_data_2026-03-29T150000_daily.tar.zst", "app_data_2026-03-29T150000-2_daily.tar.zst"],
                 Keep(24, 0, 1, 3),
                 ["app_data_2026-03-23_weekly.tar.zst", "app_data_2026-03-29T150000-2_daily.tar.zst"],
                 id="newest-by-time-then-sequence"),
    pytest.param(["app_data_2026-03-23_weekly.tar.zst", "app_data_2026-03-29_daily.tar.zst",
                  "app_data_2026-03-29T000000_daily.tar.zst"],
                 Keep(24, 0, 1, 3),
                 ["app_data_2026-03-23_weekly.tar.zst", "app_data_2026-03-29T000000_daily.tar.zst"],
                 id="second-at-midnight-is-newer"),
    pytest.param(["app_data_2026-03-01_daily.tar.zst", "app_data_2026-03-02_weekly.tar.zst",
                  "app_data_2026-03-02_daily.tar.zst"],
                 Keep(24, 0, 4, 3),
                 ["app_data_2026-03-02_weekly.tar.zst", "app_data_2026-03-02_daily.tar.zst"],
                 id="every-copy-of-the-newest-survives"),
    pytest.param(["app_data_2026-03-02T000000_hourly.tar.zst", "app_data_2026-03-02T010000_hourly.tar.zst",
                  "app_data_2026-03-02T000000_daily.tar.zst"],
                 Keep(0, 7, 4, 3),
                 ["app_data_2026-03-02T010000_hourly.tar.zst", "app_data_2026-03-02T000000_daily.tar.zst"],
                 id="hourly-keep-0"),
    pytest.param(["app_data_2026-03-02_daily.tar.zst", "app_data_2026-03-02_daily.tar.gz"],
                 Keep(24, 1, 4, 3),
                 ["app_data_2026-03-02_daily.tar.zst", "app_data_2026-03-02_daily.tar.gz"],
                 id="same-stamp-other-compression"),
    pytest.param(["app_data_2026-03-01_daily.tar.zst.age", "app_data_2026-03-02_daily.tar.zst.age",
                  "app_data_2026-03-03_daily.tar.zst"],
                 Keep(24, 2, 4, 3),
                 ["app_data_2026-03-02_daily.tar.zst.age", "app_data_2026-03-03_daily.tar.zst"],
                 id="encrypted-or-not-same-rules"),
])
def test_plan_prune_rules(stored, keep, expected):
    plan = plan_prune([n(s) for s in stored], same, fixed(keep))
    assert [x.filename for x in plan.keep] == expected
    assert [x.filename for x in plan.delete] == [s for s in stored if s not in expected]


def test_plan_keeps_the_input_order_and_works_on_any_item_type():
    keys = ["s3/app_data_2026-03-03_daily.tar.zst", "s3/app_data_2026-03-01_daily.tar.zst",
            "s3/app_data_2026-03-02_daily.tar.zst"]
    plan = plan_prune(keys, lambda key: n(key.rsplit("/", 1)[1]), fixed(Keep(24, 2, 4, 3)))
    assert plan.keep == ("s3/app_data_2026-03-03_daily.tar.zst", "s3/app_data_2026-03-02_daily.tar.zst")
    assert plan.delete == ("s3/app_data_2026-03-01_daily.tar.zst",)


def test_an_empty_listing_is_an_empty_plan():
    plan = plan_prune([], same, fixed(DEFAULT_KEEP))
    assert plan.keep == () and plan.delete == ()


# --- good (has a checksum) -------------------------------------------------------------------

DAY = "app_data_2026-03-0{}_daily.tar.zst"


@pytest.mark.parametrize("bad_days, keep, kept_days", [
    pytest.param({5}, Keep(24, 1, 4, 3), [4, 5], id="newest-good-survives-a-bad-newest"),
    pytest.param({3}, Keep(24, 1, 4, 3), [5], id="bad-in-the-middle-deleted"),
    pytest.param({4}, Keep(24, 2, 4, 3), [3, 4, 5], id="bad-takes-no-good-ones-place"),
    pytest.param({1}, Keep(24, 2, 4, 3), [4, 5], id="old-bad-ages-out"),
    pytest.param({1, 2, 3, 4, 5}, Keep(24, 2, 4, 3), [1, 2, 3, 4, 5], id="none-good-none-deleted"),
    pytest.param({4, 5}, Keep(24, 1, 4, 3), [3, 4, 5], id="bad-newer-than-the-newest-good-kept"),
    pytest.param(set(), Keep(24, 2, 4, 3), [4, 5], id="all-good"),
])
def test_archives_without_checksum(bad_days, keep, kept_days):
    stored = [n(DAY.format(d)) for d in range(1, 6)]
    plan = plan_prune(stored, same, fixed(keep), good=lambda x: x.stamp.day not in bad_days)
    assert sorted(x.stamp.day for x in plan.keep) == kept_days


def test_newest_good_survives_in_a_folder_whose_keep_is_0():
    stored = [n("app_data_2026-03-02_weekly.tar.zst"), n("app_data_2026-03-02_daily.tar.zst"),
              n("app_data_2026-03-03_daily.tar.zst"), n("app_data_2026-03-04_daily.tar.zst")]
    bad = {"app_data_2026-03-02_weekly.tar.zst", "app_data_2026-03-04_daily.tar.zst"}
    plan = plan_prune(stored, same, fixed(Keep(24, 0, 1, 0)), good=lambda x: x.filename not in bad)
    assert [x.filename for x in plan.keep] == [
        "app_data_2026-03-02_weekly.tar.zst",  # weekly=1: the newest week (no good one to count)
        "app_data_2026-03-03_daily.tar.zst",  # the newest good archive
        "app_data_2026-03-04_daily.tar.zst",  # the newest archive
    ]
    assert [x.filename for x in plan.delete] == ["app_data_2026-03-02_daily.tar.zst"]


# --- refusal ----------------------------------------------------------------------------------

def test_a_plan_deleting_every_archive_of_a_target_is_refused():
    stored = [n(DAY.format(d)) for d in (1, 2, 3)] + [n("db_data_2026-03-01_daily.tar.zst")]
    keep = parse_keep("daily=0,weekly=0,monthly=0")  # hourly=24 keeps nothing of a daily schedule
    with pytest.raises(PruneRefused) as info:
        plan_prune(stored, same, fixed(keep))
    err = info.value
    assert isinstance(err, SidecarError)
    assert err.groups == (("app", "data"), ("db", "data"))
    message = str(err)
    assert message.startswith("refusing to prune: ")
    assert "app/data: keep hourly=24,daily=0,weekly=0,monthly=0 would delete all 3 archives" in message
    assert "db/data: keep hourly=24,daily=0,weekly=0,monthly=0 would delete all 1 archives" in message


def test_refusal_names_only_the_targets_concerned():
    stored = [n(DAY.format(d)) for d in (1, 2, 3)] + [n("db_data_2026-03-01_daily.tar.zst")]
    keeps = {"app": Keep(24, 1, 0, 0), "db": Keep(24, 0, 0, 0)}
    with pytest.raises(PruneRefused) as info:
        plan_prune(stored, same, keeps.__getitem__)
    assert info.value.groups == (("db", "data"),)
    assert "app/" not in str(info.value)


def test_keep_0_of_the_own_level_with_promoted_copies_is_not_refused():
    stored = [n("app_data_2026-03-02_daily.tar.zst"), n("app_data_2026-03-02_monthly.tar.zst"),
              n("app_data_2026-03-03_daily.tar.zst")]
    plan = plan_prune(stored, same, fixed(Keep(24, 0, 0, 1)))
    assert filenames(plan.keep) == {"app_data_2026-03-02_monthly.tar.zst", "app_data_2026-03-03_daily.tar.zst"}


# --- independent groups ------------------------------------------------------------------------

def test_groups_are_selected_independently_with_their_own_keep():
    stored = [n(s) for s in [
        "app_data_2026-03-01_daily.tar.zst", "app_logs_2026-03-01_daily.tar.zst",
        "db_data_2026-03-01_daily.tar.zst", "my_app_data_2026-03-01_daily.tar.zst",
        "app_data_2026-03-02_daily.tar.zst", "app_logs_2026-03-02_daily.tar.zst",
        "db_data_2026-03-02_daily.tar.zst",
        "app_data_2026-03-03_daily.tar.zst", "db_data_2026-03-03_daily.tar.zst",
    ]]
    keeps = {"app": Keep(24, 2, 0, 0), "db": Keep(24, 1, 0, 0), "my_app": Keep(24, 1, 0, 0)}
    asked: list[str] = []

    def keep_for(backup_name: str) -> Keep:
        asked.append(backup_name)
        return keeps[backup_name]

    plan = plan_prune(stored, same, keep_for)
    assert [x.filename for x in plan.keep] == [  # in the order given
        "app_logs_2026-03-01_daily.tar.zst",  # app/logs has two days, app/data three
        "my_app_data_2026-03-01_daily.tar.zst",  # its own group: "app" archives do not push it out
        "app_data_2026-03-02_daily.tar.zst", "app_logs_2026-03-02_daily.tar.zst",
        "app_data_2026-03-03_daily.tar.zst", "db_data_2026-03-03_daily.tar.zst",
    ]
    assert [x.filename for x in plan.delete] == [
        "app_data_2026-03-01_daily.tar.zst", "db_data_2026-03-01_daily.tar.zst",
        "db_data_2026-03-02_daily.tar.zst",
    ]
    assert sorted(asked) == ["app", "db", "my_app"]  # once per target


@pytest.mark.parametrize("keep, seconds", [
    (DEFAULT_KEEP, 3 * 31 * 86400),  # monthly=3 reaches furthest
    (Keep(hourly=24, daily=0, weekly=0, monthly=0), 86400),
    (Keep(hourly=0, daily=30, weekly=2, monthly=0), 30 * 86400),
])
def test_keep_reaches_back_as_far_as_its_longest_frequency(keep, seconds):
    assert keep.reach_seconds() == seconds
