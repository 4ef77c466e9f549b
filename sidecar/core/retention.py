"""Grandfather-father-son rotation: how many archives of each frequency to keep, which
fresh archive also counts as a weekly or monthly (promotion), and which archives to
delete. Pure: no I/O, no clock. Dates come from archive names, never from file times,
so the same rules apply to the backup volume and to a remote listing (S3 keys).

Keep values (`BACKUP_KEEP`, label `backup.keep`): a comma list of `frequency=N`
(`hourly`, `daily`, `weekly`, `monthly`; N from 0 to 10000). A value fully specifies the
frequencies it names; the others keep their base value: the built-in defaults for
`BACKUP_KEEP`, and `BACKUP_KEEP` for a label. Built-in defaults: hourly=24, daily=7,
weekly=4, monthly=3 (hourly only matters for schedules that fire more than once a day:
one day of hourly archives). A value keeping nothing at all (every frequency 0) is refused.

Promotion: an archive also counts for each higher frequency whose keep is above 0 when it
is the first of that frequency's period (hour < day < ISO week < month) for its (backup name,
volume): no archive of that frequency exists yet in the same period. The promoted name is
the same name with the other frequency (stamp, time part, sequence and extension kept);
locally it is a hard link in the other frequency's folder.

Selection, per (backup name, volume) and per frequency: an archive is kept while fewer than
keep[frequency] periods newer than its own period hold a *good* archive (one with its
checksum file). When every archive is good, that is exactly "keep the archives of the
newest keep[frequency] periods that have archives". An archive without a checksum never
takes a good archive's place, and is deleted once enough newer good periods exist. On top:

- the newest archive of a (backup name, volume) (every copy of it) is never deleted, nor is the
  newest good one, whatever the keep values say;
- a plan that would delete every archive of a (backup name, volume) (keep 0 for every frequency
  the target has archives of) is refused with PruneRefused: that is a configuration
  mistake, not a reason to lose a backup history.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Callable, Generic, Iterable, Sequence, TypeVar

from .errors import SidecarError
from .naming import ArchiveName, ImageArchiveName
from .schedule import Frequency

T = TypeVar("T")

MAX_KEEP = 10000
ACCEPTED = (
    "a comma list of hourly=N, daily=N, weekly=N, monthly=N "
    f"(N a whole number from 0 to {MAX_KEEP}; frequencies not named keep their default)"
)
_ITEM_RE = re.compile(r"^(?P<key>[A-Za-z]+)\s*=\s*(?P<value>[0-9]+)$")


class PruneRefused(SidecarError):
    """A rotation plan would delete every archive of a target; nothing is deleted."""

    def __init__(self, groups: Sequence[tuple[str, str]], message: str):
        self.groups = tuple(groups)  # (backup name, volume) pairs refused
        super().__init__(message)


PERIOD_SECONDS = {Frequency.HOURLY: 3600, Frequency.DAILY: 86400, Frequency.WEEKLY: 7 * 86400,
                  Frequency.MONTHLY: 31 * 86400}  # the longest each period can be


@dataclass(frozen=True)
class Keep:
    """How many periods of each frequency to keep (0: none of that frequency)."""

    hourly: int
    daily: int
    weekly: int
    monthly: int
    # Frequencies the text it was read from did not name (their counts came from the
    # defaults): `describe` says so, so `plan` shows what was asked for.
    filled: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        for freq in Frequency:
            value = getattr(self, freq.value)
            if not isinstance(value, int) or not 0 <= value <= MAX_KEEP:
                raise ValueError(f"keep {freq.value}={value!r}: expected a whole number from 0 to {MAX_KEEP}")

    def of(self, frequency: Frequency) -> int:
        return getattr(self, frequency.value)

    def reach_seconds(self) -> int:
        """How far back these rules reach: the longest of count x period over the frequencies
        (a month counted as 31 days), e.g. how long an unused mirror is kept."""
        return max((self.of(f) * PERIOD_SECONDS[f] for f in Frequency), default=0)

    def retains(self, frequency: Frequency) -> bool:
        """True when archives of a schedule of this frequency are kept at all: at their
        own level or promoted to a higher one. False means every prune would be refused;
        worth reporting when a label is read."""
        return any(self.of(f) > 0 for f in Frequency if not f < frequency)

    def __str__(self) -> str:
        return ",".join(f"{f.value}={self.of(f)}" for f in Frequency)

    def describe(self) -> str:
        """What was given, then what the defaults filled in: `daily=7,weekly=4,monthly=3
        (not named, from the defaults: hourly=24)`."""
        given = ",".join(f"{f.value}={self.of(f)}" for f in Frequency if f.value not in self.filled)
        if not self.filled:
            return given
        filled = ",".join(f"{f.value}={self.of(f)}" for f in Frequency if f.value in self.filled)
        return f"{given} (not named, from the defaults: {filled})" if given else f"{filled} (the defaults)"


DEFAULT_KEEP = Keep(hourly=24, daily=7, weekly=4, monthly=3)


def parse_keep(text: str, base: Keep = DEFAULT_KEEP) -> Keep:
    """`daily=7,weekly=4` -> Keep; unnamed frequencies come from `base`. Raises
    ValueError whose message says what is wrong and what is accepted."""
    if not text.strip():
        raise ValueError(f"empty; accepted: {ACCEPTED}")
    values: dict[str, int] = {}
    names = [f.value for f in Frequency]
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise ValueError(f"empty item in {text!r}; accepted: {ACCEPTED}")
        m = _ITEM_RE.match(item)
        if m is None:
            raise ValueError(f"{item!r} is not frequency=N; accepted: {ACCEPTED}")
        key = m["key"].lower()
        if key not in names:
            raise ValueError(f"unknown frequency {m['key']!r}; accepted: {ACCEPTED}")
        if key in values:
            raise ValueError(f"{key} is named twice; accepted: {ACCEPTED}")
        digits = m["value"]
        if len(digits) > len(str(MAX_KEEP)) or int(digits) > MAX_KEEP:
            raise ValueError(f"{key}={digits} is too large; accepted: {ACCEPTED}")
        values[key] = int(digits)
    keep = replace(base, **values, filled=tuple(n for n in names if n not in values))
    if not any(keep.of(f) for f in Frequency):
        raise ValueError(f"{text!r} keeps nothing ({keep}): at least one frequency must keep 1 or more; "
                         f"accepted: {ACCEPTED}")
    return keep


def period(frequency: Frequency, stamp: datetime) -> tuple[int, ...]:
    """The period of `frequency` a stamp falls in, as a sortable tuple. Weeks are ISO
    weeks with the ISO year (2027-01-01 is in 2026-W53)."""
    if frequency is Frequency.HOURLY:
        return (stamp.year, stamp.month, stamp.day, stamp.hour)
    if frequency is Frequency.DAILY:
        return (stamp.year, stamp.month, stamp.day)
    if frequency is Frequency.WEEKLY:
        iso = stamp.isocalendar()
        return (iso.year, iso.week)
    return (stamp.year, stamp.month)


def promotions(new: ArchiveName, existing: Iterable[ArchiveName], keep: Keep) -> list[ArchiveName]:
    """The names under which `new` also counts, lowest frequency first: each higher
    frequency with keep above 0 of whose period `new` is the first archive of its
    (backup name, volume). `existing` is what is already stored (it may include `new`)."""
    same = [e for e in existing if e.backup_name == new.backup_name and e.kind == new.kind]
    result = []
    for level in Frequency:
        if not new.frequency < level or keep.of(level) == 0:
            continue
        wanted = period(level, new.stamp)
        if any(e.frequency is level and period(level, e.stamp) == wanted for e in same):
            continue
        result.append(replace(new, frequency=level))
    return result


@dataclass(frozen=True)
class PrunePlan(Generic[T]):
    """Items to keep and to delete, each in the order they were given."""

    keep: tuple[T, ...]
    delete: tuple[T, ...]


def _always(_item: object) -> bool:
    return True


def plan_prune(
    items: Sequence[T],
    name_of: Callable[[T], ArchiveName],
    keep_for: Callable[[str], Keep],
    good: Callable[[T], bool] = _always,
) -> PrunePlan[T]:
    """Split `items` (local archives, S3 keys...) into what to keep and what to delete.
    `keep_for(backup_name)` gives a target's Keep; `good(item)` tells whether an item has its
    checksum. Raises PruneRefused, naming every (backup name, volume) concerned, when the plan
    would delete every archive of one; nothing is then to be deleted."""
    names = [name_of(item) for item in items]
    goods = [bool(good(item)) for item in items]
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, name in enumerate(names):
        groups[(name.backup_name, name.kind)].append(i)

    keeps: dict[str, Keep] = {}
    kept: set[int] = set()
    refused: list[tuple[str, str, Keep, int]] = []
    for (backup_name, volume_name), indexes in groups.items():
        if backup_name not in keeps:
            keeps[backup_name] = keep_for(backup_name)
        keep = keeps[backup_name]
        selected: set[int] = set()
        for level in Frequency:
            in_level = [i for i in indexes if names[i].frequency is level]
            selected |= _select(in_level, names, goods, level, keep.of(level))
        if not selected:
            refused.append((backup_name, volume_name, keep, len(indexes)))
            continue
        # The newest archive (every copy of it) and the newest good one are always kept.
        newest = max(names[i].moment for i in indexes)
        selected |= {i for i in indexes if names[i].moment == newest}
        good_keys = [names[i].moment for i in indexes if goods[i]]
        if good_keys:
            newest_good = max(good_keys)
            selected |= {i for i in indexes if goods[i] and names[i].moment == newest_good}
        kept |= selected

    if refused:
        details = "; ".join(
            f"{backup_name}/{volume_name}: keep {keep} would delete all {count} archives"
            for backup_name, volume_name, keep, count in refused
        )
        raise PruneRefused(
            [(s, t) for s, t, _, _ in refused],
            f"refusing to prune: {details}; keep at least 1 of a frequency these targets have archives of",
        )
    return PrunePlan(
        keep=tuple(item for i, item in enumerate(items) if i in kept),
        delete=tuple(item for i, item in enumerate(items) if i not in kept),
    )


def _select(indexes: list[int], names: list[ArchiveName], goods: list[bool], level: Frequency,
            count: int) -> set[int]:
    """Archives of one (backup name, volume, frequency) kept by their periods: those whose period
    has fewer than `count` newer periods holding a good archive."""
    if count == 0 or not indexes:
        return set()
    good_periods = sorted({period(level, names[i].stamp) for i in indexes if goods[i]}, reverse=True)
    if len(good_periods) < count:
        return set(indexes)
    oldest_kept = good_periods[count - 1]
    return {i for i in indexes if period(level, names[i].stamp) >= oldest_kept}


def select_image_prune(items: list[tuple[T, ImageArchiveName]], keep: int) -> list[T]:
    """Of each image reference's exports (local files or off-site keys; see
    ImageArchiveName.group), all but the newest `keep` (at least one is kept)."""
    by_image: dict[tuple[str, str, str], list[tuple[T, ImageArchiveName]]] = {}
    for item, name in items:
        by_image.setdefault(name.group, []).append((item, name))
    doomed: list[T] = []
    for group in by_image.values():
        group.sort(key=lambda pair: (pair[1].stamp, pair[1].seq))
        doomed += [item for item, _ in group[: -max(keep, 1)]]
    return doomed
