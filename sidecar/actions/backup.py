"""Back up one target: pre-command, quiesce (stop or pause), capture every source, put
the container back, publish the archives with their checksums, post-command, image
export; after a success the off-site copy and rotation.

The container runs again as soon as the data is read: checksum files, renames, uploads
and rotation all happen after.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterator

from ..archive import ArchiveResult
from ..errors import BackupBusy, BackupError, SidecarError
from ..model import ContainerInfo, ContainerState, Strategy, Target
from ..naming import choose_name
from .context import Context
from .images import export_image
from .interrupt import Interruption, InterruptionKind, is_left_stopped
from .prune import promote
from .rotate import run_rotation
from .sources import ArchivePath, Capture, sources_for
from .sync import SyncReport, run_sync

logger = logging.getLogger(__name__)


class BackupResult(enum.StrEnum):
    """A run's result; the value is the metrics' `result` label (so it equals the string)."""

    SUCCESS = "success"
    FAILURE = "failure"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class BackupOutcome:
    target: str
    container: str
    result: BackupResult
    archives: tuple[ArchiveResult, ...] = ()
    volumes: tuple[str, ...] = ()
    seconds: float = 0.0
    downtime: float = 0.0
    phase: str | None = None
    error: str | None = None
    finished_at: datetime | None = field(default=None, compare=False)
    # Why the off-site copy after a success did not go through (None: it did, or there is no
    # destination). The backup still succeeded: its archives are on the backup volume.
    offsite_error: str | None = None
    image_archive: ArchiveResult | None = None  # the image exported with this backup, if one was

    def __post_init__(self) -> None:
        object.__setattr__(self, "result", BackupResult(self.result))  # "success" given as a string too

    @property
    def ok(self) -> bool:
        return self.result is BackupResult.SUCCESS


class _FailedAfterArchives(Exception):
    """The archives are written and published, but a later step (post-command, image
    export) failed: the run fails and keeps its archives."""

    def __init__(self, error: BackupError, archives: list[ArchiveResult], downtime: float):
        self.error, self.archives, self.downtime = error, tuple(archives), downtime


def run_backup(ctx: Context, target: Target) -> BackupOutcome:
    """Back up `target` now. Never raises for an expected failure: the outcome says
    what failed and in which phase, and the failure is logged. A bug raises."""
    started = time.monotonic()
    fields = {"target": target.backup_name, "container": target.container.name}
    items = tuple(item for source in sources_for(target) for item in source.describe(target))

    def failed(err: SidecarError, phase: str, archives=(), downtime=0.0) -> BackupOutcome:
        logger.error("backup failed", extra={**fields, "phase": phase, "error": str(err),
                                             "seconds": round(time.monotonic() - started, 3)})
        return BackupOutcome(target.backup_name, target.container.name, BackupResult.FAILURE, tuple(archives), items,
                             time.monotonic() - started, downtime, phase, str(err), ctx.now())

    logger.info("backup started", extra={**fields, "phase": "start", "strategy": str(target.config.strategy)})
    try:
        with ctx.store.target_lock(target.backup_name):
            archives, downtime, image = _backup(ctx, target)
    except BackupBusy as err:
        logger.warning("backup skipped: the previous one is still running", extra={**fields, "phase": "start"})
        return BackupOutcome(target.backup_name, target.container.name, BackupResult.SKIPPED, error=str(err),
                             phase="start", finished_at=ctx.now())
    except _FailedAfterArchives as partial:
        return failed(partial.error, partial.error.phase, partial.archives, partial.downtime)
    except SidecarError as err:
        return failed(err, getattr(err, "phase", "backup"))
    offsite_error = _after_success(ctx, target)
    seconds = time.monotonic() - started
    logger.info("backup finished", extra={
        **fields, "phase": "done", "seconds": round(seconds, 3), "downtime_seconds": round(downtime, 3),
        "bytes": sum(a.size for a in archives), "archives": [str(a.path) for a in archives],
        **({"image_archive": str(image.path)} if image is not None else {}),
    })
    return BackupOutcome(target.backup_name, target.container.name, BackupResult.SUCCESS, tuple(archives), items,
                         seconds, downtime, finished_at=ctx.now(), offsite_error=offsite_error, image_archive=image)


def _backup(ctx: Context, target: Target) -> tuple[list[ArchiveResult], float, ArchiveResult | None]:
    """The story of one backup; returns the archives, the seconds the container was down
    and the image export it made (None: none was needed)."""
    container = ctx.engine.inspect(target.container.id)  # fresh state, not the one seen at discovery
    if is_left_stopped(ctx, container.id):  # an archive of its emptied volume would rotate good ones out
        raise BackupError(target.backup_name, "start", "a failed restore left the container stopped with an emptied "
                          "volume; restore it again before backing it up")
    running = container.state is ContainerState.RUNNING
    _command(ctx, target, container.id, target.config.exec_pre, "pre", running)
    sources, archive_path = sources_for(target), _archive_path(ctx, target)
    with contextlib.ExitStack() as partial:  # unfinished archives are removed on every way out
        hot: list[Capture] = []
        cold: list[Capture] = []
        for source in sources:
            captures = partial.enter_context(source.capture(ctx, target, container, archive_path))
            (cold if source.needs_quiesce(target) else hot).extend(captures)
        for capture in hot:  # e.g. an app's dump: the app must run
            capture.read()
        for capture in cold:  # e.g. a staging mirror's first pass, while the app still runs
            _prepare(capture)
        with _quiesced(ctx, target, container, bool(cold) and running) as window:
            for capture in cold:
                capture.read()
        archives = _publish(ctx, target, hot + cold)
    try:
        _command(ctx, target, container.id, target.config.exec_post, "post", None)
        image = _image_export(ctx, target)
    except BackupError as err:
        raise _FailedAfterArchives(err, archives, window.seconds) from err
    return archives, window.seconds, image


def _prepare(capture: Capture) -> None:
    """A capture's work before the quiesce; captures with none have no `prepare`."""
    prepare = getattr(capture, "prepare", None)
    if prepare is not None:
        prepare()


