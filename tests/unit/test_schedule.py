"""schedule.py: parsing, next runs across time zones and DST changes, frequencies."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from sidecar.core.schedule import ALIASES, Frequency, Schedule, parse_schedule

UTC = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def firings(expression: str, start: datetime, tz: ZoneInfo, count: int) -> list[str]:
    schedule = parse_schedule(expression)
    out, moment = [], start
    for _ in range(count):
        nxt = schedule.next_after(moment, tz)
        # Compared in UTC: Python compares two datetimes of one zone by wall time.
        assert nxt.astimezone(timezone.utc) > moment.astimezone(timezone.utc)
        assert nxt.tzinfo is timezone.utc
        out.append(nxt.astimezone(tz).isoformat())
        moment = nxt
    return out


NEXT_RUNS = [
    # id, expression, start, tz, expected firings (local time with offset)
    ("utc-daily", "0 3 * * *", datetime(2026, 1, 1, tzinfo=UTC), UTC,
     ["2026-01-01T03:00:00+00:00", "2026-01-02T03:00:00+00:00"]),
    ("strictly-after", "0 3 * * *", datetime(2026, 1, 1, 3, tzinfo=UTC), UTC,
     ["2026-01-02T03:00:00+00:00"]),
    ("utc-moment-berlin-schedule", "0 3 * * *", datetime(2026, 1, 1, 2, 30, tzinfo=timezone.utc), BERLIN,
     ["2026-01-02T03:00:00+01:00", "2026-01-03T03:00:00+01:00"]),
    ("other-zone-moment", "0 9 * * *", datetime(2026, 1, 5, 8, 30, tzinfo=BERLIN), NEW_YORK,
     ["2026-01-05T09:00:00-05:00"]),
    ("berlin-spring-daily", "0 3 * * *", datetime(2026, 3, 28, 12, tzinfo=BERLIN), BERLIN,
     ["2026-03-29T03:00:00+02:00", "2026-03-30T03:00:00+02:00"]),
    # 02:30 does not exist on 2026-03-29: it runs once, right after the gap.
    ("berlin-spring-skipped-time", "30 2 * * *", datetime(2026, 3, 28, 12, tzinfo=BERLIN), BERLIN,
     ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]),
    ("berlin-spring-hourly", "0 * * * *", datetime(2026, 3, 29, 0, 30, tzinfo=BERLIN), BERLIN,
     ["2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T04:00:00+02:00"]),
    ("berlin-autumn-daily", "0 3 * * *", datetime(2026, 10, 24, 12, tzinfo=BERLIN), BERLIN,
     ["2026-10-25T03:00:00+01:00", "2026-10-26T03:00:00+01:00"]),
    # Hourly means every real hour: 02:00 happens twice on 2026-10-25.
    ("berlin-autumn-hourly", "0 * * * *", datetime(2026, 10, 25, 0, 30, tzinfo=BERLIN), BERLIN,
     ["2026-10-25T01:00:00+02:00", "2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00",
      "2026-10-25T03:00:00+01:00"]),
    ("berlin-summer-from-utc", "0 3 * * *", datetime(2026, 7, 1, 0, 59, tzinfo=timezone.utc), BERLIN,
     ["2026-07-01T03:00:00+02:00"]),
    ("new-york-spring", "0 9 * * *", datetime(2026, 3, 7, 12, tzinfo=NEW_YORK), NEW_YORK,
     ["2026-03-08T09:00:00-04:00", "2026-03-09T09:00:00-04:00"]),
    ("new-york-spring-skipped-time", "30 2 * * *", datetime(2026, 3, 7, 12, tzinfo=NEW_YORK), NEW_YORK,
     ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]),
    ("new-york-autumn", "0 9 * * *", datetime(2026, 10, 31, 12, tzinfo=NEW_YORK), NEW_YORK,
     ["2026-11-01T09:00:00-05:00", "2026-11-02T09:00:00-05:00"]),
    ("seconds-every-5", "* * * * * */5", datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC), UTC,
     ["2026-01-01T00:00:05+00:00", "2026-01-01T00:00:10+00:00", "2026-01-01T00:00:15+00:00"]),
    ("seconds-minute-wrap", "* * * * * */5", datetime(2026, 1, 1, 0, 0, 56, tzinfo=UTC), UTC,
     ["2026-01-01T00:01:00+00:00", "2026-01-01T00:01:05+00:00"]),
    ("seconds-fixed", "0 0 * * * 30", datetime(2026, 1, 1, tzinfo=UTC), UTC,
     ["2026-01-01T00:00:30+00:00", "2026-01-02T00:00:30+00:00"]),
    ("weekly-alias", "@weekly", datetime(2026, 1, 7, 12, tzinfo=UTC), UTC,
     ["2026-01-11T00:00:00+00:00", "2026-01-18T00:00:00+00:00"]),
    ("monthly-alias", "@monthly", datetime(2026, 1, 15, tzinfo=BERLIN), BERLIN,
     ["2026-02-01T00:00:00+01:00", "2026-03-01T00:00:00+01:00", "2026-04-01T00:00:00+02:00"]),
    ("hourly-alias", "@hourly", datetime(2026, 1, 1, 10, 59, 59, tzinfo=UTC), UTC,
     ["2026-01-01T11:00:00+00:00", "2026-01-01T12:00:00+00:00"]),
    ("weekdays", "0 3 * * 1-5", datetime(2026, 1, 9, 4, tzinfo=UTC), UTC,  # a Friday
     ["2026-01-12T03:00:00+00:00", "2026-01-13T03:00:00+00:00"]),
]


@pytest.mark.parametrize("expression, start, tz, expected",
                         [c[1:] for c in NEXT_RUNS], ids=[c[0] for c in NEXT_RUNS])
def test_next_after(expression, start, tz, expected):
    assert firings(expression, start, tz, len(expected)) == expected


def test_next_after_reads_the_schedule_in_the_zone_and_answers_in_utc():
    nxt = parse_schedule("0 3 * * *").next_after(datetime(2026, 6, 1, tzinfo=timezone.utc), BERLIN)
    assert nxt.tzinfo is timezone.utc
    assert nxt == datetime(2026, 6, 1, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize("expression, start, tz, expected", [
    ("30 2 * * *", datetime(2026, 10, 24, 12, tzinfo=BERLIN), BERLIN,
     ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]),
    ("30 1 * * *", datetime(2026, 10, 31, 12, tzinfo=NEW_YORK), NEW_YORK,
     ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]),
], ids=["berlin", "new-york"])
def test_daily_schedule_fires_once_on_the_autumn_dst_day(expression, start, tz, expected):
    assert firings(expression, start, tz, 2) == expected


@pytest.mark.parametrize("expression, now_utc, real_wait", [
    ("0 * * * *", datetime(2026, 10, 25, 0, 10, tzinfo=timezone.utc), timedelta(minutes=50)),
    ("*/20 * * * *", datetime(2026, 10, 25, 0, 50, tzinfo=timezone.utc), timedelta(minutes=10)),
], ids=["hourly", "every-20-minutes"])
def test_next_run_in_the_repeated_hour_compares_after_now(expression, now_utc, real_wait):
    now = now_utc.astimezone(BERLIN)  # as Context.now() makes it: 02:xx CEST, fold=0
    nxt = parse_schedule(expression).next_after(now, BERLIN)
    assert nxt.astimezone(timezone.utc) - now_utc == real_wait  # the right instant...
    assert not nxt <= now  # ...that must also not look due to the daemon's comparison
    assert nxt - now == real_wait


def test_next_after_refuses_naive_datetimes():
    with pytest.raises(ValueError, match="aware"):
        parse_schedule("@daily").next_after(datetime(2026, 1, 1), UTC)


# --- frequency ----------------------------------------------------------------------

@pytest.mark.parametrize("expression, frequency, more_than_daily, interval", [
    ("* * * * * */5", Frequency.HOURLY, True, timedelta(seconds=5)),
    ("*/15 * * * *", Frequency.HOURLY, True, timedelta(minutes=15)),
    ("@hourly", Frequency.HOURLY, True, timedelta(hours=1)),
    ("0 3,15 * * *", Frequency.HOURLY, True, timedelta(hours=12)),
    ("0 23,1 * * *", Frequency.HOURLY, True, timedelta(hours=2)),
    ("@daily", Frequency.DAILY, False, timedelta(days=1)),
    ("0 3 * * *", Frequency.DAILY, False, timedelta(days=1)),
    ("0 0 * * * 30", Frequency.DAILY, False, timedelta(days=1)),
    ("0 3 * * 1-5", Frequency.DAILY, False, timedelta(days=1)),  # weekdays only
    ("0 3 * * MON-FRI", Frequency.DAILY, False, timedelta(days=1)),
    ("0 0 * * 0,3", Frequency.DAILY, False, timedelta(days=3)),
    ("@weekly", Frequency.WEEKLY, False, timedelta(days=7)),
    ("0 4 * * 1", Frequency.WEEKLY, False, timedelta(days=7)),
    ("0 0 1,15 * *", Frequency.WEEKLY, False, timedelta(days=14)),
    ("@monthly", Frequency.MONTHLY, False, timedelta(days=28)),
    ("0 2 1 * *", Frequency.MONTHLY, False, timedelta(days=28)),
    ("0 0 1 */3 *", Frequency.MONTHLY, False, timedelta(days=90)),
    ("0 0 1 1 *", Frequency.MONTHLY, False, timedelta(days=365)),  # yearly
    ("0 0 29 2 *", Frequency.MONTHLY, False, timedelta(days=1461)),  # leap days only
])
def test_frequency(expression, frequency, more_than_daily, interval):
    schedule = parse_schedule(expression)
    assert schedule.frequency is frequency
    assert str(schedule.frequency) == frequency.value
    assert schedule.fires_more_than_once_a_day is more_than_daily
    assert schedule.min_interval == interval


def test_schedule_equality_and_text():
    assert parse_schedule("0  3 * *\t*") == parse_schedule("0 3 * * *")
    assert str(parse_schedule("@DAILY")) == "@daily"
    assert isinstance(parse_schedule("@daily"), Schedule)


# --- rejections ---------------------------------------------------------------------

@pytest.mark.parametrize("expression, reason", [
    ("", "empty schedule"),
    ("   ", "empty schedule"),
    ("* * * * * * *", "7 fields"),
    ("0 0 3 * * * 2030", "7 fields"),
    ("* * * *", "4 fields"),
    ("not a schedule", "3 fields"),
    ("daily", "1 fields"),
    ("@yearly", "unknown alias '@yearly'"),
    ("@annually", "unknown alias '@annually'"),
    ("@reboot", "unknown alias '@reboot'"),
    ("@midnight", "unknown alias '@midnight'"),
    ("@every 5m", "unknown alias '@every 5m'"),
    ("@", "unknown alias '@'"),
    ("a b c d e", "not a valid cron expression"),
    ("61 * * * *", "not a valid cron expression"),
    ("* 25 * * *", "not a valid cron expression"),
    ("* * 32 * *", "not a valid cron expression"),
    ("* * * 13 *", "not a valid cron expression"),
    ("* * * * 8", "not a valid cron expression"),
    ("*/0 * * * *", "not a valid cron expression"),
    ("* * * * * 61", "not a valid cron expression"),
    ("0 0 31 2 *", "fires less than twice"),
])
def test_rejection_says_what_is_accepted(expression, reason):
    with pytest.raises(ValueError) as info:
        parse_schedule(expression)
    message = str(info.value)
    assert reason in message
    assert "accepted: a 5-field cron expression" in message
    assert "6th seconds field" in message
    assert ", ".join(ALIASES) in message
