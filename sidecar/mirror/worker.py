"""A mirror pass: brings a volume's staging mirror on the backup volume up to date with the
volume (mounted read-only), copying only what changed since the mirror's last pass
(sidecar/mirror/diff.py decides what did, from the manifest kept beside the mirror).

A mirror's folder (0700, on the backup volume; the sidecar names it):
    vault/                root's, 0700, made so by each pass: no user but root may reach a
                          path into the copy (it is a plaintext copy of the volume)
    vault/tree/           the copy: same names, types, contents, holes, modes, owners, mtimes,
                          symlinks, hard links, empty folders and xattrs as the volume, but no
                          set-id file and no device node (see below)
    vault/tmp/            new files are written here, then renamed into the tree
    manifest.json         how each source entry looked when it was brought across
    special.json          mode and rdev of each set-id file and device (for the archive worker)
    info.json             the mirror's size (for `plan` and the metrics)
    archived.json         the state the last archive was made from, and that archive
                          (sidecar/worker/reuse.py: an unchanged mirror's archive is copied)
    frames.json           the last archive's zstd frames (sidecar/worker/frames.py: only the
                          frames whose tar bytes changed are compressed again)
    pass-unfinished       present while a pass changes the tree: its manifest is not trusted
    go                    written by the sidecar for a pass started with --go ("go"/"abort")
A pass empties tmp/ first (a worker killed mid-copy leaves its partial file there).

Brought across: contents (sparse files stay sparse), deletions, renames (as a delete and a
copy), type changes, modes, owners, mtimes, symlink targets, hard links (the mirror's
paths of one source inode share one inode), empty folders, xattrs where the filesystem has
them, security.capability included (set after the owner: chown clears it). Sockets are
left out, and a path that became one is removed (tar leaves them out too). Excluded paths
(--exclude, the archive's matcher and its hard-link rule) are not mirrored. A folder's own
metadata is set after its contents (writing into a folder changes its mtime). A file that
tar would archive as data (no fewer blocks than its size: fallocated ranges count) is
copied as data, one that it would archive as sparse keeps its holes.

Set-id bits and devices as data, never on disk: the copy of a set-id file has its set-id
bits cleared, a character or block device is an empty regular file (a placeholder with the
device's owner, permissions, times and xattrs); their true mode and rdev are in the
manifest and in special.json, from which the archive worker writes their tar headers
(sidecar/worker/special.py). So the mirror holds nothing a user could run with another
user's rights or open as a device, and its archive still equals a plain read's.

Exact or refused: a copy the backup filesystem cannot hold exactly (an mtime out of its
range or precision, an xattr it refuses) ends the pass with a `refused` line naming the
reason; the sidecar then stops the container for a plain read. Durable: data, folders
and the manifest reach the disk before a pass is marked finished (pass-unfinished gone).

With --go the worker starts, loads the manifest, says `ready` and waits for the go file:
the sidecar starts it before stopping the container, so the container's start-up is not
inside the stop window. A held worker (`mirror --hold`, sidecar/worker/cli.py) runs the
first pass, the stopped pass (`stopped`, on the sidecar's `go` on stdin) and the archive
of the mirror in one container.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import stat
import subprocess
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

from sidecar.tarball.archive import is_excluded
from sidecar.core.errors import ArchiveError
from sidecar.mirror.diff import (
    Room,
    Seen,
    dumps,
    loads,
    mirrored,
    on_disk_mode,
    special_of,
    unchanged,
    writeback_window_ns,
)
from sidecar.tarball.streams import Heartbeat

VAULT, MANIFEST, INFO, DIRTY, GO = "vault", "manifest.json", "info.json", "pass-unfinished", "go"
ARCHIVED, FRAMES = "archived.json", "frames.json"  # written by the archive stage (sidecar/worker)
SPECIAL = "special.json"
TREE, TMP = VAULT + "/tree", VAULT + "/tmp"
_BEFORE_THE_VAULT = ("tree", "tmp")  # where earlier versions kept the copy: removed
GO_POLL = 0.002  # seconds between looks at the go file: its delay is inside the stop window
COPY_CHUNK = 1 << 20
_NO_RANGE_COPY = (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM)
# An entry that vanished or changed kind while a pass (with the container running) read it:
# the next pass sees what it became.
_GONE = (FileNotFoundError, NotADirectoryError)
NO_WRITEBACK = ("tmpfs", "ramfs")  # filesystems whose pages are never cleaned (see mirrordiff)
# Times the backup filesystem must hold exactly (else `refused`): nanoseconds, past 2038, before 1970.
PROBE_TIMES_NS = (1_700_000_000_123_456_789, 4_102_444_800_987_654_321, -1_000_000_001)

# The first copy of a volume (an empty mirror) by GNU tar, not a Python copy per file:
# the same member semantics as the archive (sparse by tar's rule, xattrs, nanosecond
# times); set-id bits stripped in the stream (never on disk); devices and sockets left to
# the pass; security.capability set by tar after the owner.
NATIVE_CREATE = ("--create", "--file=-", "--format=posix", "--sparse", "--xattrs", "--numeric-owner",
                 "--mode=ug-s", "--no-recursion", "--null", "--verbatim-files-from", "--files-from=-")
NATIVE_EXTRACT = ("--extract", "--file=-", "--xattrs", "--xattrs-include=*", "--numeric-owner",
                  "--same-owner", "--same-permissions")

Emit = Callable[[dict], None]


@dataclass(frozen=True)
class MirrorJob:
    root: Path  # the volume, read-only
    mirror: Path  # the mirror's folder on the backup volume (see the module docstring)
    check_room: bool = True  # refuse (no-room) when the backup volume cannot hold it and an archive
    go: bool = False  # wait for the go file before the pass
    wait_timeout: float = 3600.0
    progress_interval: float = 1.0
    exclude: tuple[str, ...] = ()  # the archive's patterns: excluded paths are not mirrored
    stopped: bool = False  # the stopped pass, its go already given (a held worker, on stdin)


class MirrorRefused(ArchiveError):
    """The mirror cannot hold an exact copy here (the message says what and why)."""


@dataclass(frozen=True)
class MirrorOutcome:
    entries: int
    copied: int  # entries written again (files, links, folders made)
    copied_bytes: int
    removed: int
    mirror_bytes: int  # disk use of the mirror's tree (hard-linked files once)
    volume_bytes: int
    seconds: float


class _Entry(NamedTuple):
    rel: str  # "." for the root, else "a/b"
    st: os.stat_result
    looked_at_ns: int


def walk(root: Path, exclude: tuple[str, ...] = ()) -> tuple[list[_Entry], dict[str, list[str]]]:
    """Every entry under `root` to mirror (lstat; a folder before its entries, names in
    byte order) and each folder's names of them. A folder is stat'ed before it is listed,
    so an entry added after its listing changes the folder's ctime past the one recorded.
    Plain strings, not Path objects: the stopped pass walks the whole volume inside the window.

    Excluded entries are left out as the archive's listing (worker/archive.py) leaves them
    out: an excluded folder is walked for its hard links only, and a hard-linked file
    whose first path is excluded is left out everywhere."""
    base = str(root)
    entries = [_Entry(".", os.lstat(base), time.time_ns())]
    children: dict[str, list[str]] = {}
    first_seen: dict[tuple[int, int], bool] = {}
    stack: list[tuple[Iterator[_Entry], bool]] = [(_listed(base, ".", children, exclude, False), False)]
    while stack:
        it, hidden = stack[-1]
        entry = next(it, None)
        if entry is None:
            stack.pop()
            continue
        keep = not hidden and not (exclude and is_excluded(entry.rel, exclude))
        is_dir = stat.S_ISDIR(entry.st.st_mode)
        if exclude and not is_dir and entry.st.st_nlink > 1:
            keep = first_seen.setdefault((entry.st.st_dev, entry.st.st_ino), keep) and keep
        if keep:
            entries.append(entry)
        if is_dir and (keep or exclude):  # an excluded folder: only for its hard links
            stack.append((_listed(base, entry.rel, children, exclude, not keep), not keep))
    if exclude:  # the folders' names of what is mirrored only (a name left out is removed)
        kept = {e.rel for e in entries}
        for folder, names in children.items():
            prefix = "" if folder == "." else folder + "/"
            children[folder] = [n for n in names if prefix + n in kept]
    return entries, children


def _listed(base: str, folder: str, children: dict[str, list[str]], exclude: tuple[str, ...] = (),
            hidden: bool = False) -> Iterator[_Entry]:
    prefix = "" if folder == "." else folder + "/"
    try:
        with os.scandir(base + "/" + prefix if prefix else base) as it:
            found = sorted(it, key=lambda e: os.fsencode(e.name))
    except _GONE:  # removed or replaced while walked (a hot pass): the next pass sees it
        found = []
    if not hidden:
        children[folder] = [e.name for e in found]
    for e in found:
        now = time.time_ns()
        try:
            st = e.stat(follow_symlinks=False)
        except _GONE:
            continue
        yield _Entry(prefix + e.name, st, now)


def _blocks(st: os.stat_result) -> int:
    return st.st_blocks * 512


class MirrorPass:
    """One pass over walked entries; `run` returns the new manifest, `record_mirror_side`
    adds how each copy looks after it."""

    def __init__(self, job: MirrorJob, previous: dict[str, Seen], check_mirror: bool = True,
                 synced: dict[int, int] | None = None):
        self.root, self.tree, self.tmp = job.root, job.mirror / TREE, job.mirror / TMP
        self.previous = previous
        self.check_mirror = check_mirror  # compare each copy with its record (not in the stop window)
        self.margin_ns, self.always_racy = _racy_rules(job.root)
        self.synced = synced or {}  # st_dev -> T before its syncfs (sync_sources); others: the window
        self.new: dict[str, Seen] = {}
        self.links: dict[tuple[int, int], str] = {}  # source (dev, ino) -> first path of it this pass
        self.touched: set[str] = set()  # mirror folders whose entries this pass changed
        self.changed: set[str] = set()  # folders whose source changed
        self.fresh: set[str] = set()  # folders made new in the mirror: nothing in them is trusted
        self.copied = self.copied_bytes = self.removed = 0
        self.adopted: set[str] = set()  # copied by tar this pass and checked (adopt): trusted
        self._tree = str(self.tree)
        # The copies `_trusted` looked at and kept this pass, as looked at: recorded without
        # a second lstat (record_mirror_side). Files with one link only: a folder's times move
        # when its entries change, and a hard link made to a copy moves its ctime.
        self.checked: dict[str, os.stat_result] = {}

    def _m(self, rel: str) -> Path:
        return self.tree if rel == "." else self.tree / rel

    def _ms(self, rel: str) -> str:
        """`_m` as a plain string, for the lstat of every entry (a Path costs more than the call)."""
        return self._tree if rel == "." else self._tree + "/" + rel

    @staticmethod
    def _parent(rel: str) -> str:
        return rel.rpartition("/")[0] or "."

    def seen(self, st: os.stat_result, looked_at_ns: int) -> Seen:
        synced_at = self.synced.get(st.st_dev)
        return Seen.of(st, looked_at_ns, self.margin_ns, self.always_racy(st.st_dev, synced_at is not None), synced_at)

    def _trusted(self, rel: str, seen: Seen) -> bool:
        """The copy at `rel` may stay: the source is as recorded, and so is the copy."""
        if rel in self.adopted:
            return True
        before = self.previous.get(rel)
        if not unchanged(before, seen):
            return False
        if not self.check_mirror:
            return True
        mst = _lstat(self._ms(rel))
        if mst is None or mirrored(mst) != before.mirror:
            return False
        if stat.S_ISREG(mst.st_mode) and mst.st_nlink == 1:
            self.checked[rel] = mst
        return True

    def to_copy(self, entries: list[_Entry]) -> int:
        """Bytes of the files this pass would copy (for the room check)."""
        return sum(_blocks(e.st) for e in entries if stat.S_ISREG(e.st.st_mode)
                   and not unchanged(self.previous.get(e.rel), self.seen(e.st, e.looked_at_ns)))

    def run(self, entries: list[_Entry], children: dict[str, list[str]]) -> dict[str, Seen]:
        folders = []
        for entry in entries:
            st = entry.st
            seen = self.seen(st, entry.looked_at_ns)
            if stat.S_ISDIR(st.st_mode):
                self._folder(entry, seen, children.get(entry.rel, []))
                folders.append(entry)
            elif st.st_nlink > 1 and (st.st_dev, st.st_ino) in self.links:
                self._hard_link(entry, seen)
            elif stat.S_ISSOCK(st.st_mode):  # left out, as tar leaves it out: no older copy stays
                if _lstat(self._m(entry.rel)) is not None:
                    self._remove(self._m(entry.rel))
                    self.touched.add(self._parent(entry.rel))
            elif self._trusted(entry.rel, seen) and not (self.fresh and self._parent(entry.rel) in self.fresh):
                self.new[entry.rel] = seen
                if st.st_nlink > 1:
                    self._remember_link(entry)
            else:
                self._copy(entry)
        for entry in reversed(folders):  # contents first: writing into a folder moves its mtime
            if entry.rel in self.changed or entry.rel in self.touched:
                self._folder_metadata(entry)
        return self.new

    def adopt(self, entries: list[_Entry]) -> None:
        """After tar | tar made the tree (`native_copy`): each entry whose copy is as the
        walk saw it (type, owner, mode, mtime, size, sparse or not, xattrs) is trusted by the `run` that follows
        (racy or not: it was read a moment ago); set-id folders get their bits back (tar's
        --mode=ug-s). `run` copies the rest (devices, what changed or was not copied)."""
        counted: set[int] = set()
        for entry in entries:
            st = entry.st
            if stat.S_ISSOCK(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                continue
            m = self._ms(entry.rel)
            try:
                mst = _lstat(m)
            except NotADirectoryError:  # a folder above it became a file after the walk
                continue
            if mst is None or stat.S_IFMT(mst.st_mode) != stat.S_IFMT(st.st_mode):
                continue
            if stat.S_ISDIR(st.st_mode) and stat.S_IMODE(mst.st_mode) != stat.S_IMODE(st.st_mode):
                os.chmod(m, stat.S_IMODE(st.st_mode))
                mst = os.lstat(m)
            same = (mst.st_uid, mst.st_gid, mst.st_mtime_ns) == (st.st_uid, st.st_gid, st.st_mtime_ns)
            if stat.S_ISREG(st.st_mode):  # and read by tar as the volume's file is: sparse or data
                same = same and mst.st_size == st.st_size and tar_sees_sparse(mst) == tar_sees_sparse(st)
            if not stat.S_ISLNK(st.st_mode):
                same = same and stat.S_IMODE(mst.st_mode) == on_disk_mode(st.st_mode)
            if same and not stat.S_ISLNK(st.st_mode):  # tar may only warn about an xattr it could not set
                same = _xattrs_of_path(self.root / entry.rel) == _xattrs_of_path(m)
            if same:
                self.adopted.add(entry.rel)
                if stat.S_ISREG(mst.st_mode) and mst.st_nlink == 1:
                    self.checked[entry.rel] = mst
                self.copied += 1
                if stat.S_ISREG(st.st_mode) and mst.st_ino not in counted:  # its data, once per inode
                    counted.add(mst.st_ino)
                    self.copied_bytes += min(st.st_size, _blocks(mst))

    def record_mirror_side(self) -> int:
        """Each recorded path's copy as it now is (for the next pass's check); returns the
        tree's disk use (hard-linked files once)."""
        counted: set[int] = set()
        total = 0
        for rel, seen in list(self.new.items()):
            mst = self.checked.get(rel) or _lstat(self._ms(rel))
            if mst is None:  # vanished while the container ran: not trusted next time
                del self.new[rel]
                continue
            self.new[rel] = seen._replace(mirror=mirrored(mst))
            if mst.st_ino not in counted:
                counted.add(mst.st_ino)
                total += _blocks(mst)
        return total

    # --- folders ----------------------------------------------------------------------
    def _folder(self, entry: _Entry, seen: Seen, names: list[str]) -> None:
        m = self._m(entry.rel)
        mst = _lstat(m)
        changed = not self._trusted(entry.rel, seen)
        if mst is None or not stat.S_ISDIR(mst.st_mode):
            if mst is not None:
                self._remove(m)
            os.mkdir(m, 0o700)
            self.fresh.add(entry.rel)
            if entry.rel != ".":
                self.touched.add(self._parent(entry.rel))
            self.copied += 1
            changed = True
        elif changed:  # entries added, removed or renamed in it: drop what the source lacks
            keep = set(names)
            with os.scandir(m) as it:
                extra = [e.name for e in it if e.name not in keep]
            for name in extra:
                self._remove(m / name)
                self.touched.add(entry.rel)
        if changed:
            self.changed.add(entry.rel)
        self.new[entry.rel] = seen

    def _folder_metadata(self, entry: _Entry) -> None:
        m, st = self._m(entry.rel), entry.st
        src = self.root if entry.rel == "." else self.root / entry.rel
        try:
            wanted = _xattrs(src)
        except _GONE:
            return
        _set_owner_mode(m, st)
        _set_xattrs(m, wanted, entry.rel)
        _set_times(m, st, entry.rel)

    # --- files, symlinks, devices -----------------------------------------------------------
    def _copy(self, entry: _Entry) -> None:
        st = entry.st
        tmp = self.tmp / uuid.uuid4().hex
        if stat.S_ISREG(st.st_mode):
            got = self._copy_file(entry, tmp)
            if got is None:  # vanished or no longer a file: the next pass sees what it became
                tmp.unlink(missing_ok=True)
                self._remove(self._m(entry.rel))
                self.touched.add(self._parent(entry.rel))
                return
            st, seen = got
        else:
            seen = self.seen(st, entry.looked_at_ns)
            try:
                if stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(self.root / entry.rel), tmp)
                elif stat.S_ISFIFO(st.st_mode):
                    os.mkfifo(tmp, 0o600)
                else:  # character or block device: a placeholder (its rdev is in the manifest)
                    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            except _GONE:
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # readlink: no longer a symlink
                    raise
                return
            _set_owner_mode(tmp, st)
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):  # after the owner, as for files
                _set_xattrs(str(tmp), _xattrs_of_path(self.root / entry.rel), entry.rel)
            _set_times(tmp, st, entry.rel)
        self._place(tmp, entry.rel)
        self.new[entry.rel] = seen
        self.copied += 1
        self._remember_link(entry)

    def _copy_file(self, entry: _Entry, tmp: Path) -> tuple[os.stat_result, Seen] | None:
        """Copy one file; its record comes from fstat before the first byte is read, so a
        write during the copy leaves a newer ctime for the next pass to see."""
        now = time.time_ns()
        try:
            fd = _open_source(self.root / entry.rel)
        except _GONE:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO):
                return None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            seen = self.seen(st, now)
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                self.copied_bytes += _copy_data(fd, out, st)
                _set_owner_mode(out, st)  # before the xattrs: chown clears security.capability
                _set_xattrs(out, _xattrs(fd), entry.rel)
                _set_times(out, st, entry.rel)
            finally:
                os.close(out)
        finally:
            os.close(fd)
        return st, seen

    def _hard_link(self, entry: _Entry, seen: Seen) -> None:
        """Another path of an inode already brought across: the same inode in the mirror."""
        self.checked.pop(self.links[(entry.st.st_dev, entry.st.st_ino)], None)  # a new link moves its ctime
        first = self._m(self.links[(entry.st.st_dev, entry.st.st_ino)])
        m, fst = self._m(entry.rel), os.lstat(first)
        mst = _lstat(m)
        if mst is None or (mst.st_dev, mst.st_ino) != (fst.st_dev, fst.st_ino):
            tmp = self.tmp / uuid.uuid4().hex
            os.link(first, tmp)
            self._place(tmp, entry.rel)
            self.copied += 1
        self.new[entry.rel] = seen

    def _remember_link(self, entry: _Entry) -> None:
        if entry.st.st_nlink > 1:
            self.links.setdefault((entry.st.st_dev, entry.st.st_ino), entry.rel)

    # --- the mirror's tree --------------------------------------------------------------------
    def _place(self, tmp: Path, rel: str) -> None:
        self.checked.pop(rel, None)
        m = self._m(rel)
        try:
            os.rename(tmp, m)
        except OSError as exc:
            if exc.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise
            self._remove(m)  # a folder where a file now is
            os.rename(tmp, m)
        self.touched.add(self._parent(rel))

    def _remove(self, path: Path) -> None:
        st = _lstat(path)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        else:
            path.unlink()
        self.removed += 1


