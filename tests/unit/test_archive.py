"""archive.py without Docker: writing, checking and filtering tar streams on tmp_path."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import random
import shutil
import stat
import subprocess
import tarfile
import threading
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidecar.tarball import archive
from sidecar.tarball.archive import (
    ArchiveWriter,
    ProgressLog,
    compression_for,
    filter_tar,
    is_excluded,
    iter_tar,
    read_checksum,
    sha256_file,
)
from sidecar.tarball.extract import verify_file as check_archive  # the one check of an archive (issue 8)
from sidecar.core.errors import ArchiveError, BackupAborted, ChecksumMismatch, UnsafeArchive
from sidecar.core.model import Compression

RNG = random.Random(20260329)
BIG = RNG.randbytes(300_000)  # incompressible: zstd stores it as raw literals
TEXT = b"a line of text, compressible\n" * 4000
LONG = "./" + "long-folder-name/" * 12 + "file.txt"


@dataclass(frozen=True)
class Entry:
    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes | None = None
    linkname: str = ""
    mode: int = 0o644


TREE = [
    Entry("./", tarfile.DIRTYPE, mode=0o755),
    Entry("./dir", tarfile.DIRTYPE, mode=0o750),
    Entry("./dir/text.txt", data=TEXT),
    Entry("./dir/sub", tarfile.DIRTYPE, mode=0o700),
    Entry("./dir/sub/big.bin", data=BIG, mode=0o600),
    Entry("./dir/ünïcödé ✓ файл.txt", data="grüße\n".encode()),
    Entry("./empty", data=b""),
    Entry("./link-to-text", tarfile.SYMTYPE, linkname="dir/text.txt", mode=0o777),
    Entry("./dir/sub/up", tarfile.SYMTYPE, linkname="../text.txt", mode=0o777),
    Entry("./hard-to-text", tarfile.LNKTYPE, linkname="./dir/text.txt"),
    Entry(LONG, data=b"deep"),
]


def make_tar(entries=TREE, fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape") as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type, info.linkname, info.mode = e.type, e.linkname, e.mode
            info.mtime, info.uid, info.gid, info.uname, info.gname = 1_774_000_000, 1000, 1001, "app", "grp"
            if e.data is not None:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


RAW = make_tar()


def chunks(data: bytes, size: int = 7777):
    return [data[i:i + size] for i in range(0, len(data), size)]


def write(path: Path, raw: bytes = RAW, compression: Compression = Compression.ZSTD, **kwargs):
    mode = kwargs.pop("file_mode", 0o600)
    with ArchiveWriter(path, compression, mode) as writer:
        writer.write_stream(chunks(raw), **kwargs)
        return writer.finish()


def members(raw: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:", encoding="utf-8", errors="surrogateescape") as tar:
        return tar.getmembers()


def described(raw: bytes) -> list[tuple]:
    """Every member of a tar with its metadata and contents."""
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:", encoding="utf-8", errors="surrogateescape") as tar:
        return [(m.name, m.type, m.mode, m.uid, m.gid, m.uname, m.gname, int(m.mtime), m.linkname, m.size,
                 tar.extractfile(m).read() if m.isreg() else None) for m in tar]


@pytest.fixture
def umask():
    old = os.umask(0o022)
    os.umask(old)
    yield lambda value: os.umask(value)
    os.umask(old)


# --- writing: round trip ------------------------------------------------------------

@pytest.mark.parametrize("compression", list(Compression), ids=str)
def test_round_trip(tmp_path, compression):
    path = tmp_path / "daily" / f"app_data_2026-03-29_daily{compression.extension}"
    result = write(path, compression=compression)

    assert result.path == path
    assert result.raw_bytes == len(RAW)
    assert result.size == path.stat().st_size
    assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".sha256"]
    if compression is Compression.NONE:
        assert path.read_bytes() == RAW
    else:
        assert result.size < len(RAW)  # the text compresses

    check = check_archive(path)
    assert (check.sha256, check.members, check.tar_bytes) == (result.sha256, len(TREE), len(RAW))
    assert check.root is not None and check.root.mode == 0o755

    restored = b"".join(iter_tar(path, block=1000))
    assert restored == RAW

    dest = tmp_path / "restore"
    dest.mkdir()
    with tarfile.open(fileobj=io.BytesIO(restored), mode="r:") as tar:
        tar.extractall(dest, filter="fully_trusted")
    for e in TREE:
        target = dest / e.name
        if e.type == tarfile.REGTYPE:
            assert target.read_bytes() == e.data, e.name
            assert stat.S_IMODE(target.lstat().st_mode) == e.mode
        elif e.type == tarfile.DIRTYPE:
            assert target.is_dir() and not target.is_symlink()
        elif e.type == tarfile.SYMTYPE:
            assert os.readlink(target) == e.linkname
        elif e.type == tarfile.LNKTYPE:
            assert target.stat().st_ino == (dest / e.linkname).stat().st_ino
    assert (dest / "link-to-text").read_bytes() == TEXT
    assert (dest / "dir/sub/up").read_bytes() == TEXT


@pytest.mark.parametrize("compression", list(Compression), ids=str)
def test_empty_stream_makes_a_damaged_archive(tmp_path, compression):
    path = tmp_path / f"a_b_2026-01-01_daily{compression.extension}"
    write(path, raw=b"", compression=compression)
    with pytest.raises(ArchiveError):
        check_archive(path)


@pytest.mark.parametrize("compression", list(Compression), ids=str)
def test_tar_without_members_is_refused(tmp_path, compression):
    path = tmp_path / f"a_b_2026-01-01_daily{compression.extension}"
    write(path, raw=make_tar([]), compression=compression)
    with pytest.raises(ArchiveError, match="holds no members"):
        check_archive(path)


def test_progress_callback_sees_running_totals(tmp_path):
    seen = []
    with ArchiveWriter(tmp_path / "a.tar.zst", Compression.ZSTD) as writer:
        raw = writer.write_stream(chunks(RAW, 10_000), on_progress=seen.append)
        writer.finish()
    assert raw == len(RAW)
    assert seen == [min(len(RAW), 10_000 * (i + 1)) for i in range(len(seen))]
    assert seen[-1] == len(RAW)


@pytest.mark.parametrize("umask_value, file_mode", [
    (0o077, 0o600),
    (0o000, 0o600),
    (0o022, 0o640),
    (0o077, 0o644),
    (0o000, 0o400),
    (0o027, 0o666),
])
def test_file_mode_does_not_depend_on_the_umask(tmp_path, umask, umask_value, file_mode):
    umask(umask_value)
    path = tmp_path / "a_b_2026-01-01_daily.tar.gz"
    write(path, compression=Compression.GZIP, file_mode=file_mode)
    assert stat.S_IMODE(path.stat().st_mode) == file_mode
    assert stat.S_IMODE(path.with_name(path.name + ".sha256").stat().st_mode) == file_mode


def test_default_file_mode_is_0600(tmp_path, umask):
    umask(0)
    path = tmp_path / "a_b_2026-01-01_daily.tar"
    with ArchiveWriter(path, Compression.NONE) as writer:
        assert stat.S_IMODE(writer.partial_path.stat().st_mode) == 0o600  # private while written, too
        writer.write_stream([RAW])
        writer.finish()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


class Boom(Exception):
    pass


def failing_source():
    yield RAW[:20_000]
    raise Boom("the engine went away")


@pytest.mark.parametrize("compression", list(Compression), ids=str)
@pytest.mark.parametrize("when", ["before-writing", "while-reading", "after-writing"])
def test_failure_inside_the_with_leaves_no_file(tmp_path, compression, when):
    path = tmp_path / "daily" / f"a_b_2026-01-01_daily{compression.extension}"
    with pytest.raises(Boom):
        with ArchiveWriter(path, compression) as writer:
            assert writer.partial_path.exists()
            if when == "before-writing":
                raise Boom()
            if when == "while-reading":
                writer.write_stream(failing_source())
            writer.write_stream(chunks(RAW))
            raise Boom()
    assert list(path.parent.iterdir()) == []


def test_leaving_without_finish_leaves_no_file(tmp_path):
    path = tmp_path / "a_b_2026-01-01_daily.tar"
    with ArchiveWriter(path, Compression.NONE) as writer:
        writer.write_stream([RAW])
    assert list(tmp_path.iterdir()) == []


def test_a_second_writer_for_the_same_name_is_refused(tmp_path):
    path = tmp_path / "a_b_2026-01-01_daily.tar"
    with ArchiveWriter(path, Compression.NONE):
        with pytest.raises(FileExistsError):
            with ArchiveWriter(path, Compression.NONE):
                pass


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs coreutils sha256sum")
@pytest.mark.parametrize("compression", list(Compression), ids=str)
def test_checksum_file_is_in_sha256sum_format(tmp_path, compression):
    path = tmp_path / "daily" / f"my_app_data_2026-01-01T030000_daily{compression.extension}"
    result = write(path, compression=compression)
    checksum = path.with_name(path.name + ".sha256")
    assert checksum.read_text() == f"{result.sha256}  {path.name}\n"
    ok = subprocess.run(["sha256sum", "-c", checksum.name], cwd=path.parent, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout == f"{path.name}: OK\n"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(data)
    bad = subprocess.run(["sha256sum", "-c", checksum.name], cwd=path.parent, capture_output=True, text=True)
    assert bad.returncode != 0


# --- checking ---------------------------------------------------------------------------

def flip(path: Path, pos: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x40
    path.write_bytes(data)


def big_file_offset(path: Path) -> int:
    """A byte inside BIG as stored: RAW's offset for .tar, the middle of the file for zstd."""
    if path.name.endswith(".tar"):
        return RAW.index(BIG[:64]) + 1000
    return path.stat().st_size // 2


