"""The staging mirror's invariant, property-based (hypothesis): whatever an app does to its
volume while the first pass runs, the archive built from the mirror after the stopped pass
is the archive of a plain read of the stopped volume, member by member (names, types,
modes, owners, mtimes to the nanosecond, sizes, link targets, xattrs, sparse maps, bytes).

No Docker: the worker's passes run in this process (run_mirror, as `python -m sidecar.worker
mirror` runs them). The app's operations during the first pass are interleaved with its
steps, one before each folder listed, entry walked, entry copied and range of bytes
copied (hypothesis draws them, so a failure shrinks to a short story): writes,
truncations, renames, type changes, hard and symbolic links, xattrs, modes, same-size
rewrites with the mtime set back, UNIX sockets, and a writer through a shared mmap. Then
the app stops (its mapping and sockets stay), the stopped pass runs (with its go file, as
in a backup), and the two archives are compared.

The racy margin is shrunk from 2 s to 20 ms (every entry here is seconds old at most: with
the real margin every one would be re-read and nothing tested), so the change detection
(dev, inode, mode, size, mtime, ctime) decides. On disk the writeback window is 0 too: with
the mmap writer's pages written back after each write (msync), and without (then only each
pass's syncfs of the volume, the racy rule of mirrordiff, catches it). On tmpfs the window
is the real one and nothing is written back: the rule that tmpfs entries are always re-read
is what catches the mmap writer there.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.mirror import diff as mirrordiff
from sidecar.mirror import worker as worker_mirror
from sidecar.mirror.worker import GO, TREE, MirrorJob, run_mirror

from sidecar.core.model import Compression
from sidecar.mirror.worker import SPECIAL
from sidecar.worker import reuse

from .mirror_archives import differences, members

# How often the stopped pass left the state the last archive was recorded with (reuse.py
# copies that archive then): the implication is checked each time.
STATES = {"same": 0, "changed": 0}

NAMES = ["a", "b", "d", "d/x", "d/y", "d/e", "d/e/z", "s", "m"]
MAPPED = 16384  # bytes of the file the mmap writer keeps mapped
OPS = ["write", "append", "truncate", "rewrite-same", "rename", "unlink", "mkdir", "rmtree", "symlink", "link",
       "xattr", "chmod", "socket", "mmap", "sparse"]

op = st.tuples(st.sampled_from(OPS), st.sampled_from(NAMES), st.sampled_from(NAMES),
               st.binary(max_size=3000), st.integers(0, MAPPED - 1))


class App:
    """The app: applies operations to its volume, ignoring those the tree refuses (ENOENT,
    EISDIR, ...), and keeps its sockets and its shared mapping open."""

    def __init__(self, root: Path, flush_mmap: bool):
        self.root, self.flush_mmap = root, flush_mmap
        self.sockets: list[socket.socket] = []
        mapped = root / "mapped.db"
        mapped.write_bytes(b"\0" * MAPPED)
        self._file = open(mapped, "r+b")
        self.page = mmap.mmap(self._file.fileno(), MAPPED)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.page.close()
        self._file.close()

    def apply(self, ops) -> None:
        for kind, a, b, data, offset in ops:
            with contextlib.suppress(OSError, ValueError):
                self._one(kind, self.root / a, self.root / b, data, offset)

    def interleave(self, ops, monkeypatch) -> None:
        """Apply `ops` one at a time between the pass's steps (the rest after it)."""
        self.pending = list(ops)

        def step() -> None:
            if self.pending:
                self.apply([self.pending.pop(0)])

        listed, copy, folder, copy_range = (worker_mirror._listed, worker_mirror.MirrorPass._copy,
                                            worker_mirror.MirrorPass._folder, worker_mirror._copy_range)

        def listed_stepping(*args, **kwargs):
            step()
            for entry in listed(*args, **kwargs):
                step()
                yield entry

        def copy_stepping(self_, *args, **kwargs):
            step()
            return copy(self_, *args, **kwargs)

        def folder_stepping(self_, *args, **kwargs):
            step()
            return folder(self_, *args, **kwargs)

        def range_stepping(*args, **kwargs):
            step()
            return copy_range(*args, **kwargs)

        monkeypatch.setattr(worker_mirror, "_listed", listed_stepping)
        monkeypatch.setattr(worker_mirror.MirrorPass, "_copy", copy_stepping)
        monkeypatch.setattr(worker_mirror.MirrorPass, "_folder", folder_stepping)
        monkeypatch.setattr(worker_mirror, "_copy_range", range_stepping)

    def _one(self, kind, pa: Path, pb: Path, data: bytes, offset: int) -> None:
        if kind == "write":
            pa.parent.mkdir(parents=True, exist_ok=True)
            pa.write_bytes(data)
        elif kind == "append":
            with open(pa, "ab") as f:
                f.write(data or b"+")
        elif kind == "truncate":
            os.truncate(pa, offset % 4000)
        elif kind == "rewrite-same":  # same size, mtime put back: only the ctime moves
            st = os.lstat(pa)
            pa.write_bytes(bytes(reversed(pa.read_bytes())) if st.st_size else b"")
            os.utime(pa, ns=(st.st_atime_ns, st.st_mtime_ns))
        elif kind == "rename":
            os.rename(pa, pb)
        elif kind == "unlink":
            os.unlink(pa)
        elif kind == "mkdir":
            os.makedirs(pa, exist_ok=True)
        elif kind == "rmtree":
            shutil.rmtree(pa) if pa.is_dir() and not pa.is_symlink() else os.unlink(pa)
        elif kind == "symlink":
            os.symlink(os.path.relpath(pb, pa.parent), pa)
        elif kind == "link":
            os.link(pa, pb)
        elif kind == "xattr":
            os.setxattr(pa, "user.app", data[:64] or b"v", follow_symlinks=False)
        elif kind == "chmod":
            if not pa.is_symlink():  # (Linux has no lchmod)
                os.chmod(pa, 0o600 | (offset & 0o7077))
        elif kind == "socket":
            sock = socket.socket(socket.AF_UNIX)
            self.sockets.append(sock)
            sock.bind(os.path.relpath(pa))  # relative: a socket's path has 108 bytes at most
        elif kind == "mmap":
            chunk = (data or b"*")[: MAPPED - offset]
            self.page[offset:offset + len(chunk)] = chunk
            if self.flush_mmap:
                self.page.flush()
        elif kind == "sparse":
            with open(pa, "r+b" if pa.exists() else "wb") as f:
                f.seek(offset * 64)
                f.write(data[:10] or b"x")


