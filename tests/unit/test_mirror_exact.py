"""The staging mirror is exact or refuses (issue 20): each defect a review found, run as a
mirror pass in this process on folders of this host, and judged by the archive the mirror
gives next to the archive of the volume itself (tests/unit/mirror_archives.py)."""

from __future__ import annotations

import contextlib
import errno
import io
import mmap
import os
import shutil
import socket
import stat
import struct
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from sidecar.mirror import diff as mirrordiff
from sidecar.core.errors import ArchiveError
from sidecar.mirror import worker as worker_mirror
from sidecar.core.model import Compression
from sidecar.worker.archive import ArchiveJob, run_archive, tar_command
from sidecar.mirror.worker import DIRTY, INFO, TMP, TREE, MirrorJob, run_mirror
from sidecar.worker.special import HeaderPatcher, load_special

from .mirror_archives import differences

ROOT = os.geteuid() == 0


def _pass(source: Path, mirror: Path, **job):
    lines: list[dict] = []
    outcome = run_mirror(MirrorJob(source, mirror, **job), lines.append)
    assert outcome is not None, lines
    return outcome


def _same(source: Path, mirror: Path, exclude: tuple[str, ...] = ()) -> None:
    assert differences(mirror / TREE, source, exclude) == []


@pytest.fixture
def trusting(monkeypatch):
    """No entry is racy by age: only what the rule under test makes racy is copied again."""
    monkeypatch.setattr(mirrordiff, "RACY_MARGIN_NS", -10**18)


@pytest.fixture
def python_copier(monkeypatch):
    """Every entry by the Python copier, whose system calls these tests fake: the first copy by
    tar is checked against the volume (type, owner, mode, mtime, size, xattrs) and whatever
    differs is copied again by that copier, so its refusals hold for the tar copy too."""
    monkeypatch.setattr(worker_mirror, "native_copy", lambda *args: "not in this test")


@pytest.fixture
def tmpfs_path(tmp_path):
    """A folder on tmpfs (/dev/shm), removed afterwards."""
    if not os.path.isdir("/dev/shm") or "tmpfs" not in _fstype("/dev/shm"):
        pytest.skip("no tmpfs at /dev/shm")
    folder = Path("/dev/shm") / f"mirror-test-{os.getpid()}-{time.time_ns()}"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _fstype(path: str) -> str:
    return subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True).stdout.strip()


# --- 1. a writer through a shared mmap page that was already dirty ------------------------------

def _wait_until_older(path: Path, ns: int) -> None:
    """Poll (deadline 30 s) until the file's last change is `ns` old."""
    deadline = time.monotonic() + 30
    while time.time_ns() - max(os.lstat(path).st_mtime_ns, os.lstat(path).st_ctime_ns) < ns:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_write_through_a_dirty_mmap_page_on_tmpfs_after_the_first_pass_reaches_the_mirror(tmp_path, tmpfs_path):
    """The page is dirtied (faulted: mtime stamped), left to age past the coarse-clock margin,
    copied by pass 1, then written again through the mapping: on tmpfs no syncfs cleans a
    page, so no fault and no time moves. The stopped pass must read it again (tmpfs is
    always racy). On disk the syncfs rule makes that write fault (the test above)."""
    source = tmpfs_path / "volume"
    source.mkdir()
    mirror = tmp_path / "mirror"
    path = source / "db.lmdb"
    path.write_bytes(b"\0" * 4096)
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 4096) as page:
        page[:5] = b"first"  # faults: mtime and ctime stamped now; the page stays dirty
        _wait_until_older(path, mirrordiff.RACY_MARGIN_NS + 500_000_000)
        _pass(source, mirror)
        before = os.lstat(path)
        page[:6] = b"second"  # no fault: the page is still dirty and writable
        after = os.lstat(path)
        assert (after.st_mtime_ns, after.st_ctime_ns) == (before.st_mtime_ns, before.st_ctime_ns)
        _pass(source, mirror, go=False)  # the stopped pass: the writer holds still
        assert (mirror / TREE / "db.lmdb").read_bytes()[:6] == b"second"
        _same(source, mirror)


