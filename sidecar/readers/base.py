"""The Reader seam: how a volume's bytes reach its archive.

A reader is asked for one finished archive (ArchiveRequest) and answers with a
PendingArchive that moves through the phases of a backup:

- `open` (container still running): create the partial file;
- `prepare` (still running, right before the quiesce): a reader that keeps a staging
  mirror brings it up to date here;
- `read` (container stopped or paused when the strategy says so): take the volume's
  contents; when it returns the container may run again;
- `finish` (container running again): publish the archive and its checksum (a mirror
  reader builds the archive here);
- `abort`: remove whatever is partial. Leaving the context without `finish` aborts.

A reader writes the archive, its checksum and its encryption itself, so a reader that
runs next to the data (a worker container) fits the same shape as the engine-API one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from ..tarball.archive import ArchiveResult
from ..tarball.crypto import EncryptionConfig
from ..docker.engine import Engine
from ..core.model import Compression, Mount


@dataclass(frozen=True)
class WorkerSettings:
    """What a reader that runs next to the data (a worker container) needs to know."""

    backup_dir: Path  # BACKUP_DIR as this process sees it
    image: str | None = None  # BACKUP_WORKER_IMAGE; None: the image of the sidecar's own container
    timeout: float = 86400.0  # seconds one worker may run


@dataclass(frozen=True)
class ArchiveRequest:
    """One archive to produce: what to read and what to write."""

    container_id: str
    mount: Mount  # the volume (its name, for a reader that mounts it elsewhere) and its destination
    final_path: Path  # where the finished archive goes; the checksum beside it
    compression: Compression
    file_mode: int = 0o600
    encryption: EncryptionConfig | None = None
    exclude: tuple[str, ...] = ()
    worker: WorkerSettings | None = None  # None: no worker container is tried
    target: str = ""  # the target's backup_name, for log lines
    # A staging mirror's folder on the backup volume: the container is to be quiesced only
    # for what changed (readers/mirror.py). None: no mirror (hot, backup.mirror=false).
    mirror: Path | None = None


# Called with the tar bytes read so far, also while waiting; raises BackupAborted when the
# sidecar shuts down, which the reader lets through after stopping its read.
Progress = Callable[[int], None]


class PendingArchive(Protocol):
    request: ArchiveRequest

    def __enter__(self) -> "PendingArchive": ...

    def __exit__(self, *exc_info) -> None: ...

    def prepare(self, progress: Progress | None = None) -> None:
        """While the container still runs, right before it is quiesced (a mirror reader
        brings its mirror up to date here). Raises like `read`."""
        ...

    def read(self, progress: Progress | None = None) -> int:
        """Take the volume's contents; returns the tar bytes read. Raises SidecarError
        (engine or stream failures), OSError (writing) or BackupAborted (cancelled)."""
        ...

    def finish(self) -> ArchiveResult:
        """Make the archive and its checksum durable and visible. Raises OSError."""
        ...

    def abort(self) -> None: ...


class Reader(Protocol):
    name: str

    def usable(self, engine: Engine, request: ArchiveRequest) -> bool:
        """Whether this reader can produce `request` here (e.g. a worker needs its image)."""
        ...

    def open(self, engine: Engine, request: ArchiveRequest) -> PendingArchive:
        """Start an archive; nothing is read yet. Use the result as a context manager."""
        ...
