"""The second medium: a mounted folder (a USB disk, a NAS share at /mnt/copy) as the
destination "local". A small direct implementation rather than rclone's local backend:
the sidecar then needs no rclone for it, and the copy can be made durable (fsync) and
checked as read back from the disk.

Layout as on the backup volume: "daily/NAME" with "daily/NAME.sha256" beside it, written
after the archive (the pair marks a complete copy, as with rclone remotes). A copy is
written to NAME.partial, fsynced, read back from the disk (its cached pages dropped
first) and compared with the SHA-256, then renamed into place. Files are never readable
by others (the group only when BACKUP_FILE_MODE allows), folders 0700.

The root folder must exist: it is a mount, and a missing mount is reported as
DestinationUnreachable (retried next cycle) instead of filling the container's own layer.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from ..core.config import LocalConfig
from ..core.errors import ChecksumMismatch, DestinationError, DestinationUnreachable
from ..core.fsutil import fsync_dir
from ..core.naming import PARTIAL_SUFFIX
from .base import RemoteObject

logger = logging.getLogger(__name__)

READ_SIZE = 1 << 20
CHECKSUM_SUFFIX = ".sha256"
# The disk is gone or not writable: wait for the next cycle rather than fail the copy for good.
_GONE = {errno.ENOENT, errno.EIO, errno.ENODEV, errno.ENXIO, errno.EROFS, errno.ESTALE, errno.ENOTCONN,
         errno.EHOSTDOWN, errno.ETIMEDOUT}


class LocalDestination:
    name = "local"

    def __init__(self, config: LocalConfig):
        self.config = config
        self.root = Path(config.root)
        self.file_mode = config.file_mode & 0o770

    # --- names -----------------------------------------------------------------------
    def key(self, relpath: str) -> str:
        return str(self._path(relpath))

    def describe(self, relpath: str = "") -> str:
        return self.key(relpath) if relpath else f"{self.root}/"

    # --- operations --------------------------------------------------------------------
    def check(self) -> None:
        self._root_ready("check")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise DestinationError(f"local: {self.root} is not writable by this process (uid {os.getuid()})",
                                   operation="check", destination=self.name)
        logger.info("local destination ready", extra={"phase": "check", "destination": self.name,
                                                      "path": str(self.root)})

    def upload(self, path: Path, relpath: str, sha256: str) -> RemoteObject:
        started = time.monotonic()
        self._root_ready("upload")
        target = self._path(relpath)
        try:
            obj = self._write(path, target, relpath, sha256.lower(), "upload")
        except ChecksumMismatch as exc:
            raise ChecksumMismatch(f"{path}: {exc}; not copying it") from None
        logger.info("archive copied to the local destination", extra={
            "phase": "upload", "destination": self.name, "key": str(target), "bytes": obj.size,
            "seconds": round(time.monotonic() - started, 3)})
        return obj

    def copy(self, src_relpath: str, dst_relpath: str) -> RemoteObject:
        """A promotion: a hard link (as on the backup volume), else a verified copy."""
        src = self.head(src_relpath)
        if src is None or src.sha256 is None:
            raise DestinationError(f"local: copy of {self.key(src_relpath)} failed: the source (with its checksum) "
                                   "does not exist", operation="copy", destination=self.name,
                                   key=self.key(src_relpath))
        target = self._path(dst_relpath)
        try:
            self._mkdirs(target.parent)
            _unlink(target.with_name(target.name + CHECKSUM_SUFFIX))
            _unlink(target)
            os.link(self._path(src_relpath), target)
            self._write_checksum(target, src.sha256)
            fsync_dir(target.parent)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise self._error("copy", target, exc) from None
            return self._write(self._path(src_relpath), target, dst_relpath, src.sha256, "copy")
        return self._object(dst_relpath, src.sha256)

    def list(self, under: str = "") -> list[RemoteObject]:
        """Complete copies (the archive and its .sha256), relpath starting with `under`."""
        self._root_ready("list")
        found = []
        try:
            for folder, dirs, files in os.walk(self.root, onerror=_raise):
                dirs.sort()
                names = set(files)
                for name in sorted(files):
                    if name.endswith((CHECKSUM_SUFFIX, PARTIAL_SUFFIX)) or name + CHECKSUM_SUFFIX not in names:
                        continue
                    rel = str((Path(folder) / name).relative_to(self.root))
                    if rel.startswith(under.lstrip("/")):
                        found.append(self._object(rel, None))
        except OSError as exc:
            raise self._error("list", self.root, exc) from None
        return found

    def head(self, relpath: str) -> RemoteObject | None:
        try:
            return self._object(relpath, self._checksum(self._path(relpath)))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._error("head", self._path(relpath), exc) from None

    def download(self, relpath: str, dest: Path, file_mode: int = 0o600) -> RemoteObject:
        source = self._path(relpath)
        try:
            expected = self._checksum(source)
        except FileNotFoundError:
            raise DestinationError(f"local: {source} does not exist", operation="download", destination=self.name,
                                   key=str(source)) from None
        except OSError as exc:
            raise self._error("download", source, exc) from None
        if expected is None:
            raise DestinationError(f"local: {source} has no {CHECKSUM_SUFFIX} beside it; refusing a copy that "
                                   "cannot be verified", operation="download", destination=self.name, key=str(source))
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
        try:
            size, digest = _copy_file(source, partial, file_mode)
            if digest != expected:
                raise ChecksumMismatch(f"{source}: SHA-256 is {digest}, its {CHECKSUM_SUFFIX} says {expected}")
            os.replace(partial, dest)
            fsync_dir(dest.parent)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise self._error("download", source, exc) from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return RemoteObject(relpath, str(source), size, _mtime(dest), digest)

    def delete(self, relpaths: Sequence[str]) -> None:
        for relpath in relpaths:
            target = self._path(relpath)
            try:
                _unlink(target.with_name(target.name + CHECKSUM_SUFFIX))
                _unlink(target)
            except OSError as exc:
                raise self._error("delete", target, exc) from None
        logger.info("archives deleted from the local destination", extra={
            "phase": "delete", "destination": self.name, "objects": len(relpaths)})

    # --- internals -----------------------------------------------------------------------
    def _path(self, relpath: str) -> Path:
        parts = [p for p in relpath.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise DestinationError(f"local: {relpath!r} is not a valid archive path (expected e.g. daily/NAME)",
                                   destination=self.name)
        return self.root.joinpath(*parts)

    def _root_ready(self, phase: str) -> None:
        if not self.root.is_dir():
            raise DestinationUnreachable(f"local: {self.root} does not exist or is not a folder: is the disk "
                                         "mounted? (the sidecar never creates it)", operation=phase,
                                         destination=self.name, key=str(self.root))

    def _write(self, source: Path, target: Path, relpath: str, sha256: str, phase: str) -> RemoteObject:
        partial = target.with_name(target.name + PARTIAL_SUFFIX)
        try:
            self._mkdirs(target.parent)
            _unlink(target.with_name(target.name + CHECKSUM_SUFFIX))  # incomplete until the checksum is back
            _size, digest = _copy_file(source, partial, self.file_mode)
            if digest != sha256:
                raise ChecksumMismatch(f"SHA-256 is {digest}, expected {sha256}")
            written = _read_back(partial)
            if written != sha256:
                raise DestinationError(f"local: {partial} reads back with SHA-256 {written}, expected {sha256}: "
                                       "the disk does not keep what was written", operation=phase,
                                       destination=self.name, key=str(target))
            os.replace(partial, target)
            self._write_checksum(target, sha256)
            fsync_dir(target.parent)
        except OSError as exc:
            raise self._error(phase, target, exc) from None
        finally:
            _unlink(partial)
        return self._object(relpath, sha256)

    def _write_checksum(self, target: Path, sha256: str) -> None:
        checksum = target.with_name(target.name + CHECKSUM_SUFFIX)
        partial = checksum.with_name(checksum.name + PARTIAL_SUFFIX)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, self.file_mode)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), self.file_mode)
            f.write(f"{sha256}  {target.name}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, checksum)

    def _mkdirs(self, folder: Path) -> None:
        missing = []
        while folder != self.root and not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        for path in reversed(missing):
            os.mkdir(path, 0o700)
            os.chmod(path, 0o700)  # whatever the umask

    def _checksum(self, path: Path) -> str | None:
        try:
            text = path.with_name(path.name + CHECKSUM_SUFFIX).read_text().strip()
        except FileNotFoundError:
            if not path.exists():
                raise
            return None
        digest = text.split()[0].lower() if text else ""
        return digest if len(digest) == 64 else None

    def _object(self, relpath: str, sha256: str | None) -> RemoteObject:
        path = self._path(relpath)
        st = path.stat()
        return RemoteObject(relpath, str(path), st.st_size, datetime.fromtimestamp(st.st_mtime, timezone.utc),
                            sha256)

    def _error(self, phase: str, path: Path, exc: OSError) -> DestinationError:
        kind = DestinationUnreachable if exc.errno in _GONE else DestinationError
        return kind(f"local: {phase} of {path} failed: {exc.strerror or exc}", operation=phase,
                    destination=self.name, key=str(path))


def _copy_file(source: Path, dest: Path, mode: int) -> tuple[int, str]:
    """Copy with the SHA-256 of what was read, fsynced; (bytes, hex digest)."""
    sha, size = hashlib.sha256(), 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
        os.fchmod(out.fileno(), mode)
        while block := src.read(READ_SIZE):
            sha.update(block)
            out.write(block)
            size += len(block)
        out.flush()
        os.fsync(out.fileno())
    return size, sha.hexdigest()


def _read_back(path: Path) -> str:
    """The SHA-256 of a file as the disk returns it: its cached pages are dropped first
    (after the fsync they are clean), so the read reaches the medium where the kernel can."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        while block := f.read(READ_SIZE):
            sha.update(block)
    return sha.hexdigest()


def _mtime(path: Path) -> datetime:
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _raise(exc: OSError) -> None:
    raise exc
