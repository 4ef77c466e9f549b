"""A mirror pass: brings a volume's staging mirror on the backup volume up to date with the
volume (mounted read-only), copying only what changed since the mirror's last pass
(sidecar/mirrordiff.py decides what did, from the manifest kept beside the mirror).

A mirror's folder (0700, on the backup volume; the sidecar names it):
    tree/                 the copy: same names, types, contents, holes, modes, owners, mtimes,
                          symlinks, hard links, empty folders and xattrs as the volume
    manifest.json         how each source entry looked when it was brought across
    info.json             the mirror's size (for `plan` and the metrics)
    pass-unfinished       present while a pass changes the tree: its manifest is not trusted
    tmp/                  new files are written here, then renamed into the tree
    go                    written by the sidecar for a pass started with --go ("go"/"abort")

Brought across: contents (sparse files stay sparse), deletions, renames (as a delete and a
copy), type changes, modes, owners, mtimes, symlink targets, hard links (the mirror's
paths of one source inode share one inode), empty folders, xattrs where the filesystem has
them. Sockets are left out (tar leaves them out too). A folder's own metadata is set after
its contents (writing into a folder changes its mtime).

With --go the worker starts, loads the manifest, says `ready` and waits for the go file:
the sidecar starts it before stopping the container, so the container's start-up is not
inside the stop window.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

from ..errors import ArchiveError
from ..mirrordiff import Room, Seen, dumps, loads, unchanged
from .archive import _Heartbeat

TREE, MANIFEST, INFO, DIRTY, TMP, GO = "tree", "manifest.json", "info.json", "pass-unfinished", "tmp", "go"
GO_POLL = 0.002  # seconds between looks at the go file: its delay is inside the stop window
COPY_CHUNK = 1 << 20
_NO_RANGE_COPY = (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM)

Emit = Callable[[dict], None]


@dataclass(frozen=True)
class MirrorJob:
    root: Path  # the volume, read-only
    mirror: Path  # the mirror's folder on the backup volume (see the module docstring)
    check_room: bool = True  # refuse (no-room) when the backup volume cannot hold it and an archive
    go: bool = False  # wait for the go file before the pass
    wait_timeout: float = 3600.0
    progress_interval: float = 1.0


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


def walk(root: Path) -> tuple[list[_Entry], dict[str, list[str]]]:
    """Every entry under `root` (lstat; a folder before its entries, names in byte order)
    and each folder's entry names. A folder is stat'ed before it is listed, so an entry
    added after its listing changes the folder's ctime past the one recorded. Plain
    strings, not Path objects: the stopped pass walks the whole volume inside the window."""
    base = str(root)
    entries = [_Entry(".", os.lstat(base), time.time_ns())]
    children: dict[str, list[str]] = {}
    stack: list[Iterator[_Entry]] = [_listed(base, ".", children)]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        entries.append(entry)
        if stat.S_ISDIR(entry.st.st_mode):
            stack.append(_listed(base, entry.rel, children))
    return entries, children


def _listed(base: str, folder: str, children: dict[str, list[str]]) -> Iterator[_Entry]:
    prefix = "" if folder == "." else folder + "/"
    try:
        with os.scandir(base + "/" + prefix if prefix else base) as it:
            found = sorted(it, key=lambda e: os.fsencode(e.name))
    except FileNotFoundError:  # removed while walked (a hot pass): the next pass sees it
        found = []
    children[folder] = [e.name for e in found]
    for e in found:
        now = time.time_ns()
        try:
            st = e.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        yield _Entry(prefix + e.name, st, now)


def _blocks(st: os.stat_result) -> int:
    return st.st_blocks * 512


class MirrorPass:
    """One pass over walked entries; `run` returns the new manifest."""

    def __init__(self, job: MirrorJob, previous: dict[str, Seen]):
        self.root, self.tree, self.tmp = job.root, job.mirror / TREE, job.mirror / TMP
        self.previous = previous
        self.new: dict[str, Seen] = {}
        self.links: dict[tuple[int, int], str] = {}  # source (dev, ino) -> first path of it this pass
        self.touched: set[str] = set()  # mirror folders whose entries this pass changed
        self.changed: set[str] = set()  # folders whose source changed
        self.fresh: set[str] = set()  # folders made new in the mirror: nothing in them is trusted
        self.copied = self.copied_bytes = self.removed = 0

    def _m(self, rel: str) -> Path:
        return self.tree if rel == "." else self.tree / rel

    @staticmethod
    def _parent(rel: str) -> str:
        return rel.rpartition("/")[0] or "."

    def to_copy(self, entries: list[_Entry]) -> int:
        """Bytes of the files this pass would copy (for the room check)."""
        return sum(_blocks(e.st) for e in entries if stat.S_ISREG(e.st.st_mode)
                   and not unchanged(self.previous.get(e.rel), Seen.of(e.st, e.looked_at_ns)))

    def run(self, entries: list[_Entry], children: dict[str, list[str]]) -> dict[str, Seen]:
        folders = []
        for entry in entries:
            st = entry.st
            seen = Seen.of(st, entry.looked_at_ns)
            if stat.S_ISDIR(st.st_mode):
                self._folder(entry, seen, children.get(entry.rel, []))
                folders.append(entry)
            elif st.st_nlink > 1 and (st.st_dev, st.st_ino) in self.links:
                self._hard_link(entry, seen)
            elif stat.S_ISSOCK(st.st_mode):
                continue
            elif unchanged(self.previous.get(entry.rel), seen) and not (
                    self.fresh and self._parent(entry.rel) in self.fresh):
                self.new[entry.rel] = seen
                if st.st_nlink > 1:
                    self._remember_link(entry)
            else:
                self._copy(entry)
        for entry in reversed(folders):  # contents first: writing into a folder moves its mtime
            if entry.rel in self.changed or entry.rel in self.touched:
                self._folder_metadata(entry)
        return self.new

    # --- folders ----------------------------------------------------------------------
    def _folder(self, entry: _Entry, seen: Seen, names: list[str]) -> None:
        m = self._m(entry.rel)
        mst = _lstat(m)
        changed = not unchanged(self.previous.get(entry.rel), seen)
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
        except FileNotFoundError:
            return
        for name in set(_names(m)) - set(wanted):
            _try_xattr(os.removexattr, m, name)
        for name, value in wanted.items():
            _try_xattr(os.setxattr, m, name, value)
        _set_owner_mode_time(m, st)

    # --- files, symlinks, devices -----------------------------------------------------------
    def _copy(self, entry: _Entry) -> None:
        st = entry.st
        tmp = self.tmp / uuid.uuid4().hex
        if stat.S_ISREG(st.st_mode):
            got = self._copy_file(entry, tmp)
            if got is None:  # vanished or no longer a file: the next pass sees what it became
                self._remove(self._m(entry.rel))
                self.touched.add(self._parent(entry.rel))
                return
            st, seen = got
        else:
            seen = Seen.of(st, entry.looked_at_ns)
            try:
                if stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(self.root / entry.rel), tmp)
                elif stat.S_ISFIFO(st.st_mode):
                    os.mkfifo(tmp, 0o600)
                else:  # character or block device
                    os.mknod(tmp, st.st_mode, st.st_rdev)
            except FileNotFoundError:
                return
            _set_owner_mode_time(tmp, st)
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
        except (FileNotFoundError, OSError) as exc:
            if isinstance(exc, FileNotFoundError) or exc.errno in (errno.ELOOP, errno.ENXIO):
                return None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            seen = Seen.of(st, now)
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                self.copied_bytes += _copy_data(fd, out, st.st_size)
                for name, value in _xattrs(fd).items():
                    _try_xattr(os.setxattr, out, name, value)
                _set_owner_mode_time(out, st)
            finally:
                os.close(out)
        finally:
            os.close(fd)
        return st, seen

    def _hard_link(self, entry: _Entry, seen: Seen) -> None:
        """Another path of an inode already brought across: the same inode in the mirror."""
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


def _lstat(path: Path) -> os.stat_result | None:
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


def _copy_data(src: int, dst: int, size: int) -> int:
    """The data regions of `src` up to `size` into `dst` at the same offsets (holes stay holes)."""
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


def _try_xattr(call, *args) -> None:
    """xattrs are kept where both filesystems have them; a namespace we may not write
    (security.*, trusted.* without the capability) is left out, as tar would fail it too."""
    try:
        call(*args)
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.ENODATA):
            raise


def _set_owner_mode_time(target, st: os.stat_result) -> None:
    """Owner first (chown clears set-id bits), then mode, then times (last: anything else
    moves the mtime). Symlinks get owner and times only."""
    link = stat.S_ISLNK(st.st_mode)
    if isinstance(target, int):
        os.fchown(target, st.st_uid, st.st_gid)
        os.fchmod(target, stat.S_IMODE(st.st_mode))
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        return
    os.chown(target, st.st_uid, st.st_gid, follow_symlinks=False)
    if not link:
        os.chmod(target, stat.S_IMODE(st.st_mode))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


# --- a whole pass -----------------------------------------------------------------------------

def load_manifest(mirror: Path) -> dict[str, Seen]:
    if (mirror / DIRTY).exists():  # a pass stopped half-way: the tree and the manifest disagree
        return {}
    try:
        return loads((mirror / MANIFEST).read_text())
    except FileNotFoundError:
        return {}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
    """One pass; None when the backup volume has no room for it (said on `emit`)."""
    for folder in (job.mirror, job.mirror / TMP):
        folder.mkdir(mode=0o700, exist_ok=True)
    previous = load_manifest(job.mirror)
    if job.go:
        wait_for_go(job.mirror, job.wait_timeout, emit)
    started = time.monotonic()
    entries, children = walk(job.root)
    mirror_pass = MirrorPass(job, previous)
    volume_bytes = sum(_blocks(e.st) for e in entries if not stat.S_ISDIR(e.st.st_mode))
    if job.check_room:
        fs = os.statvfs(job.mirror)
        room = Room(mirror_pass.to_copy(entries), volume_bytes, fs.f_bavail * fs.f_frsize, fs.f_blocks * fs.f_frsize)
        if not room.enough:
            emit({"event": "no-room", **asdict(room), "needed": room.needed})
            return None
    (job.mirror / DIRTY).touch()
    beat = _Heartbeat(job.progress_interval, lambda: mirror_pass.copied_bytes, emit)
    try:
        manifest = mirror_pass.run(entries, children)
    finally:
        beat.stop()
    # The tree is whole: the container may run again while the manifest is written (a worker
    # killed before it is done leaves the pass marked unfinished: the next one trusts nothing).
    emit({"event": "synced", "copied": mirror_pass.copied, "copied_bytes": mirror_pass.copied_bytes,
          "removed": mirror_pass.removed, "entries": len(entries), "seconds": round(time.monotonic() - started, 3)})
    _write_atomic(job.mirror / MANIFEST, dumps(manifest))
    (job.mirror / DIRTY).unlink()
    outcome = MirrorOutcome(len(manifest), mirror_pass.copied, mirror_pass.copied_bytes, mirror_pass.removed,
                            _tree_bytes(entries, manifest), volume_bytes, time.monotonic() - started)
    _write_atomic(job.mirror / INFO, json.dumps({"bytes": outcome.mirror_bytes, "entries": outcome.entries,
                                                 "updated": time.time()}))
    return outcome


def _tree_bytes(entries: list[_Entry], manifest: dict[str, Seen]) -> int:
    seen: set[tuple[int, int]] = set()
    total = 0
    for e in entries:
        key = (e.st.st_dev, e.st.st_ino)
        if e.rel in manifest and key not in seen:
            seen.add(key)
            total += _blocks(e.st)
    return total
