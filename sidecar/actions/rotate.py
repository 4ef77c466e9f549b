"""Rotation in one place: local archives (prune.py), image exports (images.py), then the
destinations (sync.run_remote_prune). Local rotation runs first and never depends on the
destinations: an off-site failure neither delays nor skips it, and is reported in the
result."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..core.retention import Keep
from .context import Context
from .images import run_image_prune
from .prune import PruneResult, run_prune
from .sync import RemotePrune, run_remote_prune

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RotationResult:
    dry_run: bool
    local: PruneResult | None  # None: local archives were not rotated (local=False)
    images: tuple[Path, ...] = ()  # image exports deleted (or that would be)
    images_error: str | None = None
    remote: tuple[RemotePrune, ...] = ()  # one per destination rotated

    @property
    def ok(self) -> bool:
        local_ok = self.local is None or self.local.ok
        return local_ok and self.images_error is None and all(r.ok for r in self.remote)


def run_rotation(ctx: Context, keep_for: Callable[[str], Keep | None], backup_name: str | None = None,
                 dry_run: bool = False, *, local: bool = True, images: bool = True,
                 destinations: Iterable[str] | None = None) -> RotationResult:
    """Rotate the archives of every target (or only `backup_name`) by `keep_for(backup_name)`,
    and, with `images`, the image exports by BACKUP_IMAGES_KEEP. `local=False` rotates the
    destinations only (the daemon's periodic sync: local archives rotate after each
    backup); `destinations` limits the off-site part to those names (default: all). Never raises for a refused or failed part: see the result."""
    local_result = run_prune(ctx, keep_for, dry_run=dry_run, backup_name=backup_name) if local else None
    deleted_images: list[Path] = []
    images_error = None
    if images and local:
        try:
            deleted_images = run_image_prune(ctx, ctx.settings.images_keep, dry_run)
        except OSError as exc:  # one undeletable export must not keep the destinations from rotating
            images_error = str(exc)
            logger.error("image exports not rotated", extra={"phase": "prune", "error": images_error})
    remote = run_remote_prune(ctx, keep_for, backup_name=backup_name, dry_run=dry_run,
                              images_keep=ctx.settings.images_keep if images else None,
                              destinations=destinations)
    return RotationResult(dry_run, local_result, tuple(deleted_images), images_error, remote)
