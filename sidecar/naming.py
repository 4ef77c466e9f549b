"""Archive names: {service}_{type}_{YYYY-MM-DD}[THHMMSS][-N]_{frequency}{ext}, kept in a
folder named after the frequency. Pure: the caller says which names already exist.

Names are parsed from the right: the type never contains "_" (see labels.short_type_name),
so a service name with underscores still parses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from .schedule import Frequency

EXTENSIONS = (".tar.zst", ".tar.gz", ".tar")
ENCRYPTED_SUFFIX = ".age"
CHECKSUM_SUFFIX = ".sha256"
PARTIAL_SUFFIX = ".partial"

_NAME_RE = re.compile(
    r"^(?P<service>.+)_(?P<type>[^_]+)_"
    r"(?P<date>\d{4}-\d{2}-\d{2})(?:T(?P<time>\d{6}))?(?:-(?P<seq>\d+))?_"
    r"(?P<frequency>hourly|daily|weekly|monthly)"
    r"(?P<ext>(?:\.tar\.zst|\.tar\.gz|\.tar)(?:\.age)?)$"
)


@dataclass(frozen=True, order=True)
class ArchiveName:
    stamp: datetime  # naive, in the sidecar's time zone
    service: str
    type_name: str
    frequency: Frequency
    extension: str
    has_time: bool = False
    seq: int = 0

    @property
    def filename(self) -> str:
        stamp = self.stamp.strftime("%Y-%m-%d")
        if self.has_time:
            stamp += self.stamp.strftime("T%H%M%S")
        if self.seq:
            stamp += f"-{self.seq}"
        return f"{self.service}_{self.type_name}_{stamp}_{self.frequency.value}{self.extension}"

    @property
    def encrypted(self) -> bool:
        return self.extension.endswith(ENCRYPTED_SUFFIX)

    @property
    def relpath(self) -> str:
        return f"{self.frequency.value}/{self.filename}"


def parse_name(filename: str) -> ArchiveName | None:
    m = _NAME_RE.match(filename)
    if not m:
        return None
    try:
        stamp = datetime.strptime(m["date"] + (m["time"] or "000000"), "%Y-%m-%d%H%M%S")
    except ValueError:
        return None
    return ArchiveName(
        stamp=stamp,
        service=m["service"],
        type_name=m["type"],
        frequency=Frequency(m["frequency"]),
        extension=m["ext"],
        has_time=m["time"] is not None,
        seq=int(m["seq"] or 0),
    )


def choose_name(
    service: str,
    type_name: str,
    when: datetime,
    frequency: Frequency,
    with_time: bool,
    extension: str,
    exists: Callable[[str], bool],
) -> ArchiveName:
    """The name for a new archive, never one for which `exists(relpath)` is true.

    A second archive on the same day gets the time part; a second in the same second a
    sequence number. `exists` should also answer for partial and checksum files.
    """
    when = when.replace(tzinfo=None, microsecond=0)
    candidate = ArchiveName(when, service, type_name, frequency, extension, has_time=with_time)
    if not exists(candidate.relpath):
        return candidate
    candidate = ArchiveName(when, service, type_name, frequency, extension, has_time=True)
    seq = 1
    while exists(candidate.relpath):
        seq += 1
        candidate = ArchiveName(when, service, type_name, frequency, extension, has_time=True, seq=seq)
    return candidate
