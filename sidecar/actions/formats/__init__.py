"""The Format seam: how a target's captures are stored. One module per format, each a
class with the same few methods (see base.py), found by name:

- `archive` (archive.py): dated `.tar.zst` files, promoted, rotated and synced as today;
- `restic` (restic.py): one snapshot per volume or dump and run in the restic repository
  `BACKUP_DIR/restic`, read by restic in a worker next to the data.

Only the writer changes: strategies, the journal, groups and exec hooks are the backup's
(actions/backup.py) whatever the format. To add one: write formats/NAME.py, add it to
FORMATS and a member to model.StorageFormat.
"""

from __future__ import annotations

from ...core.model import StorageFormat, Target
from ..context import Context
from .archive import ArchiveFormat
from .base import Format, Published, SnapshotResult
from .restic import ResticFormat

__all__ = ["FORMATS", "Format", "Published", "SnapshotResult", "StorageFormat", "for_target", "format_of"]

FORMATS: dict[StorageFormat, Format] = {StorageFormat.ARCHIVE: ArchiveFormat(), StorageFormat.RESTIC: ResticFormat()}


def format_of(ctx: Context, target: Target) -> StorageFormat:
    """The label backup.format, else BACKUP_FORMAT."""
    return target.config.format or ctx.settings.backup_format


def for_target(ctx: Context, target: Target) -> Format:
    return FORMATS[format_of(ctx, target)]