@pytest.mark.parametrize("compression, where", [
    (Compression.NONE, "file-data"),
    (Compression.NONE, "end-padding"),
    (Compression.ZSTD, "file-data"),
    (Compression.NONE, "first-header"),
    (Compression.ZSTD, "frame-header"),
    (Compression.GZIP, "file-data"),
    (Compression.GZIP, "trailer"),
])
def test_flipped_byte_is_a_checksum_mismatch(tmp_path, compression, where):
    path = tmp_path / f"a_b_2026-01-01_daily{compression.extension}"
    result = write(path, compression=compression)
    pos = {
        "file-data": big_file_offset(path),
        "end-padding": len(RAW) - 10,
        "first-header": 10,
        "frame-header": 5,
        "trailer": result.size - 3,
    }[where]
    flip(path, pos)
    with pytest.raises(ChecksumMismatch) as info:
        check_archive(path)
    assert result.sha256 in str(info.value)  # names what the checksum file says


@pytest.mark.parametrize("compression", list(Compression), ids=str)
@pytest.mark.parametrize("pos", [5, 600, -3])
def test_any_flipped_byte_is_refused(tmp_path, compression, pos):
    path = tmp_path / f"a_b_2026-01-01_daily{compression.extension}"
    write(path, compression=compression)
    flip(path, pos % path.stat().st_size)
    with pytest.raises(ArchiveError):
        check_archive(path)