def native_copy(root: Path, tree: Path, entries: list[_Entry]) -> str | None:
    """The walked entries (but devices and sockets) from `root` into the empty `tree` by
    `tar | tar`; None when the extraction went through, else what it said."""
    names = [e.rel for e in entries
             if not (stat.S_ISSOCK(e.st.st_mode) or stat.S_ISCHR(e.st.st_mode) or stat.S_ISBLK(e.st.st_mode))]
    create = subprocess.Popen(["tar", f"--directory={root}", *NATIVE_CREATE], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        extract = subprocess.Popen(["tar", f"--directory={tree}", *NATIVE_EXTRACT], stdin=create.stdout,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    finally:
        create.stdout.close()  # the extraction holds it now

    def feed() -> None:
        try:
            for name in names:
                create.stdin.write(b"./" + os.fsencode(name) + b"\0" if name != "." else b".\0")
        except OSError:
            pass  # tar ended early: the extraction's exit code says why
        finally:
            try:
                create.stdin.close()
            except OSError:
                pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    said = extract.stderr.read()
    code = extract.wait()
    create.wait()  # exit 1 or 2: an entry changed or vanished after the walk (left unrecorded)
    feeder.join()
    return None if code == 0 else (said.decode("utf-8", "replace").strip()[-400:] or f"tar exit {code}")


def _racy_rules(root: Path) -> tuple[int, Callable[[int, bool], bool]]:
    """The writeback window (the fallback rule, see mirrordiff) and which devices are always
    racy: those without writeback (tmpfs, ramfs: syncfs cleans no page there) and, when the
    kernel has no periodic writeback, every device this pass did not sync."""
    try:
        expire = int(Path("/proc/sys/vm/dirty_expire_centisecs").read_text())
        every = int(Path("/proc/sys/vm/dirty_writeback_centisecs").read_text())
        window = writeback_window_ns(expire, every)
    except (OSError, ValueError):
        window = writeback_window_ns(3000, 500)  # the kernel's defaults
    no_writeback = _devices_of(NO_WRITEBACK)
    if window is None:  # no periodic writeback: a dirty page may stay writable for ever
        return 0, lambda dev, synced: dev in no_writeback or not synced
    return window, lambda dev, synced: dev in no_writeback


def sync_sources(root: Path) -> dict[int, int]:
    """syncfs(2) of the volume's filesystem and of each mount below it (a container's nested
    mounts), before the pass looks at any entry: st_dev -> T, the time noted just before
    the first syncfs (see mirrordiff: what changes after T moves its times). A filesystem
    whose syncfs fails is left out (the window rule judges its entries)."""
    base = str(root)
    points = [base] + [p for p in _mount_points() if p.startswith(base.rstrip("/") + "/")]
    synced_at = time.time_ns()
    synced: dict[int, int] = {}
    for point in points:
        try:
            fd = os.open(point, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            dev = os.fstat(fd).st_dev
            if dev not in synced and _syncfs(fd) == 0:
                synced[dev] = synced_at
        except OSError:
            pass
        finally:
            os.close(fd)
    return synced


def _syncfs(fd: int) -> int:
    """0 when syncfs(2) went through, else its errno (ENOSYS without it in the C library)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return 0 if libc.syncfs(fd) == 0 else ctypes.get_errno()
    except AttributeError:
        return errno.ENOSYS


def _mount_points() -> list[str]:
    """This process's mount points (mountinfo's fifth field, octal escapes decoded)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    points = []
    for line in lines:
        parts = line.split(" ")
        if len(parts) > 4:
            points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[4]))
    return points