def _stopped_pass(source: Path, mirror: Path) -> None:
    (mirror / GO).write_text("go\n")  # the sidecar's go: the container is down
    try:
        assert run_mirror(MirrorJob(source, mirror, go=True, check_room=False), [].append) is not None
    finally:
        (mirror / GO).unlink()


def _run(tmp: Path, before, during, after, flush_mmap: bool, mirror_root: Path, dirty_mmap: bool = True) -> None:
    source, mirror = tmp / "volume", mirror_root / "mirror"
    source.mkdir()
    here = os.getcwd()
    os.chdir(source)  # the app's sockets are bound by relative paths
    app = App(source, flush_mmap)
    try:
        app.apply(before)
        if not dirty_mmap:  # nothing racy in the last backup's manifest: the state can repeat
            _wait_until_older(_newest(source), 3 * mirrordiff.RACY_MARGIN_NS)
        assert run_mirror(MirrorJob(source, mirror, check_room=False), [].append) is not None  # the last backup
        # What the last backup's archive held, and the state reuse.py would record for it.
        archived = members(mirror / TREE, special=mirror / SPECIAL)
        archived_state = reuse.state_of(mirror, Compression.ZSTD, (), "")
        if dirty_mmap:
            app.apply([("mmap", "m", "m", b"dirty before pass 1", 0)])
            _wait_until_older(source / "mapped.db", 3 * mirrordiff.RACY_MARGIN_NS)
        with pytest.MonkeyPatch.context() as patch:
            app.interleave(during, patch)
            assert run_mirror(MirrorJob(source, mirror, check_room=False), [].append) is not None  # pass 1
        app.apply(app.pending + after)  # still running until the stop
        _stopped_pass(source, mirror)  # the app stopped; its mapping and sockets stay
        assert differences(mirror / TREE, source) == []
        if reuse.state_of(mirror, Compression.ZSTD, (), "") == archived_state:  # an archive copied, not made
            STATES["same"] += 1
            assert members(source) == archived, "the state said unchanged, the volume changed"
        else:
            STATES["changed"] += 1
    finally:
        app.close()
        os.chdir(here)


def _newest(root: Path) -> Path:
    """The entry of `root` (itself included) changed last (by ctime)."""
    paths = [root] + [Path(folder) / name for folder, dirs, files in os.walk(root) for name in dirs + files]
    return max(paths, key=lambda p: os.lstat(p).st_ctime_ns)