@pytest.mark.parametrize("expire, every, window", [(3000, 500, 70_000_000_000), (100, 100, 4_000_000_000),
                                                   (3000, 0, None)])
def test_the_writeback_window_comes_from_the_kernel_intervals(expire, every, window):
    assert mirrordiff.writeback_window_ns(expire, every) == window


def test_an_entry_changed_within_the_writeback_window_is_racy():
    class St:
        st_dev, st_ino, st_mode, st_size = 1, 2, 0o100644, 3
        st_mtime_ns = st_ctime_ns = 100 * 10**9

    margin = 40 * 10**9
    looked = St.st_mtime_ns + mirrordiff.RACY_MARGIN_NS + margin
    assert mirrordiff.Seen.of(St, looked - 1, margin).racy
    assert not mirrordiff.Seen.of(St, looked + 1, margin).racy
    assert mirrordiff.Seen.of(St, looked + 10**12, margin, always=True).racy  # tmpfs


def test_after_syncfs_an_entry_changed_before_the_pass_is_not_racy_and_one_changed_after_is():
    """The syncfs rule (mirrordiff): judged against T, the time noted before the pass's
    syncfs, not against the writeback window. The window rule calls both racy."""
    class St:
        st_dev, st_ino, st_mode, st_size = 1, 2, 0o100644, 3
        st_mtime_ns = st_ctime_ns = 100 * 10**9

    window = 70 * 10**9
    synced_at = St.st_mtime_ns + 10 * 10**9  # written 10 s before the pass
    assert mirrordiff.Seen.of(St, synced_at + 1, window).racy  # the window rule alone
    assert not mirrordiff.Seen.of(St, synced_at + 1, window, synced_at_ns=synced_at).racy
    assert mirrordiff.Seen.of(St, synced_at + 1, window, synced_at_ns=St.st_mtime_ns + 1).racy  # after T
    assert mirrordiff.Seen.of(St, synced_at + 1, window, synced_at_ns=St.st_mtime_ns + mirrordiff.RACY_MARGIN_NS).racy
    assert mirrordiff.Seen.of(St, synced_at + 1, window, always=True, synced_at_ns=synced_at).racy  # tmpfs


def _manifest(mirror: Path) -> dict:
    return mirrordiff.loads((mirror / worker_mirror.MANIFEST).read_text())


def test_a_file_written_shortly_before_the_first_pass_is_trusted_by_the_next(tmp_path):
    """Data written seconds before a backup (an app at work, the bench) is read once: the
    pass's syncfs proves that nothing changed it after the pass read it, where the window
    rule re-read everything written in the last 70 s, the stopped pass included."""
    source, mirror = tmp_path / "volume", tmp_path / "mirror"
    source.mkdir()
    (source / "data.bin").write_bytes(os.urandom(1 << 16))
    _wait_until_older(source / "data.bin", mirrordiff.RACY_MARGIN_NS + 200_000_000)
    _pass(source, mirror)
    assert not _manifest(mirror)["data.bin"].racy
    again = _pass(source, mirror, go=False)
    assert again.copied_bytes == 0


def test_a_write_through_an_mmap_page_dirty_before_the_syncfs_moves_the_mtime(tmp_path, tmpfs_path, monkeypatch):
    """No writeback window at all (the kernel would not clean the page for 30 s): the first
    pass's syncfs cleans and write-protects it, so the next write through the mapping
    faults and stamps mtime; the stopped pass copies it again. The mirror on another
    filesystem: the pass's sync of its own must not be what cleans the page."""
    monkeypatch.setattr(worker_mirror, "writeback_window_ns", lambda expire, every: 0)
    source, mirror = tmp_path / "volume", tmpfs_path / "mirror"
    source.mkdir()
    path = source / "db.lmdb"
    path.write_bytes(b"\0" * 4096)
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 4096) as page:
        page[:5] = b"first"  # faults: mtime stamped; the page stays dirty and writable
        _wait_until_older(path, mirrordiff.RACY_MARGIN_NS + 200_000_000)
        _pass(source, mirror)
        assert not _manifest(mirror)["db.lmdb"].racy
        before = os.lstat(path)
        page[:6] = b"second"
        assert os.lstat(path).st_mtime_ns > before.st_mtime_ns  # the cleaned page faulted
        _pass(source, mirror, go=False)
        assert (mirror / TREE / "db.lmdb").read_bytes()[:6] == b"second"
        _same(source, mirror)


