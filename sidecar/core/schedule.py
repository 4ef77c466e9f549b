"""Cron schedules: parsing, next-run computation and the frequency a schedule implies.

Pure logic: no clock is read here; callers pass the moment to compute from.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from croniter import croniter

ALIASES = ("@hourly", "@daily", "@weekly", "@monthly")
ACCEPTED = (
    "a 5-field cron expression ('minute hour day month weekday', e.g. '0 3 * * *'), "
    "the same with a 6th seconds field ('* * * * * */30'), or one of " + ", ".join(ALIASES)
)

# How many consecutive firings are sampled to find the shortest gap of a schedule.
# Enough to see every pattern of a weekly or monthly rule within a few years.
_SAMPLES = 64
# A fixed reference moment, so a schedule's frequency never depends on today's date.
_REFERENCE = datetime(2025, 1, 1)


class Frequency(enum.Enum):
    HOURLY = "hourly"
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"

    def __str__(self) -> str:
        return self.value

    def __lt__(self, other: "Frequency") -> bool:
        order = list(Frequency)
        return order.index(self) < order.index(other)


@dataclass(frozen=True)
class Schedule:
    expression: str
    # The shortest gap between two firings: what the archive naming and the
    # "backup is late" alert are based on.
    min_interval: timedelta = field(compare=False)
    # The longest gap (weekends of a weekdays-only rule, 31-day months): what "a backup
    # is late" is measured against, so no alert fires on a planned gap.
    max_interval: timedelta = field(default=timedelta(0), compare=False)

    @property
    def frequency(self) -> Frequency:
        if self.min_interval < timedelta(days=1):
            return Frequency.HOURLY
        if self.min_interval < timedelta(days=7):
            return Frequency.DAILY
        if self.min_interval < timedelta(days=28):
            return Frequency.WEEKLY
        return Frequency.MONTHLY

    @property
    def fires_more_than_once_a_day(self) -> bool:
        return self.min_interval < timedelta(days=1)

    def next_after(self, moment: datetime, tz: ZoneInfo) -> datetime:
        """The first firing strictly after `moment`, the schedule read in `tz`, in UTC.

        UTC because Python compares two datetimes of the same zone by wall time, which
        is wrong in the hour repeated when daylight saving time ends. In that hour a
        schedule firing at most once every two hours fires once, not twice (as cron does).
        """
        if moment.tzinfo is None:
            raise ValueError("next_after needs an aware datetime")
        after = moment.astimezone(timezone.utc)
        it = croniter(self.expression, moment.astimezone(tz))
        for _ in range(8):
            local = it.get_next(datetime)
            candidate = local.astimezone(timezone.utc)
            if candidate <= after:
                continue
            if self.min_interval >= timedelta(hours=2) and _second_occurrence(local, tz):
                continue
            return candidate
        raise ValueError(f"no next run found for {self.expression!r}")  # pragma: no cover

    def __str__(self) -> str:
        return self.expression


def _second_occurrence(local: datetime, tz: ZoneInfo) -> bool:
    """True for a wall time that happens twice (DST ending) at its second instant."""
    naive = local.replace(tzinfo=None)
    first, second = naive.replace(tzinfo=tz, fold=0), naive.replace(tzinfo=tz, fold=1)
    return first.utcoffset() != second.utcoffset() and local.utcoffset() == second.utcoffset()


def parse_schedule(expression: str) -> Schedule:
    """Parse a schedule; raises ValueError whose message says what is accepted."""
    expr = " ".join(expression.split())
    if not expr:
        raise ValueError(f"empty schedule; accepted: {ACCEPTED}")
    if expr.startswith("@"):
        if expr.lower() not in ALIASES:
            raise ValueError(f"unknown alias {expr!r}; accepted: {ACCEPTED}")
        expr = expr.lower()
    else:
        fields = expr.split(" ")
        if len(fields) not in (5, 6):
            raise ValueError(f"{len(fields)} fields; accepted: {ACCEPTED}")
    try:
        valid = croniter.is_valid(expr)
    except Exception:  # croniter raises several types for odd input
        valid = False
    if not valid:
        raise ValueError(f"not a valid cron expression; accepted: {ACCEPTED}")
    shortest, longest = _gaps(expr)
    return Schedule(expression=expr, min_interval=shortest, max_interval=longest)


def _gaps(expr: str) -> tuple[timedelta, timedelta]:
    it = croniter(expr, _REFERENCE)
    shortest: timedelta | None = None
    longest = timedelta(0)
    try:
        previous = it.get_next(datetime)
        for _ in range(_SAMPLES):
            current = it.get_next(datetime)
            gap = current - previous
            if shortest is None or gap < shortest:
                shortest = gap
            longest = max(longest, gap)
            previous = current
    except Exception:
        # Rare rules (Feb 29) run out of croniter's year range; what was seen is enough.
        pass
    if shortest is None:
        raise ValueError(f"the schedule {expr!r} fires less than twice; accepted: {ACCEPTED}")
    return shortest, longest
