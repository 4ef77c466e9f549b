"""The checked extractor: one tar parser that checks each member and writes it in the same
pass, so what is checked is exactly what is written.

Owns reading an archive from one open file descriptor (decrypting, decompressing, hashing),
parsing every tar header itself (ustar, GNU long names and sparse files, PAX `x` headers),
the member policy, and the two sinks that write accepted members: a directory (openat-style,
never following a symlink; the one writer of every restore, in a worker container) and a
canonical tar stream re-serialised from the accepted members (only for `docker load` of an
image export: files, folders and symlinks; and `files_tar`, regular files and folders only,
for a preset's snapshot tar handed to the engine's `PUT /archive`). `python -m
sidecar.tarball.extract` runs it locally.

Why our own parser: Python's `tarfile` and the engine's Go reader disagree on malformed input
(a NUL-started checksum ends the archive for one and not the other, global PAX headers, PAX
before GNU long names, archives cut mid-header), and `tarfile` keeps every member in memory.

Checks are made against the tree the members make (`_Names`), so "verify ok" means "write
ok" (tests/unit/test_restore_property.py compares with GNU tar):
- setuid and setgid bits are stripped (a directory keeps its setgid); so is the
  `security.capability` xattr, and xattrs of anything but files and folders. Counted and
  logged; the archive is still restored.
- refused, with UnsafeArchive: absolute paths, `..`, NUL in names, a path through a symlink
  or a file, a folder replaced (or a file made a folder), a symlink replaced, symlinks
  resolving outside the target (against every symlink of the archive, as at the end) or with
  an empty target, hard links to anything but an earlier regular file, device nodes, global
  PAX headers, conflicting or repeated extended headers.
- refused, with ArchiveError: malformed headers, numbers over 19 digits, sizes over MAX_SIZE,
  sparse maps out of order, overlapping, outside the size or not ending at it, names over
  PATH_MAX, extended headers over MAX_EXTENDED bytes, an archive cut mid-header or mid-member,
  a lone zero block, anything but zero bytes after the end marker; any error the parser did
  not foresee (never an uncaught exception).
Work is linear in the archive's size: every name is kept as a keyed 64-bit hash (about 100
bytes a member), symlinks with their text (at most MAX_LINK_TEXT bytes), and data moves in
READ_SIZE blocks, or from the decompressor's pipe to its file with os.splice. Every symlink
is written last, once the whole archive was accepted: nothing can be moved under one.
`Summary.expanded` is the room the written tree takes, known before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import enum
import errno
import fcntl
import fnmatch
import gzip
import hashlib
import json
import logging
import os
import queue
import re
import shutil
import stat
import subprocess
import sys
import threading
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Generator, Iterable, Iterator, Sequence

import zstandard

from . import crypto
from .archive import MAX_SYMLINK_HOPS, compression_for, is_encrypted, read_checksum
from sidecar.core.errors import ArchiveError, ChecksumMismatch, EncryptionError, SidecarError, UnsafeArchive
from sidecar.core.keys import DecryptionKeys, load_identities
from sidecar.core.members import PART
from sidecar.core.model import Compression
from sidecar.core.naming import CHECKSUM_SUFFIX
from .streams import IterReader

logger = logging.getLogger(__name__)

BLOCK = 512
READ_SIZE = 1 << 20
MAX_EXTENDED = 1 << 20  # bytes of one PAX `x` header, GNU long name or sparse map
_PRIVILEGE_BITS = stat.S_ISUID | stat.S_ISGID
_CAPABILITY_XATTR = "security.capability"
_ZERO_BLOCK = bytes(BLOCK)
_MAX_ID = (1 << 32) - 2  # uid_t; -1 means "unchanged" to chown
_MAX_MTIME_NS = 1 << 62
MAX_SIZE = 1 << 50  # bytes of one file (1 PiB: past any volume here); sizes, offsets and lengths above are refused
_MAX_DIGITS = 19  # of a decimal number in a PAX record or sparse map (below 2**63; Python's int limit is 4300)
MAX_PATH = 4096  # bytes of a member's path (PATH_MAX); each component at most NAME_MAX
NAME_MAX = 255
MAX_SYMLINK_TARGET = 4095  # what symlink(2) accepts
MAX_LINK_TEXT = 64 << 20  # bytes of symlink names and targets kept until the end of the archive
MAX_XATTR_VALUE = 65536  # XATTR_SIZE_MAX
DISK_BLOCK = 4096  # what one file or folder takes at least, for the room a restore needs

EXIT_OK = 0
EXIT_REFUSED = 65  # EX_DATAERR: the archive is damaged or unsafe
EXIT_FAILED = 1


class Kind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    FIFO = "fifo"


@dataclass(frozen=True)
class Member:
    """One accepted member. `name` is normalised and relative ("" is the root itself);
    `linkname` is normalised for hard links and the raw target for symlinks."""

    name: str
    kind: Kind
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    mtime_ns: int
    size: int  # data bytes stored in the archive
    realsize: int  # the file's length (larger than size for a sparse file)
    linkname: str = ""
    xattrs: tuple[tuple[str, bytes], ...] = ()
    sparse: tuple[tuple[int, int], ...] | None = None  # (offset, length) of each data region


@dataclass(frozen=True)
class Summary:
    members: int
    tar_bytes: int  # bytes of tar read (decompressed, decrypted)
    sha256: str  # of the archive file as stored
    stripped: int  # members whose setuid/setgid bits or capabilities were removed
    root: Member | None  # the root entry ("."), applied to the target itself
    expanded: int = 0  # bytes the written tree takes (Policy.expanded): compared with the target's free space


# --- the archive's bytes ------------------------------------------------------------------

class _FdReader:
    """Reads a file descriptor from offset 0 with pread (its own offset: never reopened,
    never sharing a position), hashing what it reads."""

    def __init__(self, fd: int):
        self._fd = fd
        self._offset = 0
        self.sha = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = os.pread(self._fd, READ_SIZE if size < 0 else size, self._offset)
        self._offset += len(data)
        self.sha.update(data)
        return data

    def drain(self) -> None:
        while self.read(READ_SIZE):
            pass


@dataclass(frozen=True)
class ArchiveFile:
    """An archive opened once: its descriptor, what its name says and its expected hash."""

    fd: int
    path: Path  # where it was opened (for a worker, which opens it again and checks it all itself)
    name: str
    compression: Compression
    encrypted: bool
    expected_sha256: str | None


@contextlib.contextmanager
def open_archive(path: Path, require_checksum: bool = True) -> Iterator[ArchiveFile]:
    """The one open of an archive file (and the read of its checksum file beside it)."""
    compression = compression_for(path)
    expected = read_checksum(path)
    if expected is None and require_checksum:
        raise ArchiveError(f"{path}: no {path.name}{CHECKSUM_SUFFIX} beside it; refusing to restore an "
                           "unverified archive")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise ArchiveError(f"{path}: cannot open ({exc.strerror})") from exc
    try:
        yield ArchiveFile(fd, path, path.name, compression, is_encrypted(path), expected)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _plain(archive: ArchiveFile, raw: _FdReader, keys: DecryptionKeys | None) -> Iterator[BinaryIO]:
    if not archive.encrypted:
        yield raw  # type: ignore[misc]
        return
    if keys is None or (not keys.identities and keys.passphrase is None):
        raise EncryptionError(f"{archive.name} is encrypted: set BACKUP_AGE_IDENTITY_FILE or BACKUP_AGE_PASSPHRASE "
                              "to read it")
    with crypto.decrypting(raw, list(keys.identities) or None, keys.passphrase) as plain:  # type: ignore[arg-type]
        yield plain


def _decompressed(plain: BinaryIO, compression: Compression) -> BinaryIO:
    if compression is Compression.ZSTD:
        return zstandard.ZstdDecompressor().stream_reader(plain, closefd=False, read_across_frames=True)
    if compression is Compression.GZIP:
        return gzip.GzipFile(fileobj=plain, mode="rb")  # type: ignore[return-value]
    return plain


# Bytes each pipe to and from the decompressor holds (the most an unprivileged process may
# ask, /proc/sys/fs/pipe-max-size): the decompressor runs ahead while a member's file is made,
# with far fewer wake-ups than in the default 64 KiB (restore speed, issue 19).
PIPE_SIZE = 1 << 20
_DECOMPRESSORS = {Compression.ZSTD: ("zstd", "-d", "-c", "-q"), Compression.GZIP: ("gzip", "-d", "-c")}


class _PipeDecompressor:
    """The decompressor as a child process (zstd or gzip, as the image ships them): a thread
    feeds it the archive's bytes (read and hashed by the _FdReader), the tar stream comes out
    of a pipe. Headers are read from it in Python; member data goes from the pipe to its
    file with os.splice, never through Python (restore speed, issue 19)."""

    def __init__(self, raw: "_FdReader", argv: Sequence[str]):
        self._raw = raw
        self.proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):  # a lower limit here: the default size, only slower
                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)  # type: ignore[union-attr]
        self.fed = threading.Event()
        self._thread = threading.Thread(target=self._feed, name="archive-feed", daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            while data := self._raw.read(READ_SIZE):
                stdin.write(data)
        except (BrokenPipeError, ValueError, OSError):
            pass  # the reader stopped early (a refusal): the rest is hashed by drain()
        finally:
            with contextlib.suppress(OSError):
                stdin.close()
            self.fed.set()

    def read(self, size: int = READ_SIZE) -> bytes:
        return os.read(self.fd, size)

    def finish(self) -> None:
        """The whole output was read: the feeder is done and the decompressor succeeded."""
        self._thread.join()
        code = self.proc.wait()
        if code != 0:
            detail = self.proc.stderr.read().decode("utf-8", "replace").strip()[-300:]  # type: ignore[union-attr]
            raise ArchiveError(f"damaged archive: the decompressor failed (exit {code}: {detail})")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._thread.join()
        for pipe in (self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                pipe.close()  # type: ignore[union-attr]


def _pipe_for(archive: "ArchiveFile") -> Sequence[str] | None:
    """The decompressor command when data can be spliced (compressed, not encrypted, the tool there)."""
    argv = _DECOMPRESSORS.get(archive.compression)
    if archive.encrypted or argv is None or shutil.which(argv[0]) is None:
        return None
    return argv


_SPLICE = hasattr(os, "splice")


class _Tar:
    """Exact reads from the tar stream: a short read is a truncated archive. With a pipe
    (`fd`), `move` splices data to a file descriptor instead."""

    def __init__(self, stream: BinaryIO, fd: int | None = None):
        self._stream = stream
        self.fd = fd if _SPLICE else None
        self.count = 0

    def move(self, size: int, out: int, what: str) -> None:
        """`size` bytes of the stream to the descriptor `out` (a file, /dev/null)."""
        left = size
        while left:
            try:
                n = os.splice(self.fd, out, min(left, 1 << 30))  # type: ignore[arg-type]
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # EINVAL: a target splice cannot write; copy instead
                    raise
                self.fd = None
                self.count += size - left
                self.copy(left, out, what)
                return
            if not n:
                raise ArchiveError(f"the archive ends in the middle of {what} (truncated)")
            left -= n
        self.count += size

    def copy(self, size: int, out: int, what: str) -> None:
        left = size
        while left:
            data = self.read_exact(min(left, READ_SIZE), what)
            _write_all(out, data)
            left -= len(data)

    def read_exact(self, size: int, what: str) -> bytes:
        parts = []
        left = size
        while left:
            data = self._stream.read(min(left, READ_SIZE))
            if not data:
                raise ArchiveError(f"the archive ends in the middle of {what} (truncated)")
            parts.append(data)
            left -= len(data)
        self.count += size
        return b"".join(parts)

    def read_some(self, size: int) -> bytes:
        data = self._stream.read(min(size, READ_SIZE))
        self.count += len(data)
        return data


class Data:
    """A member's data: iterate for its chunks, or `into(fd)` to have it written to a file
    (spliced from the decompressor's pipe when there is one)."""

    def __init__(self, tar: _Tar, raw: _Raw, consumed: list[int]):
        self._tar, self._raw, self._consumed = tar, raw, consumed

    def __iter__(self) -> Iterator[bytes]:
        while self._consumed[0] < self._raw.size:
            data = self._tar.read_exact(min(READ_SIZE, self._raw.size - self._consumed[0]),
                                        f"the member {self._raw.name!r}")
            self._consumed[0] += len(data)
            yield data

    def into(self, fd: int, written: Callable[[int, int], None] | None = None) -> None:
        """The rest of the data to `fd`; `written(offset, length)` after each WRITEBACK_STEP
        bytes and after the last (the file's writeback started while the next bytes come)."""
        what = f"the member {self._raw.name!r}"
        offset = self._consumed[0]
        while self._consumed[0] < self._raw.size:
            step = self._raw.size - self._consumed[0]
            if written is not None:
                step = min(step, WRITEBACK_STEP)
            if self._tar.fd is not None:
                self._tar.move(step, fd, what)
            else:
                self._tar.copy(step, fd, what)
            self._consumed[0] += step
            if written is not None:
                written(self._consumed[0] - offset - step, step)


# --- early writeback ----------------------------------------------------------------------

WRITEBACK_STEP = 8 << 20  # bytes of one file written before their writeback is started
# Files below this are left to the syncfs: started one by one, the writeback of small files
# slowed the write pass more than it saved (bench/, issue 19), the syncfs batches them.
WRITEBACK_MIN = 1 << 20
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writing dirty pages of the range, do not wait


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """The C library's sync_file_range (Python's os module has none), or None."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_START_WRITEBACK = _sync_file_range()
_WRITEBACK_QUEUE = 256  # files handed over and not yet started (each holds a descriptor)


class Writeback:
    """Starts the writeback of the large files a restore writes as it goes, in a thread of its
    own (the call can block on the disk's queue, and the writer must not wait for it): `start(fd,
    offset, length)` hands a duplicate of the descriptor over, the thread asks the kernel to
    write those bytes to disk now without waiting for them (sync_file_range with
    SYNC_FILE_RANGE_WRITE) and closes it. So a restore's data goes to disk while the next
    members are decompressed and written, and the syncfs before the one-pass restore's swap
    finds little left. Only a head start, never the durability: that is still the syncfs
    (sidecar/tarball/staging.py). Refusals of the call are ignored; `close` waits until every
    descriptor handed over is closed. Nothing where the C library has no sync_file_range."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[int, int, int] | None] = queue.Queue(_WRITEBACK_QUEUE)
        self._thread: threading.Thread | None = None

    def start(self, fd: int, offset: int, length: int) -> None:
        if _START_WRITEBACK is None or length <= 0:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="writeback", daemon=True)
            self._thread.start()
        self._queue.put((os.dup(fd), offset, length))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            fd, offset, length = item
            try:
                _START_WRITEBACK(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # type: ignore[misc]
            except Exception:  # noqa: BLE001 - a head start only; the thread must live on (the writer waits on it)
                pass
            finally:
                os.close(fd)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None


_DEVNULL: list[int] = []


def _devnull() -> int:
    if not _DEVNULL:
        _DEVNULL.append(os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC))
    return _DEVNULL[0]


# --- headers ------------------------------------------------------------------------------

_OCTAL = re.compile(rb"[0-7]+")
_DECIMAL = re.compile(r"[0-9]{1,%d}" % _MAX_DIGITS)
_PAX_TIME = re.compile(r"(-?)([0-9]{1,%d})(?:\.([0-9]+))?" % _MAX_DIGITS)
_TYPES = {b"0": Kind.FILE, b"\0": Kind.FILE, b"7": Kind.FILE, b"1": Kind.HARDLINK, b"2": Kind.SYMLINK,
          b"5": Kind.DIR, b"6": Kind.FIFO, b"S": Kind.FILE}
_REGULAR = (b"0", b"\0", b"7", b"S")


def header_number(field: bytes, what: str) -> int:
    """An octal field (padded with spaces or NULs at either end) or a base-256 one."""
    if field[:1] == b"\x80":
        return _bounded(int.from_bytes(field[1:], "big"), what)
    if field[:1] == b"\xff":
        return _bounded(int.from_bytes(field, "big", signed=True), what)
    digits = field.strip(b" \0")
    if not digits:
        return 0
    if not _OCTAL.fullmatch(digits):
        raise ArchiveError(f"malformed tar header: the {what} field {field!r} is not an octal number")
    return int(digits, 8)


def _bounded(value: int, what: str) -> int:
    if not -MAX_SIZE <= value <= MAX_SIZE:
        raise ArchiveError(f"malformed tar header: the {what} field is out of range ({value})")
    return value


def _decimal(text: bytes, what: str) -> int:
    """A decimal number from a PAX record or sparse map, of at most _MAX_DIGITS digits."""
    if not _DECIMAL.fullmatch(text.decode("ascii", "replace")):
        raise ArchiveError(f"malformed {what}: {text[:40]!r} is not a number of at most {_MAX_DIGITS} digits")
    return int(text)


def _text(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


def _check_header_sum(block: bytes) -> None:
    field = block[148:156]
    digits = field.lstrip(b" ").rstrip(b" \0")
    if not digits or not _OCTAL.fullmatch(digits):
        raise ArchiveError(f"malformed tar header: the checksum field {field!r} is not an octal number "
                           "(a header, not the end of the archive)")
    stored = int(digits, 8)
    unsigned = sum(block) - sum(field) + 8 * 32
    if stored == unsigned:
        return
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b > 127)  # old writers' signed sum
    if stored != signed:
        raise ArchiveError(f"tar header checksum mismatch: stored {stored}, computed {unsigned}")


@dataclass
class _Raw:
    """A header as read, before normalisation and the policy."""

    name: bytes
    type: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    linkname: bytes
    uname: bytes
    gname: bytes
    sparse: list[tuple[int, int]] | None = None
    realsize: int | None = None
    xattrs: dict[str, bytes] = dataclasses.field(default_factory=dict)


def _parse_block(block: bytes) -> _Raw:
    _check_header_sum(block)
    magic = block[257:265]
    posix = magic == b"ustar\x0000"
    if not posix and magic != b"ustar  \0":
        raise ArchiveError(f"unsupported tar header (magic {magic!r}); expected ustar, PAX or GNU")
    name = _text(block[0:100])
    if posix and block[345]:
        name = _text(block[345:500]) + b"/" + name
    raw = _Raw(name, block[156:157], header_number(block[100:108], "mode"), header_number(block[108:116], "uid"),
               header_number(block[116:124], "gid"), header_number(block[124:136], "size"),
               header_number(block[136:148], "mtime") * 1_000_000_000, _text(block[157:257]), _text(block[265:297]),
               _text(block[297:329]))
    if raw.size < 0:
        raise ArchiveError(f"malformed tar header: negative size for {name!r}")
    return raw


def pax_records(data: bytes) -> dict[str, bytes]:
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 21)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise ArchiveError("malformed PAX header: a record does not start with its length")
        end = pos + int(digits)
        if end <= space + 1 or end > len(data) or data[end - 1] != 0x0A:
            raise ArchiveError("malformed PAX header: a record's length does not match")
        key, eq, value = data[space + 1:end - 1].partition(b"=")
        if not eq or not key:
            raise ArchiveError("malformed PAX header: a record without key=value")
        records[key.decode("utf-8", "surrogateescape")] = value
        pos = end
    return records


def _pax_int(records: dict[str, bytes], key: str) -> int | None:
    if key not in records:
        return None
    return _decimal(records[key], f"PAX header {key}")


def _pax_time(text: str) -> int:
    m = _PAX_TIME.fullmatch(text)
    if m is None:
        raise ArchiveError(f"malformed PAX header: mtime={text[:40]!r}")
    ns = int(m.group(2)) * 1_000_000_000 + int((m.group(3) or "0")[:9].ljust(9, "0"))
    return -ns if m.group(1) else ns


# --- parsing ------------------------------------------------------------------------------

class _Pending:
    """The extended headers read for the next member. Tar readers disagree on which wins
    when a member has two that set the same thing (a PAX `x` and a GNU `L`, two `x`), so
    any such pair is refused; a GNU long name with a GNU long link name is fine."""

    def __init__(self) -> None:
        self.pax: dict[str, bytes] | None = None
        self.longname: bytes | None = None
        self.longlink: bytes | None = None

    @property
    def any(self) -> bool:
        return self.pax is not None or self.longname is not None or self.longlink is not None

    def add(self, kind: bytes, data: bytes) -> None:
        clash = {b"x": self.any, b"L": self.longname is not None or self.pax is not None,
                 b"K": self.longlink is not None or self.pax is not None}[kind]
        if clash:
            what = {b"x": "a PAX header", b"L": "a GNU long name", b"K": "a GNU long link name"}[kind]
            raise UnsafeArchive(f"{what} follows another extended header of the same member; tar readers disagree "
                                "on which wins; refused")
        if kind == b"x":
            self.pax = pax_records(data)
        elif kind == b"L":
            self.longname = _text(data)
        else:
            self.longlink = _text(data)


class _Parser:
    """Yields (raw header with extended headers applied, data reader) for each member; the
    data not read by the caller is skipped before the next header."""

    def __init__(self, tar: _Tar):
        self.tar = tar

    def members(self) -> Iterator[tuple[_Raw, Callable[[], Iterator[bytes]]]]:
        pending = _Pending()
        while True:
            block = self.tar.read_exact(BLOCK, "a header")
            if block == _ZERO_BLOCK:
                if pending.any:
                    raise ArchiveError("the archive ends after an extended header, without its member")
                self._end()
                return
            raw = _parse_block(block)
            if raw.type == b"g":
                raise UnsafeArchive("the archive has a global PAX header ('g'), which would rename later members "
                                    "for some tar readers only; refused")
            if raw.type in (b"x", b"L", b"K"):
                pending.add(raw.type, self._extended(raw))
                continue
            if raw.type not in _TYPES and raw.type not in (b"3", b"4"):
                raise ArchiveError(f"member {raw.name!r} has the unsupported type {raw.type!r}")
            self._complete(raw, block, pending)
            pending = _Pending()
            consumed = [0]
            yield raw, self._data_reader(raw, consumed)
            self._skip(raw.size - consumed[0])
            self._skip_padding(raw.size)

    def _complete(self, raw: _Raw, block: bytes, pending: "_Pending") -> None:
        """Apply the member's extended headers (GNU long names, sparse maps, PAX records)."""
        if pending.longname is not None:
            raw.name = pending.longname
        if pending.longlink is not None:
            raw.linkname = pending.longlink
        if raw.type == b"S":
            self._gnu_sparse(raw, block)
        if pending.pax is not None:
            self._apply_pax(raw, pending.pax)
        if raw.type == b"\0" and raw.name.endswith(b"/"):
            raw.type = b"5"  # the old convention every reader follows: a type-less name ending in / is a folder
        if raw.sparse is not None and raw.type not in _REGULAR:
            raise ArchiveError(f"member {raw.name!r} of type {raw.type!r} has a sparse map; only regular files may")
        if raw.type in (b"1", b"2", b"3", b"4", b"5", b"6"):
            raw.size = 0  # as every tar reader does: these types carry no data, whatever the field says

    def _extended(self, raw: _Raw) -> bytes:
        if raw.size > MAX_EXTENDED:
            raise ArchiveError(f"an extended header of {raw.size} bytes is over the limit of {MAX_EXTENDED}")
        data = self.tar.read_exact(raw.size, "an extended header")
        self._skip_padding(raw.size)
        return data

    def _data_reader(self, raw: _Raw, consumed: list[int]) -> Callable[[], "Data"]:
        return lambda: Data(self.tar, raw, consumed)

    def _skip(self, size: int) -> None:
        if self.tar.fd is not None and size >= BLOCK:
            self.tar.move(size, _devnull(), "a member's data")
            return
        while size > 0:
            size -= len(self.tar.read_exact(min(size, READ_SIZE), "a member's data"))

    def _skip_padding(self, size: int) -> None:
        self._skip(-size % BLOCK)

    def _end(self) -> None:
        """Two zero blocks end the archive; only zero bytes may follow."""
        if self.tar.read_exact(BLOCK, "the end marker") != _ZERO_BLOCK:
            raise ArchiveError("a lone zero block in the middle of the archive (only two zero blocks end it)")
        while data := self.tar.read_some(READ_SIZE):
            if data.count(0) != len(data):
                raise ArchiveError("data follows the archive's end marker; only zero bytes may")

    def _apply_pax(self, raw: _Raw, pax: dict[str, bytes]) -> None:
        if "path" in pax:
            raw.name = pax["path"]
        if "linkpath" in pax:
            raw.linkname = pax["linkpath"]
        for key, attr in (("size", "size"), ("uid", "uid"), ("gid", "gid")):
            value = _pax_int(pax, key)
            if value is not None:
                setattr(raw, attr, value)
        if "uname" in pax:
            raw.uname = pax["uname"]
        if "gname" in pax:
            raw.gname = pax["gname"]
        if "mtime" in pax:
            raw.mtime_ns = _pax_time(pax["mtime"].decode("ascii", "replace"))
        raw.xattrs = {k[len("SCHILY.xattr."):]: v for k, v in pax.items() if k.startswith("SCHILY.xattr.")}
        if any(k.startswith("GNU.sparse.") for k in pax):
            self._pax_sparse(raw, pax)

    def _pax_sparse(self, raw: _Raw, pax: dict[str, bytes]) -> None:
        major, minor = _pax_int(pax, "GNU.sparse.major"), _pax_int(pax, "GNU.sparse.minor")
        if "GNU.sparse.name" in pax:
            raw.name = pax["GNU.sparse.name"]
        if (major, minor) == (1, 0):
            raw.realsize = _pax_int(pax, "GNU.sparse.realsize")
            raw.sparse = self._sparse_map_in_data(raw)
        elif "GNU.sparse.map" in pax:  # format 0.1
            raw.realsize = _pax_int(pax, "GNU.sparse.size")
            fields = pax["GNU.sparse.map"].split(b",")
            if len(fields) % 2 or _pax_int(pax, "GNU.sparse.numblocks") != len(fields) // 2:
                raise ArchiveError(f"malformed sparse map for {raw.name!r} (its GNU.sparse.numblocks missing or "
                                   "not its number of regions, which GNU tar refuses)")
            numbers = [_decimal(n, f"sparse map for {raw.name!r}") for n in fields]
            raw.sparse = list(zip(numbers[0::2], numbers[1::2]))
        else:
            raise ArchiveError(f"member {raw.name!r} uses an unsupported GNU sparse format (0.0)")
        if raw.realsize is None:
            raise ArchiveError(f"sparse member {raw.name!r} has no real size")

    def _sparse_map_in_data(self, raw: _Raw) -> list[tuple[int, int]]:
        """Format 1.0: the map is decimal lines at the start of the data, padded to a block."""
        text = bytearray()
        lines, wanted = 0, None
        while wanted is None or lines < wanted:
            if len(text) >= MAX_EXTENDED or len(text) >= raw.size:
                raise ArchiveError(f"the sparse map of {raw.name!r} is too long or truncated")
            block = self.tar.read_exact(BLOCK, "a sparse map")
            text += block
            lines += block.count(b"\n")
            if wanted is None and lines:
                first = bytes(text[:text.index(b"\n")])
                wanted = 1 + 2 * _decimal(first, f"sparse map for {raw.name!r}")
        numbers = [_decimal(n, f"sparse map for {raw.name!r}") for n in bytes(text).split(b"\n")[1:wanted]]
        raw.size -= len(text)
        return [(numbers[i], numbers[i + 1]) for i in range(0, len(numbers), 2)]

    def _gnu_sparse(self, raw: _Raw, block: bytes) -> None:
        """Old GNU sparse: four entries in the header, more in extension blocks."""
        entries = self._sparse_entries(block[386:482])
        extended = block[482]
        blocks = 0
        while extended:
            blocks += 1
            if blocks * BLOCK > MAX_EXTENDED:
                raise ArchiveError(f"the sparse map of {raw.name!r} is over the limit")
            ext = self.tar.read_exact(BLOCK, "a sparse header")
            entries += self._sparse_entries(ext[:504])
            extended = ext[504]
        raw.sparse = entries
        raw.realsize = header_number(block[483:495], "real size")

    @staticmethod
    def _sparse_entries(area: bytes) -> list[tuple[int, int]]:
        found = []
        for i in range(0, len(area) - 23, 24):
            offset, length = area[i:i + 12], area[i + 12:i + 24]
            if offset.strip(b"\0") or length.strip(b"\0"):
                found.append((header_number(offset, "sparse offset"), header_number(length, "sparse length")))
        return found


# --- the policy ---------------------------------------------------------------------------

class _Names:
    """Every name the archive made so far and its kind: the tree the writer will have made
    (folders a member implies included). A name is kept as a keyed 64-bit hash of its
    components, about 100 bytes whatever its length; keyed with random bytes, so no
    archive can be built to make two names collide. Symlinks keep their text (bounded by
    MAX_LINK_TEXT) for the check at the end."""

    def __init__(self) -> None:
        self._secret = os.urandom(16)
        self._root = hashlib.blake2b(key=self._secret, digest_size=8)
        self.kinds: dict[bytes, Kind] = {}
        self.symlinks: dict[bytes, str] = {}  # key of the link's name -> its target
        self.links: list[tuple[str, str]] = []  # (name, target), in order
        self._link_text = 0

    def _step(self, state, part: str):
        state = state.copy()
        state.update(part.encode("utf-8", "surrogateescape") + b"/")
        return state

    def key(self, name: str) -> bytes:
        """The key of a whole name in one hash (equal to the last of `keys`)."""
        return hashlib.blake2b(name.encode("utf-8", "surrogateescape") + b"/", key=self._secret,
                               digest_size=8).digest()

    def keys(self, parts: list[str]) -> list[bytes]:
        """The key of each prefix of `parts` (linear in the name's length)."""
        state, out = self._root, []
        for part in parts:
            state = self._step(state, part)
            out.append(state.digest())
        return out

    def add(self, display: str, parts: list[str], kind: Kind) -> None:
        """Record a member, refusing what the writer could not do as the archive says: a
        path through a file or a symlink, a folder replaced by anything else or made from a
        file, a symlink replaced (each symlink is created once, at the end). Every prefix
        of a recorded name is a folder: when the parent is one, so are its ancestors."""
        if not parts:
            return
        last = self.key("/".join(parts))
        if len(parts) > 1 and self.kinds.get(self.key("/".join(parts[:-1]))) is not Kind.DIR:
            self._folders(display, parts)
        seen = self.kinds.get(last)
        if seen is Kind.SYMLINK:
            raise UnsafeArchive(f"member {display!r} replaces the symlink {'/'.join(parts)!r}")
        if seen is Kind.DIR and kind is not Kind.DIR:
            raise UnsafeArchive(f"member {display!r} replaces a folder of the archive with a {kind.value}")
        if seen is not None and seen is not Kind.DIR and kind is Kind.DIR:
            raise UnsafeArchive(f"member {display!r} is a folder where the archive made a {seen.value}")
        self.kinds[last] = Kind.FILE if kind is Kind.HARDLINK else kind

    def _folders(self, display: str, parts: list[str]) -> None:
        for i, key in enumerate(self.keys(parts[:-1])):
            seen = self.kinds.get(key)
            if seen is None:
                self.kinds[key] = Kind.DIR
            elif seen is Kind.SYMLINK:
                raise UnsafeArchive(f"member {display!r} is written through the symlink {'/'.join(parts[:i + 1])!r}")
            elif seen is not Kind.DIR:
                raise UnsafeArchive(f"member {display!r} goes through {'/'.join(parts[:i + 1])!r}, which the "
                                    "archive made a file, not a folder")

    def add_symlink(self, name: str, parts: list[str], target: str) -> None:
        self._link_text += len(name) + len(target)
        if self._link_text > MAX_LINK_TEXT:
            raise ArchiveError(f"the archive's symlinks hold more than {MAX_LINK_TEXT} bytes of names and targets; "
                               "refused (they are kept until the end of the archive)")
        self.symlinks[self.key(name)] = target
        self.links.append((name, target))

    def kind(self, parts: list[str]) -> tuple[str, Kind | None]:
        """What the tree has at `parts`, or at the first prefix that is not a folder."""
        name = "/".join(parts)
        seen = self.kinds.get(self.key(name))
        if seen is not None:
            return name, seen  # recorded: every prefix is a folder
        for i, key in enumerate(self.keys(parts)):
            seen = self.kinds.get(key)
            if seen is not Kind.DIR or i == len(parts) - 1:
                return "/".join(parts[:i + 1]), seen
        return "", Kind.DIR

    def escapes(self, base: list[str], target: str) -> bool:
        """Resolve `target` from the folder `base` as the kernel would through the final
        tree's symlinks; True when it leaves the root, is absolute or loops (linear in the
        components walked: each prefix's key is one hash step from its parent's)."""
        states = [self._root]
        for part in base:
            states.append(self._step(states[-1], part))
        pending = [p for p in reversed(target.split("/")) if p not in ("", ".")]
        hops = 0
        while pending:
            part = pending.pop()
            if part == "..":
                if len(states) == 1:
                    return True
                states.pop()
                continue
            states.append(self._step(states[-1], part))
            link = self.symlinks.get(states[-1].digest())
            if link is not None:
                hops += 1
                if hops > MAX_SYMLINK_HOPS or link.startswith("/"):
                    return True
                states.pop()
                pending.extend(p for p in reversed(link.split("/")) if p not in ("", "."))
        return False


def normalise(name: str) -> str:
    """A member's name relative to the target: no empty or `.` components; refuses absolute
    names, `..`, a last component `.` (other than the root's), NUL and names longer than
    MAX_PATH (or a component over NAME_MAX)."""
    if "\0" in name:
        raise UnsafeArchive(f"member {name[:200]!r} has a NUL byte in its name")
    if name.startswith("/"):
        raise UnsafeArchive(f"member {name[:200]!r} has an absolute path")
    if len(name) > 2 * MAX_PATH:  # before splitting: `a/` x 40,000 costs nothing more than its length
        raise ArchiveError(f"member name {name[:200]!r}... is longer than {MAX_PATH} bytes")
    if name.rstrip("/").endswith("/."):  # `a/.`, `a/./`: the folder `a` by another name (the root `./` is fine)
        raise UnsafeArchive(f"member {name[:200]!r} ends in '.', another name of its folder: no tar writes one, "
                            "and tools disagree on whose mode and times it sets")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"member {name[:200]!r} contains '..'")
    clean = "/".join(parts)
    if len(os.fsencode(clean)) > MAX_PATH or any(len(os.fsencode(p)) > NAME_MAX for p in parts
                                                  if len(p) > NAME_MAX // 4):
        raise ArchiveError(f"member name {clean[:200]!r} is longer than {MAX_PATH} bytes or has a component "
                           f"over {NAME_MAX} bytes")
    return clean


class Policy:
    """What may be written, member by member, and once more at the end (`finish`), checked
    against the tree the members make (`_Names`): symlinks are created last (DirectoryWriter),
    so a member can neither go through one nor be moved under one, and the end check sees
    every symlink as it will be. `expanded` is the room the written tree takes (every file's
    length and every folder rounded up to DISK_BLOCK), known before anything is written."""

    def __init__(self, only: Sequence[str] | None = None) -> None:
        self.names = _Names()
        self.stripped = 0
        self.expanded = 0
        self.only = None if only is None else tuple(p.strip("/").split("/") for p in only)

    def _in_scope(self, display: str, parts: list[str], kind: Kind) -> None:
        """`only`: glob patterns (relative, one component per `/`, as glob.glob reads them); when
        given, every member must be a regular file whose name one of them matches (a preset's
        dump names the files it restores, nothing else)."""
        if self.only is None:
            return
        if kind is Kind.FILE and any(len(p) == len(parts) and all(map(fnmatch.fnmatchcase, parts, p))
                                     for p in self.only):
            return
        accepted = ", ".join("/" + "/".join(p) for p in self.only)
        raise UnsafeArchive(f"member {display!r} ({kind.value}) is not a file this dump may restore (accepted: "
                            f"regular files matching {accepted})")

    def accept(self, raw: _Raw) -> Member:
        display = raw.name.decode("utf-8", "surrogateescape")
        name = normalise(display)
        parts = name.split("/") if name else []
        if raw.type in (b"3", b"4"):
            raise UnsafeArchive(f"member {display!r} is a device node")
        kind = _TYPES[raw.type]
        if not (0 <= raw.uid <= _MAX_ID and 0 <= raw.gid <= _MAX_ID) or abs(raw.mtime_ns) > _MAX_MTIME_NS:
            raise ArchiveError(f"member {display!r} has an owner or time out of range")
        if not name and kind is not Kind.DIR:
            raise UnsafeArchive(f"member {display!r} names the target itself and is not a directory")
        if kind is not Kind.DIR and display.rsplit("/", 1)[-1] in ("", "."):
            raise ArchiveError(f"member {display!r} is a {kind.value} named like a folder (ending in / or /.); tar "
                               "readers disagree on it")
        self._in_scope(display, parts, kind)
        linkname = raw.linkname.decode("utf-8", "surrogateescape")
        if kind is Kind.SYMLINK:
            self._check_symlink(name, linkname)
        elif kind is Kind.HARDLINK:
            linkname = self._check_hardlink(name, linkname)
        self.names.add(display, parts, kind)
        if kind is Kind.SYMLINK:
            self.names.add_symlink(name, parts, linkname)
        size, realsize, sparse = self._sizes(raw, kind, display)
        mode, xattrs = self._mode(raw.mode, kind), self._xattrs(raw, kind, display)
        if mode != raw.mode & 0o7777 or len(xattrs) != len(raw.xattrs):
            self.stripped += 1
            logger.warning("setuid/setgid bits or extended attributes stripped", extra={"member": name})
        if kind is Kind.FILE or kind is Kind.DIR:
            self.expanded += -(-max(realsize, 1) // DISK_BLOCK) * DISK_BLOCK
        return Member(name, kind, mode, raw.uid, raw.gid, raw.uname.decode("utf-8", "surrogateescape"),
                      raw.gname.decode("utf-8", "surrogateescape"), raw.mtime_ns, size, realsize, linkname,
                      xattrs, sparse)

    def finish(self) -> None:
        for name, target in self.names.links:
            if self.names.escapes(name.split("/")[:-1], target):
                raise UnsafeArchive(f"symlink {name!r} -> {target!r} points outside the volume")

    def _sizes(self, raw: _Raw, kind: Kind, display: str) -> tuple[int, int, tuple[tuple[int, int], ...] | None]:
        """Stored bytes, length once written, sparse map: bounded, the map ordered, not
        overlapping, inside the length and adding up to the stored bytes (so the data of a
        member, holes written out, is exactly its length)."""
        if kind is not Kind.FILE:
            return 0, 0, None
        realsize = raw.realsize if raw.realsize is not None else raw.size
        if not (0 <= raw.size <= MAX_SIZE and 0 <= realsize <= MAX_SIZE):
            raise ArchiveError(f"member {display!r} has a size out of range (0 to {MAX_SIZE} bytes)")
        if raw.sparse is None:
            if realsize != raw.size:
                raise ArchiveError(f"member {display!r}: its real size differs from its data without a sparse map")
            return raw.size, realsize, None
        end, last = 0, len(raw.sparse) - 1
        for i, (offset, length) in enumerate(raw.sparse):
            # As GNU tar writes maps (and reads them alike): a hole between data regions, an
            # empty region only last (at the size).
            touching = i > 0 and offset == end and length > 0
            if offset < end or touching or length < 0 or offset + length > realsize or (length == 0 and i != last):
                raise ArchiveError(f"sparse member {display!r} has a region that goes backwards, overlaps or touches "
                                   "another, is empty before the last, or lies beyond its size")
            end = offset + length
        if sum(n for _, n in raw.sparse) != raw.size:
            raise ArchiveError(f"sparse member {display!r}: its map does not match its stored data")
        if end != realsize:  # GNU tar ends every map so (a last empty region at the size) and sizes files by it
            raise ArchiveError(f"sparse member {display!r}: its map ends at {end}, not at its size {realsize}")
        return raw.size, realsize, tuple(raw.sparse)

    def _xattrs(self, raw: _Raw, kind: Kind, display: str) -> tuple[tuple[str, bytes], ...]:
        """Kept on files and folders only (a hard link's would land on the inode it shares,
        a symlink's cannot be set here); never `security.capability`. Names must be UTF-8
        without NUL, values at most MAX_XATTR_VALUE bytes."""
        kept = []
        for key, value in raw.xattrs.items():
            try:
                key.encode("utf-8")
            except UnicodeEncodeError:
                raise ArchiveError(f"member {display!r} has an extended attribute whose name is not UTF-8") from None
            if not key or "\0" in key or len(key) > NAME_MAX or len(value) > MAX_XATTR_VALUE:
                raise ArchiveError(f"member {display!r} has a malformed extended attribute {key[:80]!r}")
            if kind in (Kind.FILE, Kind.DIR) and key != _CAPABILITY_XATTR:
                kept.append((key, value))
        return tuple(sorted(kept))

    def _mode(self, mode: int, kind: Kind) -> int:
        mode &= 0o7777
        if kind is Kind.DIR:
            return mode & ~stat.S_ISUID
        if kind is Kind.HARDLINK:
            return mode  # a hard link has no mode of its own
        return mode & ~_PRIVILEGE_BITS

    def _check_symlink(self, name: str, target: str) -> None:
        if target.startswith("/"):
            raise UnsafeArchive(f"symlink {name!r} points to the absolute path {target[:200]!r}, outside the volume")
        if "\0" in target or not name or not target:
            raise UnsafeArchive(f"symlink {name!r} -> {target[:200]!r} is not allowed (empty target, NUL, or the "
                                "target folder itself)")
        if len(os.fsencode(target)) > MAX_SYMLINK_TARGET:
            raise ArchiveError(f"symlink {name!r} has a target longer than {MAX_SYMLINK_TARGET} bytes")

    def _check_hardlink(self, name: str, target: str) -> str:
        if target.startswith("/") or "\0" in target:
            raise UnsafeArchive(f"hard link {name!r} -> {target[:200]!r} points outside the volume")
        if len(target) > 2 * MAX_PATH:
            raise ArchiveError(f"hard link {name!r} has a target longer than {MAX_PATH} bytes")
        parts = [p for p in target.split("/") if p not in ("", ".")]
        if ".." in parts or not parts:
            raise UnsafeArchive(f"hard link {name!r} -> {target!r} points outside the volume")
        if target.rsplit("/", 1)[-1] in ("", "."):
            raise ArchiveError(f"hard link {name!r} -> {target!r} names its target like a folder")
        clean = "/".join(parts)
        at, seen = self.names.kind(parts)
        if at != clean and seen is Kind.SYMLINK:
            raise UnsafeArchive(f"hard link {name!r} -> {clean!r} goes through the symlink {at!r}")
        if at != clean or seen is None:
            raise UnsafeArchive(f"hard link {name!r} -> {clean!r}: the target is not in the archive before it")
        if seen is not Kind.FILE:
            raise UnsafeArchive(f"hard link {name!r} -> {clean!r}: the target is a {seen.value}; only a regular "
                                "file may be linked")
        if clean == name:
            raise UnsafeArchive(f"hard link {name!r} links to itself")
        return clean


# --- one pass -----------------------------------------------------------------------------

# ValueError (UnicodeError among them), OverflowError, IndexError: malformed input the parser
# did not foresee is still a refusal, never an uncaught exception.
_READ_ERRORS = (ArchiveError, EncryptionError, zstandard.ZstdError, EOFError, gzip.BadGzipFile, ValueError,
                OverflowError, IndexError)


class _Pass:
    """One read of the archive: `members()` yields each accepted member with an iterator
    of its data, in the archive's order; `summary` is set once the whole archive, its end
    and its hash were accepted. Use as a context manager: a read error (damage, a refused
    member) is reported as a checksum mismatch whenever the hash says the file is not the
    one that was written."""

    def __init__(self, archive: ArchiveFile, keys: DecryptionKeys | None, only: Sequence[str] | None = None):
        self.archive, self.keys = archive, keys
        self.raw = _FdReader(archive.fd)
        self.policy = Policy(only)
        self.summary: Summary | None = None
        self._gen: Generator[tuple[Member, Iterator[bytes]], None, None] | None = None
        self._tar: _Tar | None = None
        self._pipe: _PipeDecompressor | None = None

    @property
    def tar_bytes(self) -> int:
        """Bytes of tar read so far."""
        return self._tar.count if self._tar is not None else 0

    def __enter__(self) -> "_Pass":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._pipe is not None:
            self._pipe.close()
        if exc is None or not isinstance(exc, _READ_ERRORS):
            return
        if self._gen is not None:
            self._gen.close()  # stops a decrypting thread before the rest is hashed
        self.raw.drain()
        actual = self.raw.sha.hexdigest()
        expected = self.archive.expected_sha256
        if expected is not None and actual != expected:
            raise ChecksumMismatch(f"{self.archive.name}: SHA-256 is {actual}, the checksum file says "
                                   f"{expected}") from exc
        if not isinstance(exc, SidecarError):
            raise ArchiveError(f"{self.archive.name}: damaged archive ({exc})") from exc

    def members(self) -> Iterator[tuple[Member, Iterator[bytes]]]:
        self._gen = self._members()
        return self._gen

    def _members(self) -> Generator[tuple[Member, Iterator[bytes]], None, None]:
        count, root = 0, None
        argv = _pipe_for(self.archive)
        if argv is not None:
            pipe = self._pipe = _PipeDecompressor(self.raw, argv)
            tar = self._tar = _Tar(pipe, pipe.fd)  # type: ignore[arg-type]
        with contextlib.nullcontext(None) if argv is not None else _plain(self.archive, self.raw, self.keys) as plain:
            if plain is not None:
                tar = self._tar = _Tar(_decompressed(plain, self.archive.compression))
            for header, data in _Parser(tar).members():
                member = self.policy.accept(header)
                count += 1
                if not member.name:
                    root = member
                yield member, data()
            self.policy.finish()
            if plain is not None:
                while plain.read(READ_SIZE):  # the age stream is authenticated up to its very end
                    pass
            else:
                self._pipe.finish()  # type: ignore[union-attr]
        self.raw.drain()
        actual = self.raw.sha.hexdigest()
        expected = self.archive.expected_sha256
        if expected is not None and actual != expected:
            raise ChecksumMismatch(f"{self.archive.name}: SHA-256 is {actual}, the checksum file says {expected}")
        if count == 0:
            raise ArchiveError(f"{self.archive.name}: the archive holds no members")
        self.summary = Summary(count, tar.count, actual, self.policy.stripped, root, self.policy.expanded)


def verify(archive: ArchiveFile, keys: DecryptionKeys | None = None, only: Sequence[str] | None = None,
           on_member: Callable[[Member], None] | None = None) -> Summary:
    """The whole check without writing anything (the same parser and policy as `extract`,
    on the same descriptor): run it before stopping a container, so a bad archive is
    refused with the app untouched."""
    with _Pass(archive, keys, only) as one:
        for member, _data in one.members():
            if on_member is not None:
                on_member(member)  # the data left unread is skipped (spliced to /dev/null from a pipe)
    assert one.summary is not None
    return one.summary


class DumpShape:
    """A preset's dump archive (presets/dump.py's parts_tar), checked member by member (a
    `verify` on_member): regular files FILE.000000, FILE.000001, ... in order, one FILE.
    `file` and `size` (the dump's bytes) once `finish` accepted it."""

    def __init__(self, archive: str):
        self.archive = archive
        self.file: str | None = None
        self.parts = 0
        self.size = 0

    def __call__(self, member: Member) -> None:
        match = PART.match(member.name) if member.kind is Kind.FILE else None
        if match is None or int(match["n"]) != self.parts or (self.file is not None and match["file"] != self.file):
            raise ArchiveError(f"{self.archive}: {member.name!r} is not part {self.parts} of a dump")
        self.file, self.parts, self.size = match["file"], self.parts + 1, self.size + member.size

    def finish(self) -> None:
        if self.parts == 0:
            raise ArchiveError(f"{self.archive}: no dump in this archive")


def dump_data(archive: ArchiveFile, keys: DecryptionKeys | None, shape: DumpShape,
              on_done: Callable[[Summary], None] | None = None) -> Iterator[bytes]:
    """The dump in a preset's archive, its parts joined in order, read once and checked as
    `verify` checks it (`shape` too); it raises at its end (the hash) when the file is not
    the one that was written, before `on_done` gets the summary. Run by a worker only."""
    with _Pass(archive, keys) as one:
        for member, data in one.members():
            shape(member)
            yield from data
    shape.finish()
    assert one.summary is not None
    if on_done is not None:
        on_done(one.summary)


def list_members(archive: ArchiveFile, keys: DecryptionKeys | None = None) -> Iterator[Member]:
    """Every accepted member, in the archive's order, without writing anything (the same
    read, parser and policy as `verify`); a damaged, unsafe or swapped archive raises as
    `verify` does, possibly after some members were yielded."""
    with _Pass(archive, keys) as one:
        for member, _data in one.members():
            yield member


def verify_file(path: Path, keys: DecryptionKeys | None = None, require_checksum: bool = True) -> Summary:
    """`verify` of an archive file by its path (opened once)."""
    with open_archive(path, require_checksum) as archive:
        return verify(archive, keys)


def extract(archive: ArchiveFile, into: Path, keys: DecryptionKeys | None = None,
            progress: Callable[[int], None] | None = None, skip: Sequence[str] = (),
            only: Sequence[str] | None = None, select: Callable[[Member], bool] | None = None) -> Summary:
    """Check and write every member into the folder `into` in one pass; directories get
    their metadata after their contents, the root entry is applied to `into` itself.
    `progress` gets the tar bytes read so far after each member. `skip`: folders (relative
    to `into`) left out, the container mounts them read-only. `only`: see Policy. `select`:
    write only the members it accepts (one file or folder back); every member is still read
    and checked, and folders on the way to a selected member that `into` lacks are made."""
    with DirectoryWriter(into, skip) as writer, _Pass(archive, keys, only) as one:
        for member, data in one.members():
            if select is not None and not select(member):
                continue
            writer.write(member, data)
            if progress is not None:
                progress(one.tar_bytes)
        writer.finish()
    assert one.summary is not None
    return one.summary


def restore_into(path: Path, into: Path, keys: DecryptionKeys | None = None, require_checksum: bool = True) -> Summary:
    """The whole restore of one archive file into a folder (what a worker container runs).
    `into` should be empty: a member replaces what is under its name, and nothing already
    there (a symlink included) is ever followed."""
    with open_archive(path, require_checksum) as archive:
        return extract(archive, into, keys)


def worker_command(archive: str, into: str, identity_file: str | None = None,
                   passphrase_file: str | None = None) -> list[str]:
    """The command a worker container runs to restore `archive` into `into` (paths as the
    worker sees them). An encrypted archive needs an identity file or a passphrase file
    (or the passphrase on the worker's stdin). Exit codes: EXIT_OK, EXIT_REFUSED (damaged
    or unsafe archive), EXIT_FAILED."""
    return ["python", "-m", "sidecar.tarball.extract", "--archive", archive, "--into", into,
            *(["--identity-file", identity_file] if identity_file else []),
            *(["--passphrase-file", passphrase_file] if passphrase_file else [])]


# --- the canonical stream -----------------------------------------------------------------

_TAR_TYPES = {Kind.FILE: tarfile.REGTYPE, Kind.DIR: tarfile.DIRTYPE, Kind.SYMLINK: tarfile.SYMTYPE,
              Kind.HARDLINK: tarfile.LNKTYPE, Kind.FIFO: tarfile.FIFOTYPE}


def canonical_tar(archive: ArchiveFile, keys: DecryptionKeys | None = None,
                  on_done: Callable[[Summary], None] | None = None) -> Iterator[bytes]:
    """A tar stream re-serialised from exactly the accepted members (PAX format, headers we
    write), produced while the archive is read once and checked: the engine's own tar reader
    never sees a header we did not write. Only for `docker load` of an image export (a
    volume is only ever written by the DirectoryWriter in a worker): it carries regular
    files, folders and symlinks (last, once the whole archive was accepted), no extended
    attributes, no set-id bits; a hard link, a FIFO or a sparse file is refused. Each file's
    data is exactly the length its header says. The end marker comes only after the whole
    archive, its hash included, was accepted. Small pieces are sent in blocks of up to READ_SIZE."""
    return _batched(_canonical(archive, keys, on_done))


def _batched(pieces: Iterator[bytes]) -> Iterator[bytes]:
    buf = bytearray()
    for piece in pieces:
        if not buf and len(piece) >= READ_SIZE:
            yield piece
            continue
        buf += piece
        if len(buf) >= READ_SIZE:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


def _canonical(archive: ArchiveFile, keys: DecryptionKeys | None,
               on_done: Callable[[Summary], None] | None) -> Iterator[bytes]:
    deferred: list[Member] = []
    with _Pass(archive, keys) as one:
        for member, data in one.members():
            if member.kind in (Kind.HARDLINK, Kind.FIFO) or member.sparse is not None:
                what = "a sparse file" if member.sparse is not None else f"a {member.kind.value}"
                raise UnsafeArchive(f"member {member.name!r} is {what}; an image export holds regular files, "
                                    "folders and symlinks only")
            if not member.name:
                for _ in data:
                    pass
            elif member.kind is Kind.SYMLINK:
                deferred.append(member)
            else:
                yield header(member)
                yield from _exactly(member.size, data, member.name)
                if member.size % BLOCK:
                    yield bytes(BLOCK - member.size % BLOCK)
    assert one.summary is not None
    for member in deferred:
        yield header(member)
    if on_done is not None:
        on_done(one.summary)
    yield bytes(2 * BLOCK)


def files_tar(inner: Iterable[bytes], what: str) -> Iterator[bytes]:
    """A tar stream that is itself inside an archive (a preset's snapshot tar, made in the
    app's container), checked by the one parser and policy and re-serialised with headers we
    write, carrying regular files and folders only: for the engine's `PUT /archive`, whose
    unpacker then never sees a symlink, a hard link, a device, a sparse map, an xattr, a
    set-id bit or a name we did not check. Anything else is refused (UnsafeArchive, naming
    `what` and the member); the root entry is left out (the target folder keeps its own
    owner and mode). The end marker comes only after the whole tar was accepted."""
    return _batched(_files_only(inner, what))


def _files_only(inner: Iterable[bytes], what: str) -> Iterator[bytes]:
    try:
        yield from _files_and_folders(inner)
    except ArchiveError as err:  # the parser's and policy's words, with whose tar it is
        raise type(err)(f"{what}: {err}") from err


def _files_and_folders(inner: Iterable[bytes]) -> Iterator[bytes]:
    policy = Policy()
    for raw, data in _Parser(_Tar(IterReader(inner))).members():  # type: ignore[arg-type]
        member = policy.accept(raw)
        if member.kind not in (Kind.FILE, Kind.DIR) or member.sparse is not None:
            kind = "a sparse file" if member.sparse is not None else f"a {member.kind.value}"
            raise UnsafeArchive(f"member {member.name!r} is {kind}; only regular files and folders are restored "
                                "from it")
        if not member.name:
            for _ in data():
                pass
            continue
        yield header(member)
        yield from _exactly(member.size, data(), member.name)
        if member.size % BLOCK:
            yield bytes(BLOCK - member.size % BLOCK)
    policy.finish()
    yield bytes(2 * BLOCK)


def _exactly(size: int, data: Iterator[bytes], name: str) -> Iterator[bytes]:
    """A member's data, never more nor fewer bytes than its header says."""
    left = size
    for chunk in data:
        if len(chunk) > left:
            raise ArchiveError(f"member {name!r} carries more data than its size")
        left -= len(chunk)
        yield chunk
    if left:
        raise ArchiveError(f"member {name!r} carries less data than its size")


def header(member: Member) -> bytes:
    """The PAX-format header of one accepted member, as we write it (no extended attributes)."""
    info = tarfile.TarInfo(member.name)
    info.type = _TAR_TYPES[member.kind]
    info.mode, info.uid, info.gid = member.mode, member.uid, member.gid
    info.uname, info.gname = member.uname, member.gname
    info.size = member.realsize if member.kind is Kind.FILE else 0
    info.linkname = member.linkname
    info.mtime = int(member.mtime_ns / 1_000_000_000)  # toward zero, as the PAX record below
    pax = {}
    if member.mtime_ns % 1_000_000_000:
        pax["mtime"] = pax_time(member.mtime_ns)
    info.pax_headers = pax
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def pax_time(ns: int) -> str:
    """Nanoseconds as a PAX time: the sign, then the whole seconds and the fraction of the
    absolute value (-1.5 s is "-1.500000000", never -2 + 0.5)."""
    seconds, frac = divmod(abs(ns), 1_000_000_000)
    return f"{'-' if ns < 0 else ''}{seconds}.{frac:09d}"


class _Chunks:
    """Exactly n bytes at a time from an iterator of chunks."""

    def __init__(self, data: Iterator[bytes]):
        self._data = iter(data)
        self._left = b""

    def take(self, n: int) -> Iterator[bytes]:
        while n > 0:
            if not self._left:
                self._left = next(self._data, b"")
                if not self._left:
                    raise ArchiveError("a sparse member's data is shorter than its map")
            part, self._left = self._left[:n], self._left[n:]
            n -= len(part)
            yield part


# --- the directory sink -------------------------------------------------------------------

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class _Open:
    name: str
    fd: int
    member: Member | None  # the directory's own entry, applied when it is left
    times: tuple[int, int] | None  # an existing folder's times, put back when it is left


class DirectoryWriter:
    """Writes accepted members under a folder without ever following a symlink: every
    path is walked from the folder's descriptor one component at a time with O_NOFOLLOW,
    and every name is created relative to its parent's descriptor. Keeps the directories
    of the current path open; a directory's owner, mode, xattrs and times are applied
    when the archive leaves it, so they come after its contents."""

    def __init__(self, into: Path, skip: Sequence[str] = ()):
        self.into = into
        self.skip = tuple(normalise(p) for p in skip)  # folders (relative) the container mounts read-only
        self._skip_said: set[str] = set()
        self._stack: list[_Open] = []
        self._deferred: list[Member] = []
        self._as_root = os.geteuid() == 0
        self._xattr_warned = False
        self._writeback = Writeback()

    def __enter__(self) -> "DirectoryWriter":
        try:
            fd = os.open(self.into, _DIR_FLAGS)
        except OSError as exc:
            raise ArchiveError(f"{self.into}: cannot open the restore target ({exc.strerror})") from exc
        st = os.fstat(fd)
        self._stack.append(_Open("", fd, None, (st.st_atime_ns, st.st_mtime_ns)))
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            while self._stack:
                os.close(self._stack.pop().fd)
        finally:
            self._writeback.close()

    def finish(self) -> None:
        """Call once the whole archive was accepted: writes the deferred symlinks, then
        the metadata of the directories still open."""
        for member in self._deferred:
            self._write(member, iter(()))
        while self._stack:
            self._leave()

    def write(self, member: Member, data: Iterator[bytes]) -> None:
        if self._skipped(member.name):
            return  # its data is skipped by the parser
        if member.kind is Kind.SYMLINK:  # created last: nothing later can be moved under one
            self._deferred.append(member)
        else:
            self._write(member, data)

    def _skipped(self, name: str) -> bool:
        for prefix in self.skip:
            if name == prefix or name.startswith(prefix + "/"):
                if prefix not in self._skip_said:
                    self._skip_said.add(prefix)
                    logger.warning("members under a read-only mount of the container left out",
                                   extra={"member": prefix})
                return True
        return False

    def _write(self, member: Member, data: Iterator[bytes]) -> None:
        if member.kind is Kind.DIR:
            self._enter(member.name)
            self._stack[-1].member = member
            return
        parent, _, base = member.name.rpartition("/")
        self._enter(parent)
        fd = self._stack[-1].fd
        if member.kind is Kind.FILE:  # O_EXCL: what is there already is found by the open itself
            self._file(fd, member.name, base, member, data)
            return
        self._make_room(fd, member.name, base)
        if member.kind is Kind.SYMLINK:
            os.symlink(member.linkname, base, dir_fd=fd)
            self._chown(base, member, dir_fd=fd)
            os.utime(base, ns=(member.mtime_ns, member.mtime_ns), dir_fd=fd, follow_symlinks=False)
        elif member.kind is Kind.HARDLINK:
            self._hardlink(fd, base, member)
        else:
            os.mkfifo(base, 0o600, dir_fd=fd)
            self._chown(base, member, dir_fd=fd)
            os.chmod(base, member.mode, dir_fd=fd)
            os.utime(base, ns=(member.mtime_ns, member.mtime_ns), dir_fd=fd, follow_symlinks=False)

    # --- walking --------------------------------------------------------------------------
    def _enter(self, path: str) -> None:
        """Make the stack the chain of open directories from the target to `path`."""
        while len(self._stack) > 1 and not (path == self._stack[-1].name or
                                            path.startswith(self._stack[-1].name + "/")):
            self._leave()
        top = self._stack[-1].name
        rest = path[len(top):].lstrip("/") if top else path
        for part in rest.split("/") if rest else ():
            name = f"{self._stack[-1].name}/{part}" if self._stack[-1].name else part
            self._stack.append(self._open_dir(self._stack[-1].fd, part, name))

    def _open_dir(self, parent: int, part: str, name: str) -> _Open:
        try:
            fd = os.open(part, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            os.mkdir(part, 0o700, dir_fd=parent)
            fd = os.open(part, _DIR_FLAGS, dir_fd=parent)
            # a folder the archive does not list: tar's default mode, with the set-gid bit a
            # set-gid parent gives a new folder (the kernel's rule, which GNU tar keeps too)
            os.chmod(fd, 0o755 | (os.fstat(fd).st_mode & stat.S_ISGID))
            return _Open(name, fd, None, None)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafeArchive(f"member path {name!r} is not a directory (a symlink or a file); nothing is "
                                    "written through it") from exc
            raise
        st = os.fstat(fd)
        return _Open(name, fd, None, (st.st_atime_ns, st.st_mtime_ns))

    def _leave(self) -> None:
        top = self._stack.pop()
        try:
            if top.member is not None:
                self.apply_folder(top.fd, top.member)
            elif top.times is not None:
                try:
                    os.utime(top.fd, ns=top.times)
                except OSError as exc:  # a folder of the worker's read-only root above the volumes
                    if exc.errno != errno.EROFS:
                        raise
        finally:
            os.close(top.fd)

    def apply_folder(self, fd: int, member: Member) -> None:
        """A folder's owner, mode, xattrs and times from its member (also the staged
        restore's swap: the root entry onto the volume's root, sidecar/tarball/staging.py)."""
        self._chown(fd, member)
        os.chmod(fd, member.mode)
        self._xattrs(fd, member)
        os.utime(fd, ns=(member.mtime_ns, member.mtime_ns))

    def _make_room(self, fd: int, name: str, base: str) -> None:
        """A member replaces what an earlier one (or the folder) left under its name."""
        try:
            st = os.stat(base, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise UnsafeArchive(f"member {name!r} would replace a folder")
        try:
            os.unlink(base, dir_fd=fd)
        except OSError as exc:
            raise ArchiveError(f"member {name!r} cannot replace what is already there ({exc.strerror})") from exc

    # --- members --------------------------------------------------------------------------
    def _file(self, parent: int, name: str, base: str, member: Member, data: Iterator[bytes]) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(base, flags, 0o600, dir_fd=parent)
        except FileExistsError:  # an earlier member's name (or the folder's own entry): checked, then replaced
            self._make_room(parent, name, base)
            fd = os.open(base, flags, 0o600, dir_fd=parent)
        try:
            written = None
            if member.size >= WRITEBACK_MIN:
                written = lambda offset, length: self._writeback.start(fd, offset, length)  # noqa: E731
            if member.sparse is None:
                if isinstance(data, Data):
                    data.into(fd, written)
                else:
                    for chunk in data:
                        _write_all(fd, chunk)
                    if written is not None:
                        written(0, member.size)
            else:
                chunks = _Chunks(data)
                for offset, length in member.sparse:
                    os.lseek(fd, offset, os.SEEK_SET)
                    for part in chunks.take(length):
                        _write_all(fd, part)
                    if written is not None:
                        written(offset, length)
                os.ftruncate(fd, member.realsize)
            self._chown(fd, member)
            os.chmod(fd, member.mode)
            self._xattrs(fd, member)
            os.utime(fd, ns=(member.mtime_ns, member.mtime_ns))
        finally:
            os.close(fd)

    def _hardlink(self, parent: int, base: str, member: Member) -> None:
        *folders, target = member.linkname.split("/")
        fds: list[int] = []
        try:
            at = self._stack[0].fd
            for part in folders:
                try:
                    at = os.open(part, _DIR_FLAGS, dir_fd=at)
                except OSError as exc:
                    raise ArchiveError(f"hard link {member.name!r} -> {member.linkname!r}: the target's folder "
                                       f"cannot be opened without following a link ({exc.strerror})") from exc
                fds.append(at)
            if not stat.S_ISREG(os.stat(target, dir_fd=at, follow_symlinks=False).st_mode):
                raise UnsafeArchive(f"hard link {member.name!r} -> {member.linkname!r}: the target is not a "
                                    "regular file")
            os.link(target, base, src_dir_fd=at, dst_dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError as exc:
            raise ArchiveError(f"hard link {member.name!r} -> {member.linkname!r}: the target is not in the "
                               "archive before it") from exc
        finally:
            for fd in fds:
                os.close(fd)

    def _chown(self, where: int | str, member: Member, dir_fd: int | None = None) -> None:
        if not self._as_root:  # only root can give files away; an unprivileged run keeps its own
            return
        if isinstance(where, int):
            os.chown(where, member.uid, member.gid)
        else:
            os.chown(where, member.uid, member.gid, dir_fd=dir_fd, follow_symlinks=False)

    def _xattrs(self, fd: int, member: Member) -> None:
        for key, value in member.xattrs:
            try:
                os.setxattr(fd, key, value)
            except OSError as exc:
                if not self._xattr_warned:
                    self._xattr_warned = True
                    logger.warning("extended attributes cannot be restored here; left out",
                                   extra={"member": member.name, "xattr": key, "error": exc.strerror})


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# --- python -m sidecar.tarball.extract --------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """Restore one archive into a folder (run inside a worker container). Prints a JSON
    summary; exit 0, 65 when the archive is damaged or unsafe, 1 on other failures."""
    parser = argparse.ArgumentParser(prog="python -m sidecar.tarball.extract", description=(
        "Check and unpack an archive into a folder in one pass (the passphrase, if any, on stdin)."))
    parser.add_argument("--archive", required=True, type=Path)
    parser.add_argument("--into", required=True, type=Path)
    parser.add_argument("--identity-file", type=Path, help="age identity file")
    parser.add_argument("--passphrase-file", type=Path, help="file holding the passphrase (else: read from stdin)")
    parser.add_argument("--no-checksum", action="store_true", help="restore without a .sha256 beside the archive")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    try:
        keys = _keys(args)
        summary = restore_into(args.archive, args.into, keys, require_checksum=not args.no_checksum)
    except ArchiveError as err:
        print(f"refused: {err}", file=sys.stderr)
        return EXIT_REFUSED
    except (SidecarError, OSError, ValueError) as err:
        print(f"failed: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps({"members": summary.members, "tar_bytes": summary.tar_bytes, "sha256": summary.sha256,
                      "stripped": summary.stripped}))
    return EXIT_OK


def _keys(args) -> DecryptionKeys | None:
    if args.identity_file is not None:
        return DecryptionKeys(identities=tuple(load_identities(args.identity_file)))
    if args.passphrase_file is not None:
        return DecryptionKeys(passphrase=args.passphrase_file.read_text().rstrip("\n") or None)
    if is_encrypted(args.archive):
        passphrase = sys.stdin.readline().rstrip("\n")
        return DecryptionKeys(passphrase=passphrase) if passphrase else None
    return None


if __name__ == "__main__":
    sys.exit(main())