def _devices_of(fstypes: tuple[str, ...]) -> set[int]:
    """st_dev numbers of this process's mounts of those filesystem types (mountinfo)."""
    found = set()
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) > 2 and rest.split(" ", 1)[0] in fstypes:
            major, _, minor = parts[2].partition(":")
            found.add(os.makedev(int(major), int(minor)))
    return found


def _lstat(path: str | Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _open_source(path: Path) -> int:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a FIFO must not hang us
    try:
        return os.open(path, flags | os.O_NOATIME)  # reading for a backup is no access
    except PermissionError:
        return os.open(path, flags)


def tar_sees_sparse(st: os.stat_result) -> bool:
    """GNU tar's test (sparse_file_p): fewer 512-byte blocks than the size needs. A file
    fallocated without holes is data for tar, however SEEK_HOLE reports its unwritten ranges."""
    return st.st_blocks < (st.st_size + 511) // 512


def _copy_data(src: int, dst: int, st: os.stat_result) -> int:
    """`src`'s bytes into `dst`: its data regions at the same offsets (holes stay holes)
    when tar would read it as sparse, else every byte (so tar reads both alike)."""
    size = st.st_size
    if not tar_sees_sparse(st):
        copied = _copy_range(src, dst, 0, size)
        os.ftruncate(dst, size)
        return copied
    copied = pos = 0
    while pos < size:
        try:
            start = os.lseek(src, pos, os.SEEK_DATA)
            end = min(os.lseek(src, start, os.SEEK_HOLE), size)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole from here on
                break
            start, end = pos, size  # no SEEK_DATA here: copy it all
        if start >= size:
            break
        copied += _copy_range(src, dst, start, end)
        pos = end
    os.ftruncate(dst, size)
    return copied


def _copy_range(src: int, dst: int, start: int, end: int) -> int:
    offset = start
    try:
        while offset < end:
            n = os.copy_file_range(src, dst, min(end - offset, 1 << 30), offset, offset)
            if n == 0:  # the file shrank
                return offset - start
            offset += n
        return offset - start
    except OSError as exc:
        if exc.errno not in _NO_RANGE_COPY:
            raise
    while offset < end:  # copy_file_range does not work between these filesystems
        data = os.pread(src, min(COPY_CHUNK, end - offset), offset)
        if not data:
            break
        os.pwrite(dst, data, offset)
        offset += len(data)
    return offset - start


def _names(target) -> list[str]:
    try:
        return os.listxattr(target, follow_symlinks=False) if not isinstance(target, int) else os.listxattr(target)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return []
        raise


def _xattrs(target) -> dict[str, bytes]:
    found = {}
    for name in _names(target):
        try:
            found[name] = (os.getxattr(target, name) if isinstance(target, int)
                           else os.getxattr(target, name, follow_symlinks=False))
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES):
                raise
    return found