def test_syncfs_covers_the_volume_and_a_failing_syncfs_leaves_the_window_rule(tmp_path, monkeypatch):
    before = time.time_ns()
    synced = worker_mirror.sync_sources(tmp_path)
    assert set(synced) == {os.stat(tmp_path).st_dev} and before <= synced[os.stat(tmp_path).st_dev] <= time.time_ns()
    monkeypatch.setattr(worker_mirror, "_syncfs", lambda fd: errno.EIO)
    assert worker_mirror.sync_sources(tmp_path) == {}


# --- 2. durable before finished ------------------------------------------------------------------

def test_the_tree_and_the_manifest_reach_the_disk_before_the_pass_is_marked_finished(tmp_path, monkeypatch):
    source, mirror = tmp_path / "volume", tmp_path / "mirror"
    source.mkdir()
    (source / "new.bin").write_bytes(os.urandom(1 << 18))
    events: list[str] = []
    real_sync, real_fsync, real_unlink = worker_mirror.sync_filesystem, os.fsync, Path.unlink

    def sync(folder):
        events.append("syncfs")
        real_sync(folder)

    def fsync(fd):
        events.append("fsync")
        real_fsync(fd)

    def unlink(self, *args, **kwargs):
        if self.name == DIRTY:
            events.append("finished")
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(worker_mirror, "sync_filesystem", sync)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Path, "unlink", unlink)
    _pass(source, mirror)
    done = events.index("finished")
    assert "syncfs" in events[:done]  # the tree's data and folders
    assert events[events.index("syncfs") + 1:done].count("fsync") >= 2  # the manifest, then its folder
    assert events[done + 1:].count("fsync") >= 1  # the mark's removal too


# --- 3. sockets -----------------------------------------------------------------------------------

def _bind_socket(path: Path) -> socket.socket:
    """A UNIX socket at `path` (bound from its folder: a socket path has 108 bytes at most)."""
    sock = socket.socket(socket.AF_UNIX)
    here = os.getcwd()
    os.chdir(path.parent)
    try:
        sock.bind(path.name)
    finally:
        os.chdir(here)
    return sock


def test_a_file_or_folder_replaced_by_a_socket_leaves_the_mirror(tmp_path, trusting):
    source, mirror = tmp_path / "volume", tmp_path / "mirror"
    (source / "run").mkdir(parents=True)
    (source / "app.sock").write_text("a file first")
    (source / "run" / "x").write_text("in a folder")
    _pass(source, mirror)
    (source / "app.sock").unlink()
    shutil.rmtree(source / "run")
    with contextlib.closing(_bind_socket(source / "app.sock")), contextlib.closing(_bind_socket(source / "run")):
        _pass(source, mirror)
        assert not os.path.lexists(mirror / TREE / "app.sock") and not os.path.lexists(mirror / TREE / "run")
        _same(source, mirror)


# --- 4. file capabilities --------------------------------------------------------------------------

CAP_NET_BIND_SERVICE = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)  # VFS_CAP_REVISION_2, effective


