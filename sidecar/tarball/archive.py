"""Archive files: writing a tar stream compressed under a temporary name with its
SHA-256 computed on the way, publishing it atomically, naming and checksum files, and
reading an archive's tar bytes back (iter_tar). Checking and restoring members is the
checked extractor's alone (sidecar/tarball/extract.py: one parser that checks what it writes).
"""

from __future__ import annotations

import contextlib
import fnmatch
import gzip
import hashlib
import logging
import os
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Mapping

import zstandard

from . import crypto
from sidecar.core.errors import ArchiveError, BackupAborted, EncryptionError
from sidecar.core.fsutil import fsync_dir
from sidecar.core.keys import DecryptionKeys
from sidecar.core.model import Compression
from sidecar.core.naming import CHECKSUM_SUFFIX, ENCRYPTED_SUFFIX, PARTIAL_SUFFIX
from .streams import IterReader

logger = logging.getLogger(__name__)

ZSTD_LEVEL = 3
GZIP_LEVEL = 6
READ_SIZE = 1 << 20


@dataclass(frozen=True)
class ArchiveResult:
    path: Path
    size: int  # bytes on disk
    raw_bytes: int  # bytes of tar read from the engine
    sha256: str


def is_encrypted(path: Path) -> bool:
    return path.name.removesuffix(PARTIAL_SUFFIX).endswith(ENCRYPTED_SUFFIX)


def compression_for(path: Path) -> Compression:
    name = path.name.removesuffix(PARTIAL_SUFFIX).removesuffix(ENCRYPTED_SUFFIX)
    if name.endswith(".tar.zst"):
        return Compression.ZSTD
    if name.endswith(".tar.gz"):
        return Compression.GZIP
    if name.endswith(".tar"):
        return Compression.NONE
    raise ArchiveError(f"{path}: not an archive name (expected .tar.zst, .tar.gz or .tar, optionally followed by .age)")


@contextlib.contextmanager
def _plain_reader(raw: BinaryIO, path: Path, keys: DecryptionKeys | None) -> Iterator[BinaryIO]:
    """The archive's bytes as written before encryption (the file itself when not encrypted)."""
    if not is_encrypted(path):
        yield raw
        return
    if keys is None or (not keys.identities and keys.passphrase is None):
        raise EncryptionError(f"{path.name} is encrypted: set BACKUP_AGE_IDENTITY_FILE or BACKUP_AGE_PASSPHRASE "
                              "to read it")
    with crypto.decrypting(raw, list(keys.identities) or None, keys.passphrase) as plain:
        yield plain


class HashingFile:
    """Writes through to a file while hashing and counting what was written."""

    def __init__(self, fileobj: BinaryIO):
        self._f = fileobj
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()


class ArchiveWriter:
    """One archive being written. Use as a context manager: leaving it without
    `finish()` removes the partial file, so a failure never leaves a file that looks
    finished."""

    def __init__(self, final_path: Path, compression: Compression, file_mode: int = 0o600,
                 encryption: "crypto.EncryptionConfig | None" = None):
        self.final_path = final_path
        self.encryption = encryption
        self.partial_path = final_path.with_name(final_path.name + PARTIAL_SUFFIX)
        self.compression = compression
        self.file_mode = file_mode
        self.raw_bytes = 0
        self._file: BinaryIO | None = None
        self._hashing: HashingFile | None = None
        self._done = False

    def __enter__(self) -> "ArchiveWriter":
        self.final_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.partial_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.file_mode)
        os.fchmod(fd, self.file_mode)  # the umask must not widen or narrow the chosen mode
        self._file = os.fdopen(fd, "wb")
        self._hashing = HashingFile(self._file)
        return self

    def __exit__(self, *exc_info) -> None:
        if not self._done:
            self.abort()

    def write_stream(
        self,
        chunks: Iterable[bytes],
        exclude: tuple[str, ...] = (),
        on_progress: Callable[[int], None] | None = None,
    ) -> int:
        """Compress a tar stream into the partial file; returns the tar bytes read.
        When this returns, the source has been read completely."""
        assert self._hashing is not None
        counted = self._count(chunks, on_progress)
        try:
            with contextlib.ExitStack() as stack:
                # Encrypted while written: the checksum and size are of the encrypted bytes,
                # and no plaintext reaches the disk. Leaving the stack finishes the age
                # stream; an exception abandons it (and the caller removes the partial).
                sink = self._hashing
                if self.encryption is not None:
                    sink = stack.enter_context(crypto.encrypting(self._hashing, self.encryption))
                if self.compression is Compression.ZSTD:
                    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1)
                    out = compressor.stream_writer(sink, closefd=False)
                elif self.compression is Compression.GZIP:
                    out = gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=GZIP_LEVEL, mtime=0)
                else:
                    out = None
                target = out if out is not None else sink
                if exclude:
                    filter_tar(counted, target, exclude)
                else:
                    for chunk in counted:
                        target.write(chunk)
                if out is not None:
                    out.close()
        finally:
            # Release the source at once, also on failure: an engine stream left open
            # keeps the container locked.
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        return self.raw_bytes

    def _count(self, chunks: Iterable[bytes], on_progress) -> Iterator[bytes]:
        for chunk in chunks:
            self.raw_bytes += len(chunk)
            if on_progress:
                on_progress(self.raw_bytes)
            yield chunk

    def finish(self) -> ArchiveResult:
        """Make the archive durable and visible: fsync, write the checksum (durably), then
        rename. The checksum goes first because writing it needs space and a rename does
        not: a full disk leaves only partials (removed by the caller's abort), never an
        archive without its .sha256. A crash between the two leaves NAME.sha256 beside
        NAME.partial, which BackupStore.clean_partials removes."""
        assert self._file is not None and self._hashing is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        digest = self._hashing.sha.hexdigest()
        checksum = write_checksum(self.final_path, digest, self.file_mode)
        try:
            os.replace(self.partial_path, self.final_path)
        except BaseException:
            checksum.unlink(missing_ok=True)
            raise
        fsync_dir(self.final_path.parent)
        self._done = True
        return ArchiveResult(self.final_path, self._hashing.size, self.raw_bytes, digest)

    def abort(self) -> None:
        self._done = True
        if self._file is not None and not self._file.closed:
            try:
                self._file.close()
            except OSError:
                pass
        try:
            self.partial_path.unlink()
        except FileNotFoundError:
            pass


