"""The checked extractor: one tar parser that checks each member and writes it in the same
pass, so what is checked is exactly what is written.

Owns reading an archive from one open file descriptor (decrypting, decompressing, hashing),
parsing every tar header itself (ustar, GNU long names and sparse files, PAX `x` headers),
the member policy, and the two sinks that write accepted members: a directory (openat-style,
never following a symlink) and a canonical tar stream re-serialised from the accepted members
(for the engine's `PUT /containers/{id}/archive`, so the engine's own tar reader only ever
sees headers we wrote). `python -m sidecar.extract` runs it inside a worker container.

Why our own parser: Python's `tarfile` and the engine's Go reader disagree on malformed input
(a NUL-started checksum ends the archive for one and not the other, global PAX headers, PAX
before GNU long names, archives cut mid-header), and `tarfile` keeps every member in memory.

Decisions (see the README's restore section):
- setuid and setgid bits are stripped (a directory keeps its setgid, which only makes new
  files inherit its group); so is the `security.capability` xattr. Both are counted and
  logged; the archive is still restored.
- a hard link to a name the archive does not hold passes `verify` (checking it would keep
  every name in memory); writing it fails (the directory sink, or the engine).
- refused, with UnsafeArchive: absolute paths, `..`, NUL in names, writes through a symlink,
  symlinks resolving outside the target (or with an empty target), hard links outside it or
  through a symlink, device nodes, global PAX headers, conflicting or repeated extended headers.
- refused, with ArchiveError: malformed headers (a checksum field that is not octal digits,
  a wrong checksum, unknown types, owners or times out of range), extended headers over
  MAX_EXTENDED bytes, an archive cut mid-header or mid-member, a lone zero block, anything
  but zero bytes after the end marker (two zero blocks).
Memory stays flat whatever the member count: data moves in READ_SIZE blocks, extended headers
are capped, and only the archive's symlinks (name and target) and the directories still open
on the current path are kept. Symlinks whose target climbs with `..` are written last, once
the whole archive was accepted: a symlink stored later can change where they lead.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import errno
import gzip
import hashlib
import json
import logging
import os
import re
import stat
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Generator, Iterator, Sequence

import zstandard

from . import crypto
from .archive import compression_for, is_encrypted, read_checksum, symlink_escapes
from .errors import ArchiveError, ChecksumMismatch, EncryptionError, SidecarError, UnsafeArchive
from .keys import DecryptionKeys, load_identities
from .model import Compression
from .naming import CHECKSUM_SUFFIX

logger = logging.getLogger(__name__)

BLOCK = 512
READ_SIZE = 1 << 20
MAX_EXTENDED = 1 << 20  # bytes of one PAX `x` header, GNU long name or sparse map
_PRIVILEGE_BITS = stat.S_ISUID | stat.S_ISGID
_CAPABILITY_XATTR = "security.capability"
_ZERO_BLOCK = bytes(BLOCK)
_MAX_ID = (1 << 32) - 2  # uid_t; -1 means "unchanged" to chown
_MAX_MTIME_NS = 1 << 62

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


class _Tar:
    """Exact reads from the tar stream: a short read is a truncated archive."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self.count = 0

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


# --- headers ------------------------------------------------------------------------------

_OCTAL = re.compile(rb"[0-7]+")
_DECIMAL = re.compile(r"[0-9]+")
_PAX_TIME = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?")
_TYPES = {b"0": Kind.FILE, b"\0": Kind.FILE, b"7": Kind.FILE, b"1": Kind.HARDLINK, b"2": Kind.SYMLINK,
          b"5": Kind.DIR, b"6": Kind.FIFO, b"S": Kind.FILE}


