"""The backup volume: where archives live, which exist, stale partial files, the
journal of containers the sidecar interrupted, and per-target locks.

Layout under BACKUP_DIR:
    daily/ weekly/ monthly/ hourly/   archives and their .sha256 files
    .sidecar/journal.json             containers stopped or paused by a backup in progress
    .sidecar/locks/NAME.lock          held while NAME is being backed up (any process)
    .sidecar/heartbeat                touched by the daemon's loop (healthcheck)
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Iterator, TypeVar

from sidecar.tarball.archive import read_checksum, write_checksum
from sidecar.core.errors import ArchiveError, BackupBusy, NotFound
from sidecar.core.fsutil import fsync_dir
from sidecar.core.naming import (
    CHECKSUM_SUFFIX,
    IMAGE_FOLDER,
    PARTIAL_SUFFIX,
    ArchiveName,
    ImageArchiveName,
    parse_image_name,
    parse_name,
    safe_component,
    safe_relpath,
)
from sidecar.core.presetnames import canonical_type
from sidecar.core.schedule import Frequency
from .state import JsonState

logger = logging.getLogger(__name__)

STATE_DIR = ".sidecar"


N = TypeVar("N", ArchiveName, ImageArchiveName)


@dataclass(frozen=True)
class Stored(Generic[N]):
    """A finished file on the backup volume: a volume archive or an image export."""

    path: Path
    name: N
    size: int

    @property
    def checksum_path(self) -> Path:
        return self.path.with_name(self.path.name + CHECKSUM_SUFFIX)

    @property
    def has_checksum(self) -> bool:
        return self.checksum_path.exists()


StoredArchive = Stored[ArchiveName]
StoredImage = Stored[ImageArchiveName]


class BackupStore:
    def __init__(self, root: Path, file_mode: int = 0o600):
        self.root = root
        self.file_mode = file_mode
        self.state_dir = root / STATE_DIR

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for path in (self.state_dir, self.state_dir / "locks"):
            path.mkdir(exist_ok=True, mode=0o700)
            os.chmod(path, 0o700)

    # --- archives ---------------------------------------------------------------
    def path(self, relpath: str) -> Path:
        return self.root / safe_relpath(relpath)

    def taken(self, relpath: str) -> bool:
        """True when an archive, its partial or its checksum already uses this name."""
        p = self.path(relpath)
        return any(
            Path(str(p) + suffix).exists() for suffix in ("", PARTIAL_SUFFIX, CHECKSUM_SUFFIX)
        )

    def archives(self, backup_name: str | None = None) -> list[StoredArchive]:
        """Finished archives (partials excluded), oldest first."""
        found: list[StoredArchive] = []
        for freq in Frequency:
            folder = self.root / freq.value
            if not folder.is_dir():
                continue
            for entry in os.scandir(folder):
                name = parse_name(entry.name)
                if name is None or not entry.is_file(follow_symlinks=False):
                    continue
                if backup_name is not None and name.backup_name != backup_name:
                    continue
                found.append(StoredArchive(Path(entry.path), name, entry.stat().st_size))
        found.sort(key=lambda a: (a.name.stamp, a.name.seq, a.name.backup_name, a.name.volume_name))
        return found

    def image_exports(self) -> list["StoredImage"]:
        """Finished image exports (images/), oldest first."""
        folder = self.root / IMAGE_FOLDER
        found = []
        if folder.is_dir():
            for entry in os.scandir(folder):
                name = parse_image_name(entry.name)
                if name is not None and entry.is_file(follow_symlinks=False):
                    found.append(StoredImage(Path(entry.path), name, entry.stat().st_size))
        found.sort(key=lambda i: (i.name.stamp, i.name.seq, i.name.image, i.name.tag))
        return found

    def latest(self, backup_name: str, volume_name: str) -> StoredArchive | None:
        """The newest archive; of promoted copies sharing its stamp, the original (lowest frequency)."""
        kind = canonical_type(volume_name)  # a preset's dump by either of its names
        matching = [a for a in self.archives(backup_name) if a.name.kind == kind]
        return max(matching, key=lambda a: a.name.recency, default=None)

    def resolve(self, ref: str) -> Path:
        """An archive named on the command line: a path, or a name relative to BACKUP_DIR."""
        candidates = [Path(ref)]
        if not Path(ref).is_absolute():
            candidates.append(self.root / ref)
            name = parse_name(Path(ref).name) or parse_image_name(Path(ref).name)
            if name is not None:
                candidates.append(self.root / name.relpath)
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise NotFound(f"archive {ref!r} not found (looked in {self.root})")

    def clean_partials(self) -> list[Path]:
        """Remove what a crash left half-written: partial archives and image exports, their
        partial checksums, and checksums whose archive is missing (an archive is renamed
        into place after its checksum is written; a deletion removes the archive first).
        Returns what was removed. What a live backup in another process may be writing is
        kept: a target's files while its lock is held, image exports while any is."""
        removed = []
        for folder in [self.root / f.value for f in Frequency] + [self.root / IMAGE_FOLDER]:
            if not folder.is_dir():
                continue
            for entry in os.scandir(folder):
                if self._stale(folder, entry.name):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
                    logger.warning("removed a partial archive left by an interrupted backup",
                                   extra={"path": entry.path})
        return removed

    def _stale(self, folder: Path, filename: str) -> bool:
        if filename.endswith(PARTIAL_SUFFIX):
            archive = filename[: -len(PARTIAL_SUFFIX)].removesuffix(CHECKSUM_SUFFIX)
        elif filename.endswith(CHECKSUM_SUFFIX) and not (folder / filename[: -len(CHECKSUM_SUFFIX)]).exists():
            archive = filename[: -len(CHECKSUM_SUFFIX)]
        else:
            return False
        if folder.name == IMAGE_FOLDER:
            return parse_image_name(archive) is not None and not self._any_locked()
        name = parse_name(archive)
        return name is not None and not self.is_locked(name.backup_name)

    def _any_locked(self) -> bool:
        """Whether any target's lock is held (image exports run under their target's lock)."""
        folder = self.state_dir / "locks"
        if not folder.is_dir():
            return False
        return any(self.is_locked(p.name.removesuffix(".lock")) for p in folder.glob("*.lock"))

    # --- rotation ------------------------------------------------------------------
    def archive_at(self, path: Path) -> StoredArchive:
        """The stored archive at `path` (e.g. one just written), its name parsed."""
        name = parse_name(path.name)
        if name is None:
            raise ArchiveError(f"{path}: not an archive name")
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise NotFound(f"archive {str(path)!r} not found") from None
        return StoredArchive(path, name, size)

    def link(self, existing: StoredArchive, name: ArchiveName) -> StoredArchive:
        """Make `existing` also available as `name` (another frequency's folder) with a
        hard link: no extra space, same mode and owner. The checksum is a new small file
        with the same digest naming the new file, so `sha256sum -c` works in every folder.
        Never overwrites: ArchiveError when the name (or its checksum or partial) is taken."""
        if self.taken(name.relpath):
            raise ArchiveError(f"{name.relpath}: already exists in {self.root}; not overwriting it")
        target = self.path(name.relpath)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            os.link(existing.path, target)  # fails if the name appeared meanwhile
        except OSError as exc:
            raise ArchiveError(f"cannot link {existing.path} as {target}: {exc.strerror or exc}") from exc
        try:
            digest = read_checksum(existing.path)
            if digest is not None:
                mode = stat.S_IMODE(existing.checksum_path.stat().st_mode)
                write_checksum(target, digest, mode, replace=False)
        except OSError as exc:
            target.unlink(missing_ok=True)  # no link without the checksum its original has
            raise ArchiveError(f"cannot write the checksum of {target}: {exc.strerror or exc}") from exc
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        fsync_dir(target.parent)
        return StoredArchive(target, name, existing.size)

    def delete(self, archive: StoredArchive) -> None:
        """Remove an archive, then its checksum (either may already be gone); the data
        stays on disk while another hard link (a promoted copy) still names it."""
        archive.path.unlink(missing_ok=True)
        archive.checksum_path.unlink(missing_ok=True)
        fsync_dir(archive.path.parent)

    # --- locks ---------------------------------------------------------------------
    @contextlib.contextmanager
    def target_lock(self, name: str) -> Iterator[None]:
        """Held while `name` is backed up or restored; a second holder, in this process
        or another one on the same backup volume, gets BackupBusy at once; UnsafeName for
        a name that is no single file name (`../x`), before anything is created."""
        path = self.state_dir / "locks" / f"{safe_component(name, 'target name')}.lock"
        if not path.parent.is_dir():
            self.prepare()
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BackupBusy(f"{name}: a backup or restore of this target is already running") from None
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def is_locked(self, name: str) -> bool:
        try:
            with self.target_lock(name):
                return False
        except BackupBusy:
            return True

    def touch_heartbeat(self) -> None:
        path = self.state_dir / "heartbeat"
        path.write_text(f"{time.time():.0f}\n")

    def heartbeat_age(self) -> float | None:
        try:
            return time.time() - (self.state_dir / "heartbeat").stat().st_mtime
        except FileNotFoundError:
            return None