def write_checksum(path: Path, digest: str, file_mode: int = 0o600, *, replace: bool = True) -> Path:
    """NAME.sha256 in sha256sum's format, durable and atomic: written to a partial file
    (mode `file_mode` whatever the umask), fsynced, then renamed over NAME.sha256, or,
    with `replace=False`, linked there so an existing checksum is never replaced
    (FileExistsError). On failure (disk full) nothing is left behind; the folder's fsync
    is the caller's."""
    checksum = path.with_name(path.name + CHECKSUM_SUFFIX)
    tmp = checksum.with_name(checksum.name + PARTIAL_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL), file_mode)
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), file_mode)
            f.write(f"{digest}  {path.name}\n")
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, checksum)
        else:
            os.link(tmp, checksum)
    finally:
        tmp.unlink(missing_ok=True)
    return checksum


def read_checksum(path: Path) -> str | None:
    checksum = path.with_name(path.name + CHECKSUM_SUFFIX)
    try:
        text = checksum.read_text().strip()
    except FileNotFoundError:
        return None
    digest = text.split()[0] if text else ""
    if len(digest) != 64:
        raise ArchiveError(f"{checksum}: not a sha256sum line")
    return digest.lower()


def sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(READ_SIZE):
            sha.update(block)
    return sha.hexdigest()


# --- excludes -----------------------------------------------------------------------

def is_excluded(name: str, patterns: tuple[str, ...]) -> bool:
    """A member is excluded when a pattern matches its path relative to the volume, its
    base name, or one of its parent folders (so excluding 'cache' drops 'cache/**')."""
    rel = _relname(name)
    if not rel:
        return False
    parts = rel.split("/")
    for pattern in patterns:
        pat = pattern.strip("/")
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if fnmatch.fnmatchcase(prefix, pat) or fnmatch.fnmatchcase(parts[i - 1], pat):
                return True
    return False


def filter_tar(chunks: Iterable[bytes], out, patterns: tuple[str, ...]) -> None:
    """Copy a tar stream to `out`, leaving out members matching `patterns`."""
    excluded: set[str] = set()
    with tarfile.open(fileobj=IterReader(chunks), mode="r|", encoding="utf-8", errors="surrogateescape") as src, \
            tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
                         errors="surrogateescape") as dst:
        for member in src:
            rel = _relname(member.name)
            if is_excluded(member.name, patterns) or (member.islnk() and _relname(member.linkname) in excluded):
                excluded.add(rel)
                continue
            dst.addfile(member, src.extractfile(member) if member.isreg() else None)


# --- reading back ---------------------------------------------------------------------

def _decompressed(raw, compression: Compression):
    if compression is Compression.ZSTD:
        return zstandard.ZstdDecompressor().stream_reader(raw, closefd=False, read_across_frames=True)
    if compression is Compression.GZIP:
        return gzip.GzipFile(fileobj=raw, mode="rb")
    return raw


def iter_raw(path: Path, block: int = READ_SIZE) -> Iterator[bytes]:
    """A file's bytes as stored, in blocks."""
    with open(path, "rb") as f:
        while data := f.read(block):
            yield data


def iter_tar(path: Path, block: int = READ_SIZE, keys: DecryptionKeys | None = None) -> Iterator[bytes]:
    """The decompressed (and decrypted) tar bytes of an archive, in blocks (for the
    engine's put_archive and load)."""
    with open(path, "rb") as f, _plain_reader(f, path, keys) as plain:
        stream = _decompressed(plain, compression_for(path))
        while data := stream.read(block):
            yield data


def _relname(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return "" if name in (".", "") else name.rstrip("/")


class ProgressLog:
    """Calls back at most every `interval` seconds with bytes so far and the rate; raises
    BackupAborted as soon as `cancel` is set."""

    def __init__(self, report: Callable[[int, float], None], interval: float,
                 cancel: threading.Event | None = None, target: str = ""):
        self._report = report
        self._interval = interval
        self._cancel = cancel
        self._target = target
        self._start = time.monotonic()
        self._last = self._start

    def __call__(self, done: int) -> None:
        if self._cancel is not None and self._cancel.is_set():
            raise BackupAborted(self._target, "read", "the sidecar is shutting down")
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            elapsed = now - self._start
            self._report(done, done / elapsed if elapsed > 0 else 0.0)


MAX_SYMLINK_HOPS = 40  # as the kernel's limit on nested symlinks


def symlink_escapes(symlinks: Mapping[str, str], base: list[str], target: str) -> bool:
    """Resolve `target` from the folder `base` as the kernel would, through the archive's
    own symlinks (relative path -> link text); True when it leaves the root (or loops)."""
    parts = list(base)
    pending = [p for p in target.split("/") if p not in ("", ".")]
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if not parts:
                return True
            parts.pop()
            continue
        parts.append(part)
        link = symlinks.get("/".join(parts))
        if link is not None:
            hops += 1
            if hops > MAX_SYMLINK_HOPS or link.startswith("/"):
                return True
            parts.pop()
            pending = [p for p in link.split("/") if p not in ("", ".")] + pending
    return False
