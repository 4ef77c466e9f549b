"""The `archive` format: dated `.tar.zst` files on the backup volume, each first of its
period promoted (hard links), rotated, then copied to the destinations and rotated there.
The seed's format, and the default."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Callable, Sequence

from ...core.model import ContainerInfo, Target
from ...core.retention import Keep
from ..context import Context
from ..prune import promote
from ..rotate import run_rotation
from ..sources import ArchivePath, Capture, Source
from ..sync import SyncReport, run_sync
from .base import Published


class ArchiveFormat:
    name = "archive"

    def capture(self, ctx: Context, target: Target, source: Source, container: ContainerInfo,
                archive_path: ArchivePath) -> AbstractContextManager[list[Capture]]:
        return source.capture(ctx, target, container, archive_path)

    def publish(self, ctx: Context, target: Target, captures: list[Capture]) -> Published:
        """Finish every archive (checksum, rename), then promote it: the first archive of a
        day, week or month also counts as that period's (hard links)."""
        archives = [capture.finish() for capture in captures]
        for archive in archives:
            promote(ctx, ctx.store.archive_at(archive.path), target.config.keep)
        return Published(archives=tuple(archives))

    def after_success(self, ctx: Context, target: Target) -> str | None:
        """Rotation of the backup volume, then the off-site copy, then rotation on the
        destinations that took it (only after a successful backup: a failing target keeps
        what it has). Local rotation comes first so it never waits on a slow or unreachable
        destination. The containers run again long before this; a failure here is logged
        and does not fail the backup: the next cycle retries the upload. Returns why the
        off-site copy failed, None when it went through (or there is no destination)."""
        return rotate_and_sync(ctx, [(target.backup_name, lambda _name: target.config.keep)])


def rotate_and_sync(ctx: Context, rotated: Sequence[tuple[str, Callable[[str], Keep]]]) -> str | None:
    """after_success for archive files of several backup names (a target's, its project's
    stack archive): each rotated locally, one sync, then each rotated on the destinations
    that took the copy."""
    dry_run = ctx.settings.prune_dry_run
    for name, keep in rotated:
        run_rotation(ctx, keep, backup_name=name, dry_run=dry_run, destinations=())
    report = run_sync(ctx, new_cycle=False)  # a destination already found down in this cycle is not retried
    if report.synced:
        for name, keep in rotated:
            run_rotation(ctx, keep, backup_name=name, dry_run=dry_run, local=False, destinations=report.synced)
    # Skipped: no destination, or another process's sync holds the lock and copies it.
    return None if report.ok or report.skipped else _sync_problem(report)


def _sync_problem(report: SyncReport) -> str:
    """One line: what went wrong with each destination's copy."""
    parts = [f"{r.destination}: {r.error or f'{len(r.failed)} failed, {len(r.pending)} pending'}"
             for r in report.results if not r.ok]
    return "; ".join(parts) or report.error or "not copied"