@pytest.mark.parametrize("compression", list(Compression), ids=str)
def test_truncated_archive_is_refused(tmp_path, compression):
    path = tmp_path / f"a_b_2026-01-01_daily{compression.extension}"
    write(path, compression=compression)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ArchiveError):
        check_archive(path)


def test_missing_checksum_file(tmp_path):
    path = tmp_path / "a_b_2026-01-01_daily.tar.zst"
    result = write(path)
    path.with_name(path.name + ".sha256").unlink()
    with pytest.raises(ArchiveError) as info:
        check_archive(path)
    assert type(info.value) is ArchiveError
    assert "a_b_2026-01-01_daily.tar.zst.sha256" in str(info.value)
    assert "unverified" in str(info.value)
    assert check_archive(path, require_checksum=False).sha256 == result.sha256


@pytest.mark.parametrize("content, error", [
    ("", ArchiveError),
    ("not a checksum\n", ArchiveError),
    ("0" * 64 + "  a_b_2026-01-01_daily.tar.zst\n", ChecksumMismatch),
    ("f" * 63 + "  a_b_2026-01-01_daily.tar.zst\n", ArchiveError),
])
def test_bad_checksum_file(tmp_path, content, error):
    path = tmp_path / "a_b_2026-01-01_daily.tar.zst"
    write(path)
    path.with_name(path.name + ".sha256").write_text(content)
    with pytest.raises(error):
        check_archive(path)


