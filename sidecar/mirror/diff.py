"""The staging mirror's change detection (pure): what a mirror pass must copy again.

The mirror of a volume keeps, per path, how the source entry looked when it was last
brought across (`Seen`: device, inode, mode, size, mtime and ctime in nanoseconds). A
path is unchanged only when all of them are equal. Size + mtime alone would miss a
rewrite with the same size whose mtime was set back (utime); the ctime cannot be set
back: the kernel sets it on every write, chmod, chown, link, rename and xattr change.
A volume re-created (or another filesystem) gives new device and inode numbers, so
everything is copied again.

An entry is recorded as `racy`, never trusted (the next pass copies it again, as git
does with its index), when its mtime or ctime does not prove that nothing changed it
after the pass read it. Two ways a change leaves no new time behind:
- the kernel stamps times from a coarse clock (a tick of up to 10 ms, behind the fine
  clock we read): a write in the same tick as our look keeps the times we saw
  (RACY_MARGIN_NS, far above a tick);
- a write through a shared mmap page that is already dirty moves no time at all: only
  the first write to a clean (write-protected) page faults and stamps mtime and ctime,
  and a dirty page stays writable until writeback cleans it.

The rule (`synced_at_ns`): each pass, before it looks at anything, notes the time T and
calls syncfs(2) on each filesystem of the volume (sync_sources in worker.py; it needs no
privilege and works on a read-only descriptor). syncfs writes back every dirty page of
that filesystem and, in doing so, write-protects every shared mapping of it
(clear_page_dirty_for_io -> page_mkclean), so after it returns:
- a write(2), truncate, chmod, link, rename or xattr change stamps ctime (and mtime) from
  the coarse clock, at least T - one tick;
- a write through any mapping, old or new, faults on the cleaned page and stamps mtime
  and ctime (page_mkwrite -> file_update_time), again at least T - one tick;
- a write before T, or while syncfs ran, is in the page cache, which is what the pass
  reads after syncfs returned.
So an entry whose max(mtime, ctime) < T - RACY_MARGIN_NS was not changed after T, its
copy (read after T) holds its bytes, and any later change moves its times: it is
trusted by the next pass. One whose times are >= T - RACY_MARGIN_NS is racy. Data written
10 s before a pass is then trusted; only what changes during a pass is read again, which
the stopped pass does. Each pass (the stopped one too: a paused app keeps its mappings)
syncs and judges against its own T.

Where syncfs cannot prove that, the older, wider rule stays (`margin_ns`): an entry
changed within the writeback window (from the kernel's dirty_expire and
dirty_writeback intervals, twice over) when it was looked at is racy, since a dirty page
is cleaned, and its next write faults, within that window. That is the fallback for a
filesystem whose syncfs failed (or a device the pass did not sync). On a filesystem
without writeback (tmpfs, ramfs) a page is never cleaned, syncfs or not: every entry
there is racy (`always`), and tmpfs volumes are read again whole by the stopped pass.

Besides the source side, the manifest keeps the mirror side of each path (`Mirrored`: the
copy's inode, size, mtime and ctime after the pass): a pass that finds the copy otherwise
copies it again, so a mirror file edited or removed outside the sidecar is repaired.

Set-id files and device nodes are not kept as such in the mirror (a mirrored setuid-root
binary would run as root for whoever reaches it): the copy of a set-id file has those bits
cleared, a device is an empty regular file, and the manifest keeps the source's mode and
rdev, from which the archive of the mirror takes them (`special`, sidecar/worker/special.py).

The manifest is JSON (paths as str with surrogate escapes, which json keeps); a manifest
of another version, or one a pass left unfinished (`dirty`), is read as empty.
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from typing import Mapping, NamedTuple

MANIFEST_VERSION = 3
RACY_MARGIN_NS = 2_000_000_000  # far above the kernel's coarse clock tick
ROOM_MARGIN = 0.02  # of the backup volume's size, kept free besides what a mirror pass needs


class Seen(NamedTuple):
    """A source entry as a mirror pass saw it (from lstat or the copy's fstat). A named
    tuple, not a dataclass: a pass makes one per entry, inside the stop window."""

    dev: int
    ino: int
    mode: int  # st_mode: type and permission bits
    size: int
    mtime_ns: int
    ctime_ns: int
    racy: bool = False  # looked at too soon after its last change: not to be trusted
    mirror: tuple[int, ...] = ()  # the copy as the pass left it (Mirrored.of); () unknown
    rdev: int = 0  # a device's number (its copy is a placeholder); 0 for every other kind

    @classmethod
    def of(cls, st, looked_at_ns: int, margin_ns: int = 0, always: bool = False,
           synced_at_ns: int | None = None) -> "Seen":
        """From an os.stat_result taken at `looked_at_ns` (time.time_ns, before the stat).
        Racy when `always`; else, given `synced_at_ns` (T, noted just before this pass's
        syncfs of the entry's filesystem), when changed at or after T - RACY_MARGIN_NS;
        else when changed less than RACY_MARGIN_NS + margin_ns before it was looked at."""
        since = synced_at_ns if synced_at_ns is not None else looked_at_ns - margin_ns
        recent = max(st.st_mtime_ns, st.st_ctime_ns) >= since - RACY_MARGIN_NS
        rdev = st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0
        return cls(st.st_dev, st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, always or recent,
                   (), rdev)

    def key(self) -> tuple[int, ...]:
        return self[:6]

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def special(self) -> bool:
        """Not kept as such in the mirror: a set-id file (its copy without those bits) or a
        device (its copy an empty regular file); the archive takes mode and rdev from here."""
        return is_special(self.mode)


def is_special(mode: int) -> bool:
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return True
    return not stat.S_ISDIR(mode) and bool(mode & (stat.S_ISUID | stat.S_ISGID))


def on_disk_mode(mode: int) -> int:
    """The permission bits a mirror copy of an entry of `mode` gets (set-id bits cleared
    but on folders, where they mean no privilege)."""
    bits = stat.S_IMODE(mode)
    return bits if stat.S_ISDIR(mode) else bits & ~(stat.S_ISUID | stat.S_ISGID)


def special_of(entries: Mapping[str, "Seen"]) -> dict[str, tuple[int, int]]:
    """Path -> (source mode, rdev) of every entry its copy does not carry exactly."""
    return {path: (s.mode, s.rdev) for path, s in entries.items() if s.special}


def mirrored(st) -> tuple[int, ...]:
    """The mirror side of a path: its copy's inode, size, mtime and ctime (from lstat)."""
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def writeback_window_ns(expire_centisecs: int, writeback_centisecs: int) -> int | None:
    """How long a page written through mmap may stay dirty and writable (so later writes
    to it move no time): until it expires and the next writeback round cleans it, twice
    over for a writeback that falls behind. None: no periodic writeback (never cleaned)."""
    if writeback_centisecs <= 0:
        return None
    return 2 * (expire_centisecs + writeback_centisecs) * 10_000_000


def unchanged(before: Seen | None, now: Seen) -> bool:
    """Whether the mirror's copy of an entry recorded as `before` still matches `now`."""
    return before is not None and not before[6] and before[:6] == now[:6]


def dumps(entries: Mapping[str, Seen]) -> str:
    rows = {path: [*s.key(), int(s.racy), s.rdev, *s.mirror] for path, s in entries.items()}
    return json.dumps({"version": MANIFEST_VERSION, "entries": rows}, separators=(",", ":"))


def loads(text: str) -> dict[str, Seen]:
    """A manifest written by `dumps`; empty for another version or anything unreadable
    (a mirror with no manifest is copied again whole, never trusted)."""
    try:
        doc = json.loads(text)
        if doc.get("version") != MANIFEST_VERSION:
            return {}
        return {path: Seen(*(int(v) for v in row[:6]), bool(row[6]), tuple(int(v) for v in row[8:12]), int(row[7]))
                for path, row in doc["entries"].items()}
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return {}


@dataclass(frozen=True)
class Room:
    """Whether the backup volume holds a mirror pass and still the volume's archive."""

    to_copy: int  # bytes this pass writes into the mirror
    volume: int  # bytes of the whole volume: the archive's worst case (incompressible data)
    free: int  # bytes free on the backup volume
    total: int  # the backup volume's size

    @property
    def needed(self) -> int:
        return self.to_copy + self.volume + int(self.total * ROOM_MARGIN)

    @property
    def enough(self) -> bool:
        return self.free >= self.needed
