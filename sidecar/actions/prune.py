"""Rotation on the backup volume: promote a fresh archive to the weekly/monthly (and daily,
for hourly schedules) folders with hard links, and delete what the keep values no longer
cover. The rules themselves are in retention.py; this module applies them to files.

Each target is pruned under its target lock, from a listing taken inside the lock, so a
backup of that target is never pruned halfway through. A refused or failed target does not
stop the others; the result says what happened to each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from ..core.errors import ArchiveError, BackupBusy
from ..core.retention import Keep, PruneRefused, plan_prune, promotions
from ..store.storage import StoredArchive
from .context import Context

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetPrune:
    target: str  # the {service} of the archive names
    # "success", "refused", "skipped" (a backup or restore holds the target, or keep_for gave
    # None) or "failure"
    result: str
    kept: tuple[StoredArchive, ...] = ()
    deleted: tuple[StoredArchive, ...] = ()  # in a dry run: what would be deleted
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.result == "success"


@dataclass(frozen=True)
class PruneResult:
    dry_run: bool
    targets: tuple[TargetPrune, ...]

    @property
    def ok(self) -> bool:
        """False when a target was refused or failed (a skipped target is not an error)."""
        return all(t.result in ("success", "skipped") for t in self.targets)

    @property
    def deleted(self) -> tuple[StoredArchive, ...]:
        return tuple(a for t in self.targets for a in t.deleted)


def run_prune(
    ctx: Context,
    keep_for: Callable[[str], Keep | None],
    dry_run: bool = False,
    backup_name: str | None = None,
) -> PruneResult:
    """Delete the archives that `keep_for(backup_name)` no longer covers, for every target with
    archives (or only `backup_name`). `keep_for` returning None leaves that target's archives
    alone (e.g. a container skipped for bad labels: its own backup.keep is unknown). A dry
    run deletes nothing and reports what it would delete. Never raises for a refused or
    failed target: see the result."""
    backup_names = sorted({a.name.backup_name for a in ctx.store.archives(backup_name)})
    return PruneResult(dry_run, tuple(_prune_target(ctx, s, keep_for, dry_run) for s in backup_names))


def _prune_target(ctx: Context, backup_name: str, keep_for: Callable[[str], Keep | None],
                  dry_run: bool) -> TargetPrune:
    keep = keep_for(backup_name)
    if keep is None:
        logger.warning("prune skipped: no keep values for this target", extra={"target": backup_name, "phase": "prune"})
        return TargetPrune(backup_name, "skipped", error="no keep values for this target")
    if dry_run:  # deletes nothing, so it need not wait for (or block) a backup
        return _prune_locked(ctx, backup_name, keep, dry_run)
    try:
        with ctx.store.target_lock(backup_name):
            return _prune_locked(ctx, backup_name, keep, dry_run)
    except BackupBusy as err:
        logger.warning("prune skipped: a backup or restore of this target is running",
                       extra={"target": backup_name, "phase": "prune"})
        return TargetPrune(backup_name, "skipped", error=str(err))


def _prune_locked(ctx: Context, backup_name: str, keep: Keep, dry_run: bool) -> TargetPrune:
    archives = ctx.store.archives(backup_name)
    try:
        plan = plan_prune(archives, lambda a: a.name, lambda _service: keep, good=lambda a: a.has_checksum)
    except PruneRefused as err:
        logger.error("prune refused", extra={"target": backup_name, "phase": "prune", "error": str(err)})
        return TargetPrune(backup_name, "refused", kept=tuple(archives), error=str(err))

    deleted: list[StoredArchive] = []
    failed: list[str] = []
    for archive in plan.delete:
        fields = {"target": backup_name, "volume": archive.name.volume_name, "path": str(archive.path),
                  "frequency": archive.name.frequency.value, "phase": "prune"}
        if dry_run:
            logger.info("would delete archive (dry run)", extra={**fields, "dry_run": True})
            deleted.append(archive)
            continue
        try:
            ctx.store.delete(archive)
        except OSError as exc:
            logger.error("archive could not be deleted", extra={**fields, "error": str(exc)})
            failed.append(f"{archive.path}: {exc.strerror or exc}")
            continue
        logger.info("archive deleted", extra=fields)
        deleted.append(archive)

    logger.info("prune finished", extra={"target": backup_name, "phase": "prune", "dry_run": dry_run,
                                         "kept": len(plan.keep), "deleted": len(deleted)})
    if failed:
        return TargetPrune(backup_name, "failure", plan.keep, tuple(deleted),
                           "could not delete " + "; ".join(failed))
    return TargetPrune(backup_name, "success", plan.keep, tuple(deleted))


def promote(ctx: Context, archive: StoredArchive, keep: Keep) -> list[StoredArchive]:
    """Hard-link a freshly written archive (and a checksum) into each higher frequency's
    folder whose period it is the first of (see retention.promotions); returns the links.
    Call it while holding the target's lock (inside the backup). A link that cannot be made
    is logged and skipped: the archive itself is safe, and the next archive of that period
    is promoted instead."""
    existing = [a.name for a in ctx.store.archives(archive.name.backup_name)]
    made = []
    for name in promotions(archive.name, existing, keep):
        fields = {"target": archive.name.backup_name, "volume": archive.name.volume_name, "phase": "promote",
                  "frequency": name.frequency.value}
        try:
            link = ctx.store.link(archive, name)
        except ArchiveError as err:
            logger.error("archive not promoted", extra={**fields, "path": str(archive.path), "error": str(err)})
            continue
        logger.info("archive promoted", extra={**fields, "path": str(link.path), "source": str(archive.path)})
        made.append(link)
    return made