@pytest.mark.skipif(not ROOT, reason="setting security.capability needs root")
def test_security_capability_is_kept(tmp_path):
    source, mirror = tmp_path / "volume", tmp_path / "mirror"
    source.mkdir()
    binary = source / "ping"
    binary.write_bytes(b"\x7fELF not really")
    os.chown(binary, 1000, 1000)
    os.chmod(binary, 0o755)
    os.setxattr(binary, "security.capability", CAP_NET_BIND_SERVICE)
    _pass(source, mirror)
    assert os.getxattr(mirror / TREE / "ping", "security.capability") == CAP_NET_BIND_SERVICE
    _same(source, mirror)


def test_an_xattr_the_mirror_cannot_write_refuses_the_pass_with_its_name(tmp_path, monkeypatch, python_copier):
    source, mirror = tmp_path / "volume", tmp_path / "mirror"
    source.mkdir()
    (source / "f").write_text("x")
    monkeypatch.setattr(worker_mirror, "_xattrs", lambda target: {"security.capability": CAP_NET_BIND_SERVICE})
    real = os.setxattr

    def denied(target, name, *args, **kwargs):
        if name == "security.capability":
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return real(target, name, *args, **kwargs)

    monkeypatch.setattr(os, "setxattr", denied)
    with pytest.raises(worker_mirror.MirrorRefused, match="security.capability of 'f'"):
        run_mirror(MirrorJob(source, mirror), [].append)


# --- 5. timestamps the backup filesystem cannot hold ------------------------------------------------

