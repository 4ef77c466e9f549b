"""Types of the Source seam (see the package docstring)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from ...tarball.archive import ArchiveResult
from ...core.model import ContainerInfo, Target
from ..context import Context

# The archive path for a short name (the volume part of the archive's name).
ArchivePath = Callable[[str], Path]


class Capture(Protocol):
    """One archive of a source in the making."""

    item: str  # its short name (a volume's, a dump's)

    def read(self) -> None:
        """Take the data (with the container quiesced when the source needs it). Raises BackupError."""
        ...

    def finish(self) -> ArchiveResult:
        """Publish the archive and its checksum. Raises BackupError."""
        ...


@dataclass(frozen=True)
class RestoreRequest:
    container: ContainerInfo
    backup_name: str  # the name its archives carry
    item: str  # the archive's short name (a volume's)
    archive: Path  # on the backup volume
    force: bool = False  # replace existing data
    stop_timeout: int = 10


@dataclass(frozen=True)
class RestoreOutcome:
    target: str
    container: str
    volume: str
    archive: Path
    members: int
    tar_bytes: int
    seconds: float
    downtime: float


class Source(Protocol):
    """What a source module offers (checked by type checkers against the modules)."""

    NAME: str

    def describe(self, target: Target) -> tuple[str, ...]: ...

    def needs_quiesce(self, target: Target) -> bool: ...

    def capture(self, ctx: Context, target: Target, container: ContainerInfo,
                archive_path: ArchivePath) -> AbstractContextManager[list[Capture]]: ...

    def restore(self, ctx: Context, request: RestoreRequest) -> RestoreOutcome: ...