@dataclass(frozen=True)
class JournalEntry:
    container_id: str
    container_name: str
    action: str  # "stopped", "paused", "scaled" or "left-stopped" (see actions/interrupt.py)
    target: str
    since: float
    # "scaled" (a replicated Swarm service scaled to 0; container_id is the service's id):
    # the replica count to restore, and the spec version the scale-down left (None: the
    # sidecar died before it learnt it).
    replicas: int | None = None
    version: int | None = None
    # "left-stopped" of a replicated Swarm service: what a later restore needs to reach its
    # volumes once Swarm has removed the task containers (image id; [kind, source, destination]).
    image: str | None = None
    mounts: list | None = None


class Journal:
    """Containers the sidecar stopped or paused and has not yet put back. Written before
    the stop or pause, cleared after the start or unpause, so a sidecar killed in between
    finds on its next start exactly what to put back. Shared by every process on the
    backup volume (the daemon, a `compose exec ... backup`) through JsonState, so none
    overwrites another's entries."""

    def __init__(self, path: Path):
        self.path = path
        self._state = JsonState(path, "journal")

    def entries(self) -> list[JournalEntry]:
        return _journal_entries(self._state.read())

    def add(self, entry: JournalEntry) -> None:
        with self._state.update() as doc:
            items = [e for e in _journal_entries(doc) if e.container_id != entry.container_id]
            doc["interrupted"] = [e.__dict__ for e in items] + [entry.__dict__]

    def remove(self, container_id: str) -> None:
        with self._state.update() as doc:
            items = _journal_entries(doc)
            kept = [e for e in items if e.container_id != container_id]
            if len(kept) != len(items):
                doc["interrupted"] = [e.__dict__ for e in kept]


def _journal_entries(doc: dict) -> list[JournalEntry]:
    entries = []
    for item in doc.get("interrupted") or []:
        try:
            entries.append(JournalEntry(**item))
        except TypeError as exc:  # written by another version: say so, keep the others
            logger.error("journal entry unreadable; left out", extra={"entry": repr(item)[:200], "error": str(exc)})
    return entries