def test_checksum_in_capitals_is_accepted(tmp_path):
    path = tmp_path / "a_b_2026-01-01_daily.tar.zst"
    result = write(path)
    path.with_name(path.name + ".sha256").write_text(f"{result.sha256.upper()}  {path.name}\n")
    assert check_archive(path).sha256 == result.sha256


@pytest.mark.parametrize("bad", [
    Entry("../escape", data=b"x"),
    Entry("/etc/cron.d/evil", data=b"x"),
    Entry("./link", tarfile.SYMTYPE, linkname="/etc"),
    Entry("./dev", tarfile.CHRTYPE),
])
def test_unsafe_member_is_refused_by_check_archive(tmp_path, bad):
    path = tmp_path / "a_b_2026-01-01_daily.tar.gz"
    write(path, raw=make_tar([*TREE, bad]), compression=Compression.GZIP)
    with pytest.raises(UnsafeArchive):
        check_archive(path)


@pytest.mark.parametrize("name, expected", [
    ("a.tar.zst", Compression.ZSTD),
    ("a.tar.gz", Compression.GZIP),
    ("a.tar", Compression.NONE),
    ("a.tar.zst.partial", Compression.ZSTD),
    ("a_b_2026-01-01_daily.tar.gz.partial", Compression.GZIP),
])
def test_compression_for(name, expected):
    assert compression_for(Path(name)) is expected
    assert expected.extension in name


@pytest.mark.parametrize("name", ["a.zip", "a.tar.zst.sha256", "a.tgz", "a"])
def test_compression_for_refuses_other_names(tmp_path, name):
    with pytest.raises(ArchiveError, match="not an archive name"):
        compression_for(Path(name))
    (tmp_path / name).write_bytes(RAW)
    with pytest.raises(ArchiveError):
        check_archive(tmp_path / name, require_checksum=False)


# --- excludes ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, patterns, excluded", [
    # base name globs, at any depth
    ("app.log", ("*.log",), True),
    ("./logs/app.log", ("*.log",), True),
    ("a/b/c/app.log", ("*.log",), True),
    ("app.log.1", ("*.log",), False),
    ("app.log", ("*.LOG",), False),
    ("cache", ("cache",), True),
    ("./tmp/x.tmp", ("x.tmp",), True),
    # path globs, relative to the volume
    ("a/b/c.tmp", ("a/b/*.tmp",), True),
    ("./a/b/c.tmp", ("a/b/*.tmp",), True),
    ("x/b/c.tmp", ("a/b/*.tmp",), False),
    ("a/b", ("a/b",), True),
    ("a/bc", ("a/b",), False),
    # a folder excludes everything below it
    ("cache/x", ("cache",), True),
    ("./cache/x/y/z", ("cache",), True),
    ("data/cache/x", ("cache",), True),
    ("a/b/deep/x", ("a/b",), True),
    ("caches/x", ("cache",), False),
    ("cachex", ("cache",), False),
    ("my-cache", ("cache",), False),
    ("cache/x", ("/cache/",), True),
    ("var/tmp/x", ("var/tmp/",), True),
    ("node_modules/pkg/index.js", ("node_modules",), True),
    # several patterns
    ("b.bak", ("*.log", "*.bak"), True),
    ("b.txt", ("*.log", "*.bak"), False),
    # the root is never excluded
    (".", ("*",), False),
    ("./", ("*",), False),
    ("", ("*",), False),
    ("./", (".",), False),
    ("x", (), False),
])
def test_is_excluded(name, patterns, excluded):
    assert is_excluded(name, patterns) is excluded