def _wait_until_older(path: Path, ns: int) -> None:
    deadline = time.monotonic() + 10
    while time.time_ns() - os.lstat(path).st_ctime_ns < ns:
        assert time.monotonic() < deadline
        time.sleep(0.005)


def _fresh(base: Path, name: str) -> Path:
    folder = base / f"{name}-{time.time_ns()}"
    folder.mkdir()
    return folder


@settings(max_examples=int(os.environ.get("MIRROR_PROPERTY_EXAMPLES", "30")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(before=st.lists(op, max_size=25), during=st.lists(op, min_size=1, max_size=60), after=st.lists(op, max_size=10))
def test_on_disk_the_mirror_archive_is_the_stopped_volume_archive(tmp_path, monkeypatch, before, during, after):
    monkeypatch.setattr(mirrordiff, "RACY_MARGIN_NS", 20_000_000)
    monkeypatch.setattr(worker_mirror, "writeback_window_ns", lambda expire, every: 0, raising=False)
    monkeypatch.setattr(worker_mirror, "sync_filesystem", lambda folder: None, raising=False)  # tested apart
    case = _fresh(tmp_path, "case")
    _run(case, before, during, after, flush_mmap=True, mirror_root=case)


@settings(max_examples=int(os.environ.get("MIRROR_PROPERTY_EXAMPLES_SYNCFS", "10")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(before=st.lists(op, max_size=15), during=st.lists(op, min_size=1, max_size=40), after=st.lists(op, max_size=10))
def test_on_disk_the_syncfs_rule_alone_catches_an_unflushed_mmap_writer(tmp_path, monkeypatch, before, during, after):
    """No writeback window and no msync: only each pass's syncfs of the volume (which
    write-protects the writer's pages, so its next write faults and stamps mtime) keeps
    a write through the mapping from being missed. The mirror on tmpfs: its own sync
    cleans nothing of the volume's."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    monkeypatch.setattr(mirrordiff, "RACY_MARGIN_NS", 20_000_000)
    monkeypatch.setattr(worker_mirror, "writeback_window_ns", lambda expire, every: 0, raising=False)
    mirror = _fresh(Path("/dev/shm"), f"mirror-property-syncfs-{os.getpid()}")
    try:
        _run(_fresh(tmp_path, "case"), before, during, after, flush_mmap=False, mirror_root=mirror)
    finally:
        shutil.rmtree(mirror, ignore_errors=True)


@settings(max_examples=int(os.environ.get("MIRROR_PROPERTY_EXAMPLES_TMPFS", "8")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(before=st.lists(op, max_size=15), during=st.lists(op, min_size=1, max_size=40), after=st.lists(op, max_size=10))
def test_on_tmpfs_an_unflushed_mmap_writer_is_caught(tmp_path, monkeypatch, before, during, after):
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    monkeypatch.setattr(mirrordiff, "RACY_MARGIN_NS", 20_000_000)
    monkeypatch.setattr(worker_mirror, "sync_filesystem", lambda folder: None, raising=False)
    case = _fresh(Path("/dev/shm"), f"mirror-property-{os.getpid()}")
    try:
        _run(case, before, during, after, flush_mmap=False, mirror_root=_fresh(tmp_path, "mirror"))
    finally:
        shutil.rmtree(case, ignore_errors=True)


@settings(max_examples=int(os.environ.get("MIRROR_PROPERTY_EXAMPLES_STATE", "25")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(before=st.lists(op, max_size=25), during=st.lists(op, max_size=4), after=st.lists(op, max_size=2))
def test_a_state_unchanged_since_the_last_archive_means_a_volume_unchanged_since(
        tmp_path, monkeypatch, before, during, after):
    """sidecar/worker/reuse.py copies the last archive when the stopped pass leaves the state
    (manifest, special.json, options) that archive was made from: few or no changes here, so
    both outcomes come up, and whenever the state is the same the stopped volume's archive must
    be the recorded one's, member by member (checked in _run)."""
    monkeypatch.setattr(mirrordiff, "RACY_MARGIN_NS", 20_000_000)
    monkeypatch.setattr(worker_mirror, "writeback_window_ns", lambda expire, every: 0, raising=False)
    monkeypatch.setattr(worker_mirror, "sync_filesystem", lambda folder: None, raising=False)
    case = _fresh(tmp_path, "case")
    _run(case, before, during, after, flush_mmap=True, mirror_root=case, dirty_mmap=False)