def _archive_path(ctx: Context, target: Target) -> ArchivePath:
    """Chooses each archive's free name in this run (one moment for all of them)."""
    cfg = target.config
    when = ctx.now()
    chosen: set[str] = set()

    def path_for(item: str) -> Path:
        name = choose_name(target.backup_name, item, when, cfg.schedule.frequency, cfg.schedule.fires_more_than_once_a_day,
                           cfg.compression.extension + ctx.local_encryption_suffix,
                           lambda relpath: relpath in chosen or ctx.store.taken(relpath))
        chosen.add(name.relpath)
        return ctx.store.path(name.relpath)

    return path_for


class _NotInterrupted:
    seconds = 0.0


@contextlib.contextmanager
def _quiesced(ctx: Context, target: Target, container: ContainerInfo,
              needed: bool) -> Iterator[Interruption | _NotInterrupted]:
    """Stop or pause the container as its strategy says (when `needed`), and put it back on
    every path out."""
    kinds = {Strategy.STOP: InterruptionKind.STOPPED, Strategy.PAUSE: InterruptionKind.PAUSED}
    kind = kinds.get(target.config.strategy)
    if not needed or kind is None:
        yield _NotInterrupted()
        return
    with Interruption(ctx, container, kind, target.backup_name, target.config.stop_timeout) as window:
        yield window
    # Here the container runs again: the rest costs no downtime.
    logger.info("container running again", extra={"target": target.backup_name, "container": container.name,
                                                   "phase": "restart",
                                                   "downtime_seconds": round(window.seconds, 3)})


def _publish(ctx: Context, target: Target, captures: list[Capture]) -> list[ArchiveResult]:
    """Finish every archive (checksum, rename), then promote it: the first archive of a
    day, week or month also counts as that period's (hard links)."""
    archives = [capture.finish() for capture in captures]
    for archive in archives:
        promote(ctx, ctx.store.archive_at(archive.path), target.config.keep)
    return archives


def _after_success(ctx: Context, target: Target) -> str | None:
    """Rotation of the backup volume, then the off-site copy, then rotation on the
    destinations that took it (only after a successful backup: a failing target keeps
    what it has). Local rotation comes first so it never waits on a slow or unreachable
    destination. The containers run again long before this; a failure here is logged
    and does not fail the backup: the next cycle retries the upload. Returns why the
    off-site copy failed, None when it went through (or there is no destination)."""
    def keep_for(_backup_name: str):
        return target.config.keep

    dry_run = ctx.settings.prune_dry_run
    run_rotation(ctx, keep_for, backup_name=target.backup_name, dry_run=dry_run, destinations=())
    report = run_sync(ctx, new_cycle=False)  # a destination already found down in this cycle is not retried
    if report.synced:
        run_rotation(ctx, keep_for, backup_name=target.backup_name, dry_run=dry_run, local=False,
                     destinations=report.synced)
    # Skipped: no destination, or another process's sync holds the lock and copies it.
    return None if report.ok or report.skipped else _sync_problem(report)


def _sync_problem(report: SyncReport) -> str:
    """One line: what went wrong with each destination's copy."""
    parts = [f"{r.destination}: {r.error or f'{len(r.failed)} failed, {len(r.pending)} pending'}"
             for r in report.results if not r.ok]
    return "; ".join(parts) or report.error or "not copied"


def _image_export(ctx: Context, target: Target) -> ArchiveResult | None:
    export = export_image(ctx, target)
    if export.archive is None:
        logger.debug("image not exported", extra={"target": target.backup_name, "image": export.image,
                                                  "reason": export.reason, "phase": "image"})
    return export.archive


def _command(ctx: Context, target: Target, container_id: str, command: str | None, phase: str,
             running: bool | None) -> None:
    """backup.exec.pre/post in the container; `running` None: look at its state now."""
    if not command:
        return
    fields = {"target": target.backup_name, "phase": phase}
    if running is None:
        running = ctx.engine.state(container_id) is ContainerState.RUNNING
    if not running:
        logger.warning(f"backup.exec.{phase} not run: the container is not running", extra=fields)
        return
    started = time.monotonic()
    try:
        code, output = ctx.engine.exec(container_id, command)
    except SidecarError as err:
        raise BackupError(target.backup_name, phase, f"backup.exec.{phase} could not run: {err}") from err
    tail = output.strip()[-500:]
    if code != 0:
        raise BackupError(target.backup_name, phase, f"backup.exec.{phase} exited with {code}: {tail}")
    logger.info(f"backup.exec.{phase} succeeded", extra={**fields, "seconds": round(time.monotonic() - started, 3)})
