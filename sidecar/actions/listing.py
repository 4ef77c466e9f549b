"""What is on the backup volume: archives with their date, size and checksum state."""

from __future__ import annotations

from dataclasses import dataclass

from ..archive import read_checksum, sha256_file
from ..errors import ArchiveError
from .context import Context


@dataclass(frozen=True)
class ArchiveRow:
    path: str
    target: str
    volume: str
    frequency: str
    date: str
    size: int
    checksum: str  # "ok", "mismatch", "missing", "present" (not verified), "unreadable"


def run_list(ctx: Context, name: str | None = None, verify: bool = False) -> list[ArchiveRow]:
    service = None
    if name is not None:
        target = ctx.discover().find(name)
        service = target.name if target is not None else name
    rows = []
    for archive in ctx.store.archives(service):
        try:
            expected = read_checksum(archive.path)
            if expected is None:
                state = "missing"
            elif verify:
                state = "ok" if sha256_file(archive.path) == expected else "mismatch"
            else:
                state = "present"
        except (ArchiveError, OSError):
            state = "unreadable"
        stamp = archive.name.stamp.isoformat(sep=" ") if archive.name.has_time else archive.name.stamp.date().isoformat()
        rows.append(ArchiveRow(str(archive.path.relative_to(ctx.store.root)), archive.name.service,
                               archive.name.type_name, archive.name.frequency.value, stamp, archive.size, state))
    return rows