FILTER_TREE = [
    Entry("./", tarfile.DIRTYPE, mode=0o755),
    Entry("./cache", tarfile.DIRTYPE),
    Entry("./cache/big", data=BIG[:5000]),
    Entry("./cache/sub", tarfile.DIRTYPE),
    Entry("./cache/sub/x", data=b"x"),
    Entry("./keep.txt", data=TEXT[:3000], mode=0o640),
    Entry("./debug.log", data=b"log"),
    Entry("./dir", tarfile.DIRTYPE, mode=0o700),
    Entry("./dir/debug.log", data=b"log2"),
    Entry("./dir/app.conf", data=b"conf"),
    Entry("./hard-to-cache", tarfile.LNKTYPE, linkname="./cache/big"),
    Entry("./hard-to-log", tarfile.LNKTYPE, linkname="./dir/debug.log"),
    Entry("./hard-to-keep", tarfile.LNKTYPE, linkname="./keep.txt"),
    Entry("./link-to-cache", tarfile.SYMTYPE, linkname="cache/big", mode=0o777),
    Entry("./ünï ✓.txt", data="ü".encode()),
    Entry("./caf\udce9-latin1.txt", data=b"not utf-8 name"),
    Entry(LONG, data=b"deep"),
    Entry("./big.bin", data=BIG),
]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["gnu", "pax"])
@pytest.mark.parametrize("patterns, dropped", [
    (("cache",), {"./cache", "./cache/big", "./cache/sub", "./cache/sub/x", "./hard-to-cache"}),
    (("*.log",), {"./debug.log", "./dir/debug.log", "./hard-to-log"}),
    (("dir", "big.bin"), {"./dir", "./dir/debug.log", "./dir/app.conf", "./hard-to-log", "./big.bin"}),
    (("nothing-matches",), set()),
], ids=["folder", "glob", "several", "none"])
def test_filter_tar(fmt, patterns, dropped):
    raw = make_tar(FILTER_TREE, fmt)
    out = io.BytesIO()
    filter_tar(chunks(raw, 999), out, patterns)
    original = described(raw)
    kept = described(out.getvalue())
    names = {e.name.rstrip("/") if e.name != "./" else "." for e in FILTER_TREE}
    assert {d[0] for d in original} == names
    assert kept == [d for d in original if d[0] not in dropped]


def test_write_stream_applies_excludes(tmp_path):
    path = tmp_path / "a_b_2026-01-01_daily.tar.zst"
    raw = make_tar(FILTER_TREE)
    with ArchiveWriter(path, Compression.ZSTD) as writer:
        assert writer.write_stream(chunks(raw), exclude=("cache", "*.log")) == len(raw)
        writer.finish()
    check = check_archive(path)
    names = [m.name for m in members(b"".join(iter_tar(path)))]
    assert check.members == len(names)
    assert [n for n in names if n.startswith("./cache") or n.endswith(".log")] == []
    assert "./hard-to-cache" not in names and "./hard-to-log" not in names
    assert "./keep.txt" in names and "./hard-to-keep" in names


# --- progress --------------------------------------------------------------------------

class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(archive, "time", types.SimpleNamespace(monotonic=c))
    return c