def _xattrs_of_path(path: Path) -> dict[str, bytes]:
    try:
        return _xattrs(str(path))
    except _GONE:
        return {}


def _set_xattrs(target, wanted: dict[str, bytes], rel: str) -> None:
    """The copy's xattrs become the source's, or the pass is refused: an xattr the mirror
    cannot keep (a namespace without the capability, a filesystem without xattrs) would
    be missing from the mirror's archive and present in a plain read's."""
    for name in set(_names(target)) - set(wanted):
        try:
            os.removexattr(target, name) if isinstance(target, int) else \
                os.removexattr(target, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise
    for name, value in wanted.items():
        try:
            os.setxattr(target, name, value) if isinstance(target, int) else \
                os.setxattr(target, name, value, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.ENOSPC, errno.E2BIG):
                raise MirrorRefused(f"the backup volume cannot keep xattr {name} of {rel!r} "
                                    f"({os.strerror(exc.errno)})") from None
            raise


def _set_owner_mode(target, st: os.stat_result) -> None:
    """Owner first (chown clears set-id bits and security.capability), then mode (set-id
    bits of files left out: the manifest carries them). Symlinks get their owner only."""
    if isinstance(target, int):
        os.fchown(target, st.st_uid, st.st_gid)
        os.fchmod(target, on_disk_mode(st.st_mode))
        return
    os.chown(target, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(target, on_disk_mode(st.st_mode))


def _set_times(target, st: os.stat_result, rel: str) -> None:
    """Times last (anything else moves the mtime), then checked: a filesystem that rounds
    or clamps them cannot hold an exact copy."""
    if isinstance(target, int):
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        kept = os.fstat(target).st_mtime_ns
    else:
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        kept = os.lstat(target).st_mtime_ns
    if kept != st.st_mtime_ns:
        raise MirrorRefused(f"the backup volume keeps mtime {st.st_mtime_ns} ns of {rel!r} as {kept} ns "
                            "(its range or precision is too small for an exact copy)")


def probe_times(folder: Path) -> None:
    """Refuse at once (before copying anything) when the backup filesystem cannot hold
    nanosecond mtimes past 2038 and before 1970."""
    path = folder / f"probe-{uuid.uuid4().hex}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        for ns in PROBE_TIMES_NS:
            os.utime(fd, ns=(ns, ns))
            kept = os.fstat(fd).st_mtime_ns
            if kept != ns:
                raise MirrorRefused(f"the backup volume keeps an mtime of {ns} ns as {kept} ns: its timestamps "
                                    "lack the range or precision of an exact copy")
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


# --- a whole pass -----------------------------------------------------------------------------

def load_manifest(mirror: Path) -> dict[str, Seen]:
    if (mirror / DIRTY).exists():  # a pass stopped half-way: the tree and the manifest disagree
        return {}
    try:
        return loads((mirror / MANIFEST).read_text())
    except FileNotFoundError:
        return {}


def write_durably(path: Path, text: str, mode: int = 0o600) -> None:
    """Written whole, on disk, and renamed into place (the folder's entry on disk too)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, text.encode())  # one write: the manifest is small next to the tree
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(folder: Path) -> None:
    """Every file and folder the pass wrote on the backup volume, on disk: one syncfs(2)
    of its filesystem (one fsync per copied file would cost a flush each); os.sync where
    the C library has no syncfs."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs of {folder}: {os.strerror(err)}")
    except AttributeError:
        os.sync()
    finally:
        os.close(fd)


def _make_vault(mirror: Path) -> None:
    mirror.mkdir(mode=0o700, exist_ok=True)
    vault = mirror / VAULT
    vault.mkdir(mode=0o700, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(vault, 0, 0)
    os.chmod(vault, 0o700)
    (mirror / TMP).mkdir(mode=0o700, exist_ok=True)
    for old in _BEFORE_THE_VAULT:
        if (mirror / old).is_dir() and not (mirror / old).is_symlink():
            shutil.rmtree(mirror / old)
            (mirror / MANIFEST).unlink(missing_ok=True)  # it described that tree


def empty_tmp(mirror: Path) -> int:
    """Remove what a pass killed mid-copy left in tmp/; returns the entries removed."""
    removed = 0
    with os.scandir(mirror / TMP) as it:
        for e in list(it):
            shutil.rmtree(e.path) if e.is_dir(follow_symlinks=False) else os.unlink(e.path)
            removed += 1
    return removed


def wait_for_go(mirror: Path, timeout: float, emit: Emit) -> None:
    emit({"event": "ready"})
    deadline = time.monotonic() + timeout
    path = mirror / GO
    while True:
        try:
            word = path.read_text().strip()
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise ArchiveError(f"no go from the sidecar within {timeout:g} s") from None
            time.sleep(GO_POLL)
            continue
        if word != "go":
            raise ArchiveError(f"the sidecar called the pass off ({word or 'empty go file'})")
        return


def run_mirror(job: MirrorJob, emit: Emit) -> MirrorOutcome | None:
    """One pass; None when the backup volume has no room for it (said on `emit`). Raises
    MirrorRefused when the mirror cannot hold an exact copy, ArchiveError, OSError."""
    return mirror_pass(job, emit)[0]


def mirror_pass(job: MirrorJob, emit: Emit,
                previous: dict[str, Seen] | None = None) -> tuple[MirrorOutcome | None, dict[str, Seen]]:
    """run_mirror, also returning the manifest it wrote ({} without a pass). `previous`:
    the manifest a finished pass of this worker returned, instead of reading it back from
    its file (a held worker's stopped pass: a tenth of a second for 12,000 entries, inside
    the stop window), and the backup filesystem's times not probed again."""
    _make_vault(job.mirror)
    carried = previous is not None
    if previous is None:
        previous = load_manifest(job.mirror)
    empty_tmp(job.mirror)
    if not carried:
        probe_times(job.mirror / TMP)
    if job.go:
        wait_for_go(job.mirror, job.wait_timeout, emit)
    started = time.monotonic()
    synced = sync_sources(job.root)  # before anything is looked at: T for the racy rule
    entries, children = walk(job.root, job.exclude)
    # The stopped pass trusts the copies pass 1 checked a moment ago (an lstat per entry
    # of the mirror would be inside the stop window).
    stopped = job.go or job.stopped
    mirror_pass = MirrorPass(job, previous, check_mirror=not stopped, synced=synced)
    volume_bytes = sum(_blocks(e.st) for e in entries if not stat.S_ISDIR(e.st.st_mode))
    if job.check_room:
        fs = os.statvfs(job.mirror)
        room = Room(mirror_pass.to_copy(entries), volume_bytes, fs.f_bavail * fs.f_frsize, fs.f_blocks * fs.f_frsize)
        if not room.enough:
            emit({"event": "no-room", **asdict(room), "needed": room.needed})
            return None, {}
    (job.mirror / DIRTY).touch()
    _fsync_folder(job.mirror)  # marked unfinished on disk before the tree changes
    beat = Heartbeat(job.progress_interval, lambda: mirror_pass.copied_bytes, emit)
    try:
        tree = job.mirror / TREE
        if not previous and not stopped and _lstat(tree) is None:  # a first copy: by tar
            tree.mkdir(mode=0o700)
            why = native_copy(job.root, tree, entries)
            if why is None:
                mirror_pass.adopt(entries)
            else:  # the Python pass finishes it and says what cannot be copied exactly
                emit({"event": "warning", "message": f"the first copy by tar did not go through: {why}"})
        manifest = mirror_pass.run(entries, children)
    finally:
        beat.stop()
    # The tree is whole: the container may run again while it reaches the disk and the
    # manifest is written (a worker killed before it is done leaves the pass marked
    # unfinished: the next one trusts nothing).
    emit({"event": "synced", "copied": mirror_pass.copied, "copied_bytes": mirror_pass.copied_bytes,
          "removed": mirror_pass.removed, "entries": len(entries), "seconds": round(time.monotonic() - started, 3)})
    tree_bytes = mirror_pass.record_mirror_side()
    sync_filesystem(job.mirror)
    write_durably(job.mirror / SPECIAL, json.dumps(special_of(manifest)))
    write_durably(job.mirror / MANIFEST, dumps(manifest))
    (job.mirror / DIRTY).unlink()
    _fsync_folder(job.mirror)
    mirror_bytes = tree_bytes + _folder_bytes(job.mirror)
    outcome = MirrorOutcome(len(manifest), mirror_pass.copied, mirror_pass.copied_bytes, mirror_pass.removed,
                            mirror_bytes, volume_bytes, time.monotonic() - started)
    # Sizes only, readable by the sidecar's own user (plan, metrics); the manifest stays root's.
    write_durably(job.mirror / INFO, json.dumps({"bytes": outcome.mirror_bytes, "entries": outcome.entries,
                                                  "updated": time.time()}), mode=0o644)
    return outcome, manifest


def _folder_bytes(mirror: Path) -> int:
    """The disk use of the mirror's own files (manifest, info, special, tmp/ and the folders)."""
    total = _blocks(os.lstat(mirror))
    for name in (MANIFEST, INFO, SPECIAL, ARCHIVED, FRAMES, VAULT, TMP):  # (the tree's folders are counted with the tree)
        st = _lstat(mirror / name)
        total += _blocks(st) if st is not None else 0
    return total