def _number(field: bytes, what: str) -> int:
    """An octal field (padded with spaces or NULs at either end) or a base-256 one."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    if field[:1] == b"\xff":
        return int.from_bytes(field, "big", signed=True)
    digits = field.strip(b" \0")
    if not digits:
        return 0
    if not _OCTAL.fullmatch(digits):
        raise ArchiveError(f"malformed tar header: the {what} field {field!r} is not an octal number")
    return int(digits, 8)


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
    raw = _Raw(name, block[156:157], _number(block[100:108], "mode"), _number(block[108:116], "uid"),
               _number(block[116:124], "gid"), _number(block[124:136], "size"),
               _number(block[136:148], "mtime") * 1_000_000_000, _text(block[157:257]), _text(block[265:297]),
               _text(block[297:329]))
    if raw.size < 0:
        raise ArchiveError(f"malformed tar header: negative size for {name!r}")
    return raw


def _pax_records(data: bytes) -> dict[str, bytes]:
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
    text = records[key].decode("ascii", "replace")
    if not _DECIMAL.fullmatch(text):
        raise ArchiveError(f"malformed PAX header: {key}={text!r} is not a number")
    return int(text)


def _pax_time(text: str) -> int:
    m = _PAX_TIME.fullmatch(text)
    if m is None:
        raise ArchiveError(f"malformed PAX header: mtime={text!r}")
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
            self.pax = _pax_records(data)
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
        if raw.type in (b"1", b"2", b"3", b"4", b"5", b"6"):
            raw.size = 0  # as every tar reader does: these types carry no data, whatever the field says

    def _extended(self, raw: _Raw) -> bytes:
        if raw.size > MAX_EXTENDED:
            raise ArchiveError(f"an extended header of {raw.size} bytes is over the limit of {MAX_EXTENDED}")
        data = self.tar.read_exact(raw.size, "an extended header")
        self._skip_padding(raw.size)
        return data

    def _data_reader(self, raw: _Raw, consumed: list[int]) -> Callable[[], Iterator[bytes]]:
        def chunks() -> Iterator[bytes]:
            while consumed[0] < raw.size:
                data = self.tar.read_exact(min(READ_SIZE, raw.size - consumed[0]), f"the member {raw.name!r}")
                consumed[0] += len(data)
                yield data
        return chunks

    def _skip(self, size: int) -> None:
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
            if len(fields) % 2 or not all(n.isdigit() for n in fields):
                raise ArchiveError(f"malformed sparse map for {raw.name!r}")
            numbers = [int(n) for n in fields]
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
                if not first.isdigit():
                    raise ArchiveError(f"malformed sparse map for {raw.name!r}")
                wanted = 1 + 2 * int(first)
        numbers = bytes(text).split(b"\n")[1:wanted]
        if not all(n.isdigit() for n in numbers):
            raise ArchiveError(f"malformed sparse map for {raw.name!r}")
        raw.size -= len(text)
        return [(int(numbers[i]), int(numbers[i + 1])) for i in range(0, len(numbers), 2)]

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
        raw.realsize = _number(block[483:495], "real size")

    @staticmethod
    def _sparse_entries(area: bytes) -> list[tuple[int, int]]:
        found = []
        for i in range(0, len(area) - 23, 24):
            offset, length = area[i:i + 12], area[i + 12:i + 24]
            if offset.strip(b"\0") or length.strip(b"\0"):
                found.append((_number(offset, "sparse offset"), _number(length, "sparse length")))
        return found


# --- the policy ---------------------------------------------------------------------------

def normalise(name: str) -> str:
    """A member's name relative to the target: no empty or `.` components; refuses absolute
    names, `..` and NUL."""
    if "\0" in name:
        raise UnsafeArchive(f"member {name!r} has a NUL byte in its name")
    if name.startswith("/"):
        raise UnsafeArchive(f"member {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"member {name!r} contains '..'")
    return "/".join(parts)


class Policy:
    """What may be written, member by member, and once more at the end (`finish`): a
    symlink stored later can change where an earlier one leads."""

    def __init__(self) -> None:
        self.symlinks: dict[str, str] = {}
        self.stripped = 0

    def accept(self, raw: _Raw) -> Member:
        display = raw.name.decode("utf-8", "surrogateescape")
        name = normalise(display)
        parts = name.split("/") if name else []
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if prefix in self.symlinks:
                what = "replaces" if i == len(parts) else "is written through"
                raise UnsafeArchive(f"member {display!r} {what} the symlink {prefix!r}")
        if raw.type in (b"3", b"4"):
            raise UnsafeArchive(f"member {display!r} is a device node")
        kind = _TYPES[raw.type]
        if not (0 <= raw.uid <= _MAX_ID and 0 <= raw.gid <= _MAX_ID) or abs(raw.mtime_ns) > _MAX_MTIME_NS:
            raise ArchiveError(f"member {display!r} has an owner or time out of range")
        if not name and kind is not Kind.DIR:
            raise UnsafeArchive(f"member {display!r} names the target itself and is not a directory")
        linkname = raw.linkname.decode("utf-8", "surrogateescape")
        if kind is Kind.SYMLINK:
            self._check_symlink(name, linkname)
            self.symlinks[name] = linkname
        elif kind is Kind.HARDLINK:
            linkname = self._check_hardlink(name, linkname)
        xattrs = raw.xattrs
        mode, kept = self._mode(raw.mode, kind), dict(xattrs)
        if kind is Kind.FILE and _CAPABILITY_XATTR in kept:
            del kept[_CAPABILITY_XATTR]
        if kind is not Kind.HARDLINK and (mode != raw.mode & 0o7777 or len(kept) != len(xattrs)):
            self.stripped += 1
            logger.warning("setuid/setgid bits or file capabilities stripped", extra={"member": name})
        sparse = tuple(raw.sparse) if raw.sparse is not None else None
        realsize = raw.realsize if raw.realsize is not None else raw.size
        if sparse is not None and any(o < 0 or n < 0 or o + n > realsize for o, n in sparse):
            raise ArchiveError(f"sparse member {display!r} has a region beyond its size")
        if sparse is not None and sum(n for _, n in sparse) != raw.size:
            raise ArchiveError(f"sparse member {display!r}: its map does not match its stored data")
        return Member(name, kind, mode, raw.uid, raw.gid, raw.uname.decode("utf-8", "surrogateescape"),
                      raw.gname.decode("utf-8", "surrogateescape"), raw.mtime_ns,
                      raw.size if kind is Kind.FILE else 0, realsize if kind is Kind.FILE else 0, linkname,
                      tuple(sorted(kept.items())), sparse)

    def finish(self) -> None:
        for name, target in self.symlinks.items():
            self._check_symlink(name, target)

    def _mode(self, mode: int, kind: Kind) -> int:
        mode &= 0o7777
        if kind is Kind.DIR:
            return mode & ~stat.S_ISUID
        return mode & ~_PRIVILEGE_BITS

    def _check_symlink(self, name: str, target: str) -> None:
        if target.startswith("/"):
            raise UnsafeArchive(f"symlink {name!r} points to the absolute path {target!r}, outside the volume")
        if "\0" in target or not name or not target:
            raise UnsafeArchive(f"symlink {name!r} -> {target!r} is not allowed (empty target, NUL, or the target "
                                "folder itself)")
        if self._escapes(name.split("/")[:-1], target):
            raise UnsafeArchive(f"symlink {name!r} -> {target!r} points outside the volume")

    def _check_hardlink(self, name: str, target: str) -> str:
        if target.startswith("/") or "\0" in target:
            raise UnsafeArchive(f"hard link {name!r} -> {target!r} points outside the volume")
        parts = [p for p in target.split("/") if p not in ("", ".")]
        if ".." in parts or not parts:
            raise UnsafeArchive(f"hard link {name!r} -> {target!r} points outside the volume")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in self.symlinks:
                raise UnsafeArchive(f"hard link {name!r} -> {target!r} goes through the symlink "
                                    f"{'/'.join(parts[:i])!r}")
        return "/".join(parts)

    def _escapes(self, base: list[str], target: str) -> bool:
        return symlink_escapes(self.symlinks, base, target)


# --- one pass -----------------------------------------------------------------------------

_READ_ERRORS = (ArchiveError, EncryptionError, zstandard.ZstdError, EOFError, gzip.BadGzipFile)


class _Pass:
    """One read of the archive: `members()` yields each accepted member with an iterator
    of its data, in the archive's order; `summary` is set once the whole archive, its end
    and its hash were accepted. Use as a context manager: a read error (damage, a refused
    member) is reported as a checksum mismatch whenever the hash says the file is not the
    one that was written."""

    def __init__(self, archive: ArchiveFile, keys: DecryptionKeys | None):
        self.archive, self.keys = archive, keys
        self.raw = _FdReader(archive.fd)
        self.policy = Policy()
        self.summary: Summary | None = None
        self._gen: Generator[tuple[Member, Iterator[bytes]], None, None] | None = None
        self._tar: _Tar | None = None

    @property
    def tar_bytes(self) -> int:
        """Bytes of tar read so far."""
        return self._tar.count if self._tar is not None else 0

    def __enter__(self) -> "_Pass":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
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
        with _plain(self.archive, self.raw, self.keys) as plain:
            tar = self._tar = _Tar(_decompressed(plain, self.archive.compression))
            for header, data in _Parser(tar).members():
                member = self.policy.accept(header)
                count += 1
                if not member.name:
                    root = member
                yield member, data()
            self.policy.finish()
            while plain.read(READ_SIZE):  # the age stream is authenticated up to its very end
                pass
        self.raw.drain()
        actual = self.raw.sha.hexdigest()
        expected = self.archive.expected_sha256
        if expected is not None and actual != expected:
            raise ChecksumMismatch(f"{self.archive.name}: SHA-256 is {actual}, the checksum file says {expected}")
        if count == 0:
            raise ArchiveError(f"{self.archive.name}: the archive holds no members")
        self.summary = Summary(count, tar.count, actual, self.policy.stripped, root)


def verify(archive: ArchiveFile, keys: DecryptionKeys | None = None) -> Summary:
    """The whole check without writing anything (the same parser and policy as `extract`,
    on the same descriptor): run it before stopping a container, so a bad archive is
    refused with the app untouched."""
    with _Pass(archive, keys) as one:
        for _member, data in one.members():
            for _ in data:
                pass
    assert one.summary is not None
    return one.summary


def list_members(archive: ArchiveFile, keys: DecryptionKeys | None = None) -> Iterator[Member]:
    """Every accepted member, in the archive's order, without writing anything (the same
    read, parser and policy as `verify`); a damaged, unsafe or swapped archive raises as
    `verify` does, possibly after some members were yielded."""
    with _Pass(archive, keys) as one:
        for member, data in one.members():
            for _ in data:
                pass
            yield member


def verify_file(path: Path, keys: DecryptionKeys | None = None, require_checksum: bool = True) -> Summary:
    """`verify` of an archive file by its path (opened once)."""
    with open_archive(path, require_checksum) as archive:
        return verify(archive, keys)


def extract(archive: ArchiveFile, into: Path, keys: DecryptionKeys | None = None,
            progress: Callable[[int], None] | None = None,
            select: Callable[[Member], bool] | None = None) -> Summary:
    """Check and write every member into the folder `into` in one pass; directories get
    their metadata after their contents, the root entry is applied to `into` itself.
    `progress` gets the tar bytes read so far after each member. `select`: write only the
    members it accepts (one file or folder back); every member is still read and checked,
    and folders on the way to a selected member that `into` lacks are made (mode 0755)."""
    with DirectoryWriter(into) as writer, _Pass(archive, keys) as one:
        for member, data in one.members():
            if select is not None and not select(member):
                for _ in data:
                    pass
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
    return ["python", "-m", "sidecar.extract", "--archive", archive, "--into", into,
            *(["--identity-file", identity_file] if identity_file else []),
            *(["--passphrase-file", passphrase_file] if passphrase_file else [])]


# --- the canonical stream -----------------------------------------------------------------

_TAR_TYPES = {Kind.FILE: tarfile.REGTYPE, Kind.DIR: tarfile.DIRTYPE, Kind.SYMLINK: tarfile.SYMTYPE,
              Kind.HARDLINK: tarfile.LNKTYPE, Kind.FIFO: tarfile.FIFOTYPE}


def canonical_tar(archive: ArchiveFile, keys: DecryptionKeys | None = None,
                  on_done: Callable[[Summary], None] | None = None) -> Iterator[bytes]:
    """A tar stream re-serialised from exactly the accepted members (PAX format, headers we
    write), produced while the archive is read once and checked: the engine's own tar reader
    never sees a header we did not write. Leaves out the root entry (the engine skips ".";
    see `root_entry`); sparse files are written out in full. Raises as soon as a member is
    refused; the end marker comes only after the whole archive, its hash included, was
    accepted. `on_done` gets the summary. Small pieces (headers, padding) are sent together
    in blocks of up to READ_SIZE."""
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
            if not member.name:
                for _ in data:
                    pass
            elif is_deferred(member):
                deferred.append(member)
            else:
                yield header(member)
                yield from _expanded(member, data)
                if member.kind is Kind.FILE and member.realsize % BLOCK:
                    yield bytes(BLOCK - member.realsize % BLOCK)
    assert one.summary is not None
    for member in deferred:
        yield header(member)
    if on_done is not None:
        on_done(one.summary)
    yield bytes(2 * BLOCK)


def is_deferred(member: Member) -> bool:
    """A symlink whose target climbs with `..`: a symlink stored later can change where it
    leads, so it is written only after the whole archive was accepted (the sinks keep these
    few until the end)."""
    return member.kind is Kind.SYMLINK and ".." in member.linkname.split("/")


def header(member: Member) -> bytes:
    """The PAX-format header of one accepted member, as we write it."""
    info = tarfile.TarInfo(member.name)
    info.type = _TAR_TYPES[member.kind]
    info.mode, info.uid, info.gid = member.mode, member.uid, member.gid
    info.uname, info.gname = member.uname, member.gname
    info.size = member.realsize if member.kind is Kind.FILE else 0
    info.linkname = member.linkname
    seconds, ns = divmod(member.mtime_ns, 1_000_000_000)
    info.mtime = seconds
    pax = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in member.xattrs}
    if ns:
        pax["mtime"] = f"{seconds}.{ns:09d}"
    info.pax_headers = pax
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def root_entry(name: str, root: Member) -> bytes:
    """A one-entry tar giving the folder `name` the root entry's owner, mode and times (the
    engine skips a "." entry: this is unpacked into the mount's parent folder)."""
    return header(dataclasses.replace(root, name=name)) + bytes(2 * BLOCK)