def test_progress_reports_no_more_often_than_its_interval(clock):
    reports = []
    progress = ProgressLog(lambda done, rate: reports.append((done, rate)), interval=0.125)
    for step, done in [(0.0, 10), (0.0625, 20), (0.0625, 30), (0.0625, 40), (0.03125, 50), (0.125, 60),
                       (1.0, 70), (0.0, 80), (0.1, 90)]:
        clock.now += step
        progress(done)
    # At 0.125 s (30 bytes), 0.34375 s (60), 1.34375 s (70); the rest came too soon after.
    assert reports == [(30, 30 / 0.125), (60, 60 / 0.34375), (70, 70 / 1.34375)]


def test_progress_with_zero_interval_reports_every_call(clock):
    reports = []
    progress = ProgressLog(lambda done, rate: reports.append(done), interval=0)
    for done in (1, 2, 3):
        progress(done)
    assert reports == [1, 2, 3]


def test_progress_raises_backup_aborted_when_cancelled(clock):
    cancel = threading.Event()
    reports = []
    progress = ProgressLog(lambda done, rate: reports.append(done), interval=0.125, cancel=cancel, target="db")
    clock.now += 1
    progress(1)
    cancel.set()
    clock.now += 1
    with pytest.raises(BackupAborted) as err:
        progress(2)
    assert (err.value.target, err.value.phase) == ("db", "read")
    assert "shutting down" in str(err.value)
    assert reports == [1]


def test_cancel_during_write_stream_leaves_no_file(tmp_path, clock):
    cancel = threading.Event()
    progress = ProgressLog(lambda done, rate: None, interval=0.125, cancel=cancel, target="db")
    pulled = []

    def source():
        for i, chunk in enumerate(chunks(RAW, 4096)):
            if i == 3:
                cancel.set()
            pulled.append(i)
            yield chunk

    path = tmp_path / "a_b_2026-01-01_daily.tar.zst"
    with pytest.raises(BackupAborted):
        with ArchiveWriter(path, Compression.ZSTD) as writer:
            writer.write_stream(source(), on_progress=progress)
            writer.finish()
    assert pulled == [0, 1, 2, 3]  # stopped at once, not after reading everything
    assert list(tmp_path.iterdir()) == []


# --- model --------------------------------------------------------------------------------

@pytest.mark.parametrize("compression, extension", [
    (Compression.ZSTD, ".tar.zst"), (Compression.GZIP, ".tar.gz"), (Compression.NONE, ".tar"),
])
def test_compression_extensions(compression, extension):
    assert compression.extension == extension
    assert str(compression) == compression.value


def test_a_full_disk_while_writing_the_checksum_leaves_no_archive_without_it(tmp_path, monkeypatch):
    """The checksum is written before the archive is renamed into place: ENOSPC then leaves
    nothing that looks finished, and no .sha256.partial either."""
    path = tmp_path / "daily" / "app_data_2026-01-01_daily.tar"
    real_fdopen = os.fdopen

    def fdopen(fd, mode="r", *args, **kwargs):
        f = real_fdopen(fd, mode, *args, **kwargs)
        if "w" in mode and "b" not in mode:  # the checksum file (the archive is written in binary)
            def write(_text):
                raise OSError(errno.ENOSPC, "No space left on device")
            f.write = write
        return f

    with pytest.raises(OSError, match="No space left"):
        with ArchiveWriter(path, Compression.NONE) as writer:
            writer.write_stream(chunks(RAW))
            monkeypatch.setattr(os, "fdopen", fdopen)
            writer.finish()
    monkeypatch.undo()
    assert sorted(p.name for p in path.parent.iterdir()) == []


def test_the_checksum_exists_before_the_archive_does(tmp_path, monkeypatch):
    path = tmp_path / "app_data_2026-01-01_daily.tar"
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == path:
            seen.append(read_checksum(path))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with ArchiveWriter(path, Compression.NONE) as writer:
        writer.write_stream(chunks(RAW))
        result = writer.finish()
    assert seen == [result.sha256] and read_checksum(path) == sha256_file(path)
