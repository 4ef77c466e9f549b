"""Export of the images targets run, for images that cannot be pulled again (built on
this host and never pushed), and loading an export back.

An export is `docker save` streamed through zstd into images/..., with its checksum,
written like every archive (partial, rename). One export per image ID."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ..tarball.archive import ArchiveResult, ArchiveWriter
from ..core.errors import BackupError, SidecarError
from ..readers import unpack
from ..tarball.extract import open_archive
from ..store.image_index import ImageIndex
from ..core.model import Compression, ContainerInfo, ContainerState, ImagePolicy, Mount, Target
from ..core.naming import choose_image_name
from ..core.retention import select_image_prune
from .context import Context

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageExport:
    image: str
    image_id: str
    archive: ArchiveResult | None  # None: not exported (policy, pullable, or exported before)
    reason: str


def image_index(ctx: Context) -> ImageIndex:
    return ImageIndex(ctx.store.state_dir / "images.json")


def export_image(ctx: Context, target: Target) -> ImageExport:
    """Export the target's image when its `backup.image` policy asks for it."""
    policy = target.config.image
    container = target.container
    reference = container.image or container.image_id
    if policy is ImagePolicy.NEVER:
        return ImageExport(reference, container.image_id, None, "backup.image=never")
    try:
        info = ctx.engine.image_info(container.image_id or reference)
    except SidecarError as err:
        raise BackupError(target.backup_name, "image", f"cannot inspect image {reference}: {err}") from err
    if policy is ImagePolicy.AUTO and info.digests:
        return ImageExport(reference, info.id, None, "can be pulled again (has a repository digest)")
    index = image_index(ctx)
    previous = index.get(info.id)
    if previous is not None:
        return ImageExport(reference, info.id, None, f"unchanged since its export {previous}")

    # Save by tag when the container names one, so `docker load` brings the tag back.
    save_ref = reference if reference in info.tags or ":" in reference else info.id
    name = choose_image_name(reference, ctx.now(), Compression.ZSTD.extension + ctx.local_encryption_suffix,
                             ctx.store.taken)
    fields = {"target": target.backup_name, "image": reference, "phase": "image"}
    started = time.monotonic()
    try:
        with ArchiveWriter(ctx.store.path(name.relpath), Compression.ZSTD, ctx.settings.file_mode,
                           ctx.local_encryption) as writer:
            writer.write_stream(ctx.engine.save_image(save_ref))
            result = writer.finish()
    except SidecarError as err:
        raise BackupError(target.backup_name, "image", f"exporting image {reference}: {err}") from err
    except OSError as exc:
        raise BackupError(target.backup_name, "image", f"exporting image {reference}: {exc}") from exc
    index.record(info.id, name.relpath)
    logger.info("image exported", extra={**fields, "path": str(result.path), "bytes": result.size,
                                         "seconds": round(time.monotonic() - started, 3)})
    return ImageExport(reference, info.id, result, "exported")


def run_restore_image(ctx: Context, ref: str) -> tuple[Path, list[str]]:
    """Verify an image export and load it into the engine (`docker load`). An extract worker
    reads it (`--stream canonical`; readers/unpack.py ArchiveStream), the backup volume
    read-only: a whole pass first (nothing reaches the engine from a damaged or unsafe
    export), then the canonical stream of a second read of the same file (only the members
    the checked parser accepted, in headers we wrote), never the raw bytes another tar reader
    could read differently. The sidecar pipes it and parses nothing; where no worker can
    run, the restore fails closed naming BACKUP_WORKER_IMAGE."""
    path = ctx.store.resolve(ref)
    with open_archive(path) as archive:
        how = unpack.UnpackRequest(ContainerInfo("", f"image export {path.name}", "", "", ContainerState.EXITED, {}, ()),
                                   Mount("bind", "", ""), archive, "", ctx.settings.decryption, ctx.worker_settings,
                                   path.name)
        plan = unpack.listing_plan(ctx.engine, how, " to load it into the engine")
        with unpack.ArchiveStream(ctx.engine, how, plan, "canonical") as export:
            lines = ctx.engine.load_image(export.data())
    logger.info("image loaded", extra={"path": str(path), "phase": "restore-image", "loaded": lines})
    return path, lines


def run_image_prune(ctx: Context, keep: int, dry_run: bool = False) -> list[Path]:
    """Delete all but the newest `keep` exports of each image on the backup volume."""
    exports = ctx.store.image_exports()
    doomed = select_image_prune([(e, e.name) for e in exports], keep)
    for export in doomed:
        logger.info("would delete image export (dry run)" if dry_run else "image export deleted",
                    extra={"phase": "prune", "path": str(export.path), "image": export.name.image})
        if not dry_run:
            for path in (export.path, export.checksum_path):
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
    return [e.path for e in doomed]