def _expanded(member: Member, data: Iterator[bytes]) -> Iterator[bytes]:
    """A member's data with a sparse file's holes written out as zeros."""
    if member.sparse is None:
        yield from data
        return
    chunks = _Chunks(data)
    at = 0
    for offset, length in member.sparse:
        yield from _zeros(offset - at)
        yield from chunks.take(length)
        at = offset + length
    yield from _zeros(member.realsize - at)


def _zeros(n: int) -> Iterator[bytes]:
    while n > 0:
        step = min(n, READ_SIZE)
        yield bytes(step)
        n -= step


class _Chunks:
    """Exactly n bytes at a time from an iterator of chunks."""

    def __init__(self, data: Iterator[bytes]):
        self._data = data
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

    def __init__(self, into: Path):
        self.into = into
        self._stack: list[_Open] = []
        self._deferred: list[Member] = []
        self._as_root = os.geteuid() == 0
        self._xattr_warned = False

    def __enter__(self) -> "DirectoryWriter":
        try:
            fd = os.open(self.into, _DIR_FLAGS)
        except OSError as exc:
            raise ArchiveError(f"{self.into}: cannot open the restore target ({exc.strerror})") from exc
        st = os.fstat(fd)
        self._stack.append(_Open("", fd, None, (st.st_atime_ns, st.st_mtime_ns)))
        return self

    def __exit__(self, *exc_info) -> None:
        while self._stack:
            os.close(self._stack.pop().fd)

    def finish(self) -> None:
        """Call once the whole archive was accepted: writes the deferred symlinks, then
        the metadata of the directories still open."""
        for member in self._deferred:
            self._write(member, iter(()))
        while self._stack:
            self._leave()

    def write(self, member: Member, data: Iterator[bytes]) -> None:
        if is_deferred(member):
            self._deferred.append(member)
        else:
            self._write(member, data)

    def _write(self, member: Member, data: Iterator[bytes]) -> None:
        if member.kind is Kind.DIR:
            self._enter(member.name)
            self._stack[-1].member = member
            return
        parent, _, base = member.name.rpartition("/")
        self._enter(parent)
        fd = self._stack[-1].fd
        self._make_room(fd, member.name, base)
        if member.kind is Kind.FILE:
            self._file(fd, base, member, data)
        elif member.kind is Kind.SYMLINK:
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
            os.chmod(fd, 0o755)  # a folder the archive does not list: tar's default mode
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
                self._chown(top.fd, top.member)
                os.chmod(top.fd, top.member.mode)
                self._xattrs(top.fd, top.member)
                os.utime(top.fd, ns=(top.member.mtime_ns, top.member.mtime_ns))
            elif top.times is not None:
                os.utime(top.fd, ns=top.times)
        finally:
            os.close(top.fd)

    def _make_room(self, fd: int, name: str, base: str) -> None:
        """A member replaces what an earlier one (or the folder) left under its name."""
        try:
            st = os.stat(base, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        try:
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(base, dir_fd=fd)
            else:
                os.unlink(base, dir_fd=fd)
        except OSError as exc:
            raise ArchiveError(f"member {name!r} cannot replace what is already there ({exc.strerror})") from exc

    # --- members --------------------------------------------------------------------------
    def _file(self, parent: int, base: str, member: Member, data: Iterator[bytes]) -> None:
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=parent)
        try:
            if member.sparse is None:
                for chunk in data:
                    _write_all(fd, chunk)
            else:
                chunks = _Chunks(data)
                for offset, length in member.sparse:
                    os.lseek(fd, offset, os.SEEK_SET)
                    for part in chunks.take(length):
                        _write_all(fd, part)
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


# --- python -m sidecar.extract --------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """Restore one archive into a folder (run inside a worker container). Prints a JSON
    summary; exit 0, 65 when the archive is damaged or unsafe, 1 on other failures."""
    parser = argparse.ArgumentParser(prog="python -m sidecar.extract", description=(
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
