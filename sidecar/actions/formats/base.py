"""Types of the Format seam (see the package docstring)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from ...tarball.archive import ArchiveResult
from ...core.model import ContainerInfo, Target
from ..context import Context
from ..sources import ArchivePath, Capture, Source


@dataclass(frozen=True)
class SnapshotResult:
    """One snapshot a run added to the restic repository."""

    item: str  # the volume's short name or the preset's `{preset}+dump`
    snapshot_id: str
    raw_bytes: int  # bytes restic read (total_bytes_processed)
    added_bytes: int  # bytes new to the repository (data_added: what deduplication left)
    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0


@dataclass(frozen=True)
class Published:
    """What a run stored: archive files or snapshots."""

    archives: tuple[ArchiveResult, ...] = ()
    snapshots: tuple[SnapshotResult, ...] = ()


class Format(Protocol):
    name: str

    def capture(self, ctx: Context, target: Target, source: Source, container: ContainerInfo,
                archive_path: ArchivePath) -> AbstractContextManager[list[Capture]]:
        """The source's captures, writing this format; partial results go on the way out."""
        ...

    def publish(self, ctx: Context, target: Target, captures: list[Capture]) -> Published:
        """Finish every capture (the container runs again). Raises BackupError."""
        ...

    def after_success(self, ctx: Context, target: Target) -> str | None:
        """Rotation and copies after a successful run; why an off-site copy failed (None: it did not)."""
        ...