@pytest.fixture
def coarse_fs(tmp_path):
    """An ext4 with 128-byte inodes (whole seconds, up to 2038), loop-mounted."""
    if not ROOT or shutil.which("mkfs.ext4") is None:
        pytest.skip("needs root and mkfs.ext4")
    image, mount = tmp_path / "ext4.img", tmp_path / "coarse"
    with open(image, "wb") as f:
        f.truncate(32 << 20)
    mount.mkdir()
    made = subprocess.run(["mkfs.ext4", "-q", "-F", "-I", "128", str(image)], capture_output=True, text=True)
    mounted = made.returncode == 0 and subprocess.run(["mount", "-o", "loop", str(image), str(mount)],
                                                      capture_output=True).returncode == 0
    if not mounted:
        pytest.skip(f"cannot loop-mount an ext4 here: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_backup_filesystem_that_rounds_or_clamps_times_refuses_the_pass(tmp_path, coarse_fs):
    source = tmp_path / "volume"
    source.mkdir()
    (source / "f").write_text("x")
    os.utime(source / "f", ns=(0, 4_102_444_800_123_456_789))  # 2100, to the nanosecond
    lines: list[dict] = []
    with pytest.raises(worker_mirror.MirrorRefused, match="range or precision"):
        run_mirror(MirrorJob(source, coarse_fs / "mirror"), lines.append)
    assert not os.path.lexists(coarse_fs / "mirror" / TREE / "f")  # refused before copying


def test_a_copy_whose_time_did_not_hold_refuses_the_pass(tmp_path, monkeypatch, python_copier):
    source, mirror = tmp_path / "volume", tmp_path / "mirror"
    source.mkdir()
    (source / "f").write_text("x")
    monkeypatch.setattr(worker_mirror, "probe_times", lambda folder: None)
    real = os.utime

    def seconds_only(target, *args, ns=None, **kwargs):
        if ns is not None:
            ns = tuple(v // 10**9 * 10**9 for v in ns)
        return real(target, *args, ns=ns, **kwargs) if ns is not None else real(target, *args, **kwargs)

    monkeypatch.setattr(os, "utime", seconds_only)
    with pytest.raises(worker_mirror.MirrorRefused, match="keeps mtime"):
        run_mirror(MirrorJob(source, mirror), [].append)


# --- 6. the mirror side, re-checked ------------------------------------------------------------------

def test_a_mirror_file_changed_or_removed_outside_the_sidecar_is_repaired(tmp_path, trusting):
    source, mirror = tmp_path / "volume", tmp_path / "mirror"
    (source / "sub").mkdir(parents=True)
    (source / "a.txt").write_text("alpha")
    (source / "sub" / "b.txt").write_text("bravo")
    (source / "sub" / "c.txt").write_text("charlie")
    _pass(source, mirror)
    edited = mirror / TREE / "a.txt"
    st = os.lstat(edited)
    edited.write_text("ALPHA")  # same size, mtime put back: only the ctime tells
    os.utime(edited, ns=(st.st_atime_ns, st.st_mtime_ns))
    (mirror / TREE / "sub" / "b.txt").unlink()
    (mirror / TREE / "sub" / "intruder").write_text("not in the volume")
    again = _pass(source, mirror)
    assert again.copied >= 2
    assert (mirror / TREE / "a.txt").read_text() == "alpha"
    _same(source, mirror)


# --- 7. fallocated without holes ------------------------------------------------------------------------

def test_a_file_fallocated_without_holes_is_archived_as_data_as_from_the_volume(tmp_path):
    source, mirror = tmp_path / "volume", tmp_path / "mirror"
    source.mkdir()
    with open(source / "prealloc.db", "wb") as f:
        os.posix_fallocate(f.fileno(), 0, 1 << 20)
        f.write(b"header")
    assert os.lstat(source / "prealloc.db").st_blocks * 512 >= 1 << 20  # no holes: tar reads it as data
    _pass(source, mirror)
    _same(source, mirror)


# --- 8. a folder that becomes a file while pass 1 walks -------------------------------------------------

def test_a_folder_replaced_by_a_file_during_the_first_pass_is_no_failure(tmp_path, monkeypatch, trusting):
    source, mirror = tmp_path / "volume", tmp_path / "mirror"
    (source / "d" / "e").mkdir(parents=True)
    (source / "d" / "e" / "f").write_text("deep")
    (source / "d" / "g").write_text("file")
    os.symlink("g", source / "d" / "link")
    real_walk = worker_mirror.walk

    def walk_then_replace(root, *args):
        found = real_walk(root, *args)
        shutil.rmtree(source / "d")
        (source / "d").write_text("now a file")
        return found

    monkeypatch.setattr(worker_mirror, "walk", walk_then_replace)
    _pass(source, mirror)  # the running container's changes: no failure, the next pass catches up
    monkeypatch.setattr(worker_mirror, "walk", real_walk)
    _pass(source, mirror)
    _same(source, mirror)


def test_the_walk_survives_a_folder_that_became_a_file_before_it_was_listed(tmp_path):
    source = tmp_path / "volume"
    (source / "d").mkdir(parents=True)
    entries = list(worker_mirror._listed(str(source), ".", {}))
    shutil.rmtree(source / "d")
    (source / "d").write_text("now a file")
    children: dict = {}
    assert list(worker_mirror._listed(str(source), entries[0].rel, children)) == [] and children == {"d": []}


# --- housekeeping -----------------------------------------------------------------------------------------

def test_tmp_is_emptied_and_every_byte_of_the_mirror_is_counted(tmp_path):
    source, mirror = tmp_path / "volume", tmp_path / "mirror"
    source.mkdir()
    (source / "a").write_bytes(os.urandom(100_000))
    _pass(source, mirror)
    (mirror / TMP / "partial-of-a-killed-pass").write_bytes(os.urandom(300_000))
    outcome = _pass(source, mirror)
    assert list((mirror / TMP).iterdir()) == []
    on_disk, inodes = 0, set()
    for folder, dirs, files in os.walk(mirror):
        for name in [*dirs, *files, *([""] if folder == str(mirror) else [])]:
            st = os.lstat(os.path.join(folder, name))
            if st.st_ino not in inodes:
                inodes.add(st.st_ino)
                on_disk += st.st_blocks * 512
    info_size = os.lstat(mirror / INFO).st_blocks * 512  # written after it counted
    assert on_disk - info_size <= outcome.mirror_bytes <= on_disk


def test_excluded_paths_are_not_mirrored_and_the_archives_agree(tmp_path, trusting):
    source, mirror = tmp_path / "volume", tmp_path / "mirror"
    (source / "cache" / "deep").mkdir(parents=True)
    (source / "keep").mkdir()
    (source / "cache" / "deep" / "big").write_bytes(os.urandom(200_000))
    (source / "cache" / "first").write_text("linked")
    os.link(source / "cache" / "first", source / "keep" / "second")  # first path excluded: left out too
    (source / "keep" / "x.log").write_text("log")
    (source / "keep" / "data").write_text("data")
    exclude = ("cache", "*.log")
    _pass(source, mirror, exclude=exclude)
    assert sorted(p.name for p in (mirror / TREE).rglob("*")) == ["data", "keep"]
    _same(source, mirror, exclude)
    (source / "keep" / "data.log").write_text("now excluded")
    _pass(source, mirror, exclude=exclude)
    _same(source, mirror, exclude)


@pytest.mark.skipif(not ROOT, reason="ownership needs root")
def test_the_copy_is_in_a_folder_only_root_may_enter(tmp_path):
    source, mirror = tmp_path / "volume", tmp_path / "mirror"
    source.mkdir()
    os.chmod(source, 0o755)
    (source / "suid").write_text("#!/bin/sh")
    os.chmod(source / "suid", 0o4755)
    _pass(source, mirror)
    vault = os.lstat(mirror / TREE).st_mode, os.lstat((mirror / TREE).parent)
    assert stat.S_IMODE(vault[1].st_mode) == 0o700 and vault[1].st_uid == 0
    assert stat.S_IMODE(os.lstat(mirror / TREE / "suid").st_mode) == 0o755  # set-id bits as data only
    _same(source, mirror)


# --- issue 19: set-id bits and devices as data, never on disk in the mirror --------------------

def _specials_on_disk(tree: Path) -> list[str]:
    found = []
    for folder, dirs, files in os.walk(tree):
        for name in dirs + files:
            st = os.lstat(os.path.join(folder, name))
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or \
                    (not stat.S_ISDIR(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID)):
                found.append(os.path.relpath(os.path.join(folder, name), tree))
    return found


def _special_tree(source: Path) -> None:
    source.mkdir()
    (source / "su").write_bytes(b"#!/bin/sh\nid\n")
    os.chmod(source / "su", 0o4755)
    os.link(source / "su", source / "su-again")  # a hard link: its member is a link member
    (source / "sg").write_bytes(b"group tool")
    os.chown(source / "sg", 1000, 50)
    os.chmod(source / "sg", 0o2711)
    long_name = source / ("d" * 120) / ("n" * 120)  # a PAX path record names the member
    long_name.parent.mkdir()
    long_name.write_bytes(b"x" * 4096)
    os.chmod(long_name, 0o6750)
    with open(source / "sparse-su", "wb") as f:  # a sparse member (GNU.sparse.name)
        f.truncate(8 << 20)
        f.seek(4 << 20)
        f.write(b"data")
    os.chmod(source / "sparse-su", 0o4700)
    os.mknod(source / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(source / "disk", 0o640 | stat.S_IFBLK, os.makedev(8, 17))
    os.chown(source / "disk", 0, 6)
    os.mkdir(source / "shared")
    os.chmod(source / "shared", 0o2775)  # a set-gid folder: kept as it is (no privilege)


@pytest.mark.skipif(not ROOT, reason="device nodes and set-id owners need root")
def test_set_id_files_and_devices_are_data_in_the_mirror_and_exact_in_its_archive(tmp_path, trusting):
    source, mirror = tmp_path / "volume", tmp_path / "mirror"
    _special_tree(source)
    _pass(source, mirror)
    assert _specials_on_disk(mirror / TREE) == []
    assert stat.S_IMODE(os.lstat(mirror / TREE / "shared").st_mode) == 0o2775
    _same(source, mirror)
    # set-id bits gained and lost, a device renumbered, a device become a file and back
    os.chmod(source / "su", 0o755)
    (source / "new").write_bytes(b"new tool")
    os.chmod(source / "new", 0o4711)
    os.unlink(source / "null")
    os.mknod(source / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    os.unlink(source / "disk")
    (source / "disk").write_bytes(b"now a file")
    _pass(source, mirror)
    assert _specials_on_disk(mirror / TREE) == []
    _same(source, mirror)


@pytest.mark.skipif(not ROOT, reason="device nodes and set-id owners need root")
@pytest.mark.parametrize("compression", [Compression.ZSTD, Compression.NONE])
def test_the_archive_worker_writes_the_special_members_from_the_manifest(tmp_path, compression):
    """The worker's own pipeline (tar, the header filter in a thread, the compressor)."""
    source, mirror = tmp_path / "volume", tmp_path / "mirror"
    _special_tree(source)
    _pass(source, mirror)
    output = tmp_path / "out.tar"
    output.touch()
    run_archive(ArchiveJob(mirror / TREE, output, compression, special=mirror / worker_mirror.SPECIAL),
                lambda record: None)
    raw = output.read_bytes()
    if compression is Compression.ZSTD:
        raw = subprocess.run(["zstd", "-d", "-c"], input=raw, capture_output=True, check=True).stdout
    plain = subprocess.run([a for a in tar_command(source, False) if not a.startswith("--checkpoint")],
                           capture_output=True, check=True).stdout
    assert _rows(raw) == _rows(plain)


def _rows(raw: bytes) -> list[tuple]:
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        return [(m.name, m.type, m.mode, m.uid, m.gid, m.devmajor, m.devminor, m.linkname, m.size,
                 tar.extractfile(m).read() if m.isreg() else b"") for m in tar]


@pytest.mark.skipif(not ROOT, reason="device nodes and set-id owners need root")
@pytest.mark.parametrize("chunk", [1, 7, 511, 513, 10240])
def test_the_header_filter_gives_the_same_stream_in_any_chunking(tmp_path, chunk):
    source, mirror = tmp_path / "volume", tmp_path / "mirror"
    _special_tree(source)
    _pass(source, mirror)
    raw = subprocess.run([a for a in tar_command(mirror / TREE, False) if not a.startswith("--checkpoint")],
                         capture_output=True, check=True).stdout
    special = load_special(mirror / worker_mirror.SPECIAL)
    whole = HeaderPatcher(special)
    expected = b"".join(whole.feed(raw))
    assert whole.patched == 7  # su, su-again, sg, the long name, sparse-su, null, disk
    patcher = HeaderPatcher(special)
    got = b"".join(b"".join(patcher.feed(raw[i:i + chunk])) for i in range(0, len(raw), chunk))
    assert got == expected and len(got) == len(raw)


def test_a_refused_pass_is_said_as_such_by_the_worker(tmp_path, monkeypatch, capsys):
    from sidecar.worker.cli import main

    source = tmp_path / "volume"
    source.mkdir()

    def refuse(folder):
        raise worker_mirror.MirrorRefused("the backup volume keeps an mtime of 1 ns as 0 ns")

    monkeypatch.setattr(worker_mirror, "probe_times", refuse)
    assert main(["mirror", "--root", str(source), "--mirror", str(tmp_path / "m")]) == 1
    assert '"event": "refused"' in capsys.readouterr().out
    assert issubclass(worker_mirror.MirrorRefused, ArchiveError)


def test_the_sizes_stay_readable_by_the_sidecars_user_and_the_manifest_does_not(tmp_path):
    """plan and the metrics (the sidecar, uid 10001 in its image) read info.json; the
    manifest (every path of the volume) is for workers only."""
    source, mirror = tmp_path / "volume", tmp_path / "mirror"
    source.mkdir()
    (source / "a").write_text("a")
    _pass(source, mirror)
    assert stat.S_IMODE(os.lstat(mirror / INFO).st_mode) == 0o644
    assert stat.S_IMODE(os.lstat(mirror / worker_mirror.MANIFEST).st_mode) == 0o600
