"""Back up one target: pre-command, stop or pause, read every volume into its archive,
put the container back, publish the archives with their checksums, post-command.

The container runs again as soon as the data is read: checksum files, renames and (in
later phases) uploads and rotation all happen after.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime

from ..archive import ArchiveResult, ArchiveWriter, ProgressLog
from ..errors import BackupBusy, BackupError, SidecarError
from ..model import ContainerState, Strategy, Target
from ..naming import choose_name
from .context import Context
from .images import export_image, run_image_prune
from .prune import promote, run_prune
from .sync import run_remote_prune, run_sync
from .interrupt import PAUSED, STOPPED, Interruption

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackupOutcome:
    target: str
    container: str
    result: str  # "success", "failure" or "skipped"
    archives: tuple[ArchiveResult, ...] = ()
    volumes: tuple[str, ...] = ()
    seconds: float = 0.0
    downtime: float = 0.0
    phase: str | None = None
    error: str | None = None
    finished_at: datetime | None = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        return self.result == "success"


def run_backup(ctx: Context, target: Target) -> BackupOutcome:
    """Back up `target` now. Never raises for an expected failure: the outcome says
    what failed and in which phase, and the failure is logged."""
    started = time.monotonic()
    fields = {"target": target.name, "container": target.container.name}
    logger.info("backup started", extra={**fields, "phase": "start", "strategy": str(target.config.strategy)})
    try:
        with ctx.store.target_lock(target.name):
            archives, downtime = _backup(ctx, target)
    except BackupBusy as err:
        logger.warning("backup skipped: the previous one is still running", extra={**fields, "phase": "start"})
        return BackupOutcome(target.name, target.container.name, "skipped", error=str(err), phase="start",
                             finished_at=ctx.now())
    except _PartialSuccess as partial:
        err = partial.error
        logger.error("backup failed", extra={**fields, "phase": err.phase, "error": str(err),
                                             "seconds": round(time.monotonic() - started, 3)})
        return BackupOutcome(target.name, target.container.name, "failure", partial.archives,
                             tuple(v.type_name for v in target.volumes), time.monotonic() - started,
                             partial.downtime, err.phase, str(err), ctx.now())
    except SidecarError as err:
        phase = getattr(err, "phase", "backup")
        logger.error("backup failed", extra={**fields, "phase": phase, "error": str(err),
                                             "seconds": round(time.monotonic() - started, 3)})
        return BackupOutcome(target.name, target.container.name, "failure", (),
                             tuple(v.type_name for v in target.volumes), time.monotonic() - started,
                             0.0, phase, str(err), ctx.now())
    _after_success(ctx, target)
    seconds = time.monotonic() - started
    logger.info("backup finished", extra={
        **fields, "phase": "done", "seconds": round(seconds, 3), "downtime_seconds": round(downtime, 3),
        "bytes": sum(a.size for a in archives), "archives": [str(a.path) for a in archives],
    })
    return BackupOutcome(target.name, target.container.name, "success", tuple(archives),
                         tuple(v.type_name for v in target.volumes), seconds, downtime, finished_at=ctx.now())


def _after_success(ctx: Context, target: Target) -> None:
    """Off-site copy, then rotation (only after a successful backup: a failing target
    keeps what it has). The containers run again long before this; a failure here is
    logged and does not fail the backup: the next cycle retries the upload."""
    dry_run = ctx.settings.prune_dry_run
    run_sync(ctx)
    run_prune(ctx, lambda _service: target.config.keep, dry_run=dry_run, service=target.name)
    run_image_prune(ctx, ctx.settings.images_keep, dry_run=dry_run)
    run_remote_prune(ctx, lambda _service: target.config.keep, service=target.name, dry_run=dry_run,
                     images_keep=ctx.settings.images_keep)


class _PartialSuccess(Exception):
    """Archives were written but a later step (the post-command) failed."""

    def __init__(self, error: BackupError, archives: list[ArchiveResult], downtime: float):
        self.error, self.archives, self.downtime = error, tuple(archives), downtime


def _backup(ctx: Context, target: Target) -> tuple[list[ArchiveResult], float]:
    cfg = target.config
    container = ctx.engine.inspect(target.container.id)  # fresh state, not the one seen at discovery
    running = container.state is ContainerState.RUNNING
    fields = {"target": target.name, "container": container.name}

    if cfg.exec_pre:
        _exec(ctx, target, container.id, cfg.exec_pre, "pre", running)

    when = ctx.now()
    chosen: set[str] = set()

    def taken(relpath: str) -> bool:
        return relpath in chosen or ctx.store.taken(relpath)

    downtime = 0.0
    with contextlib.ExitStack() as files:
        writers = []
        for volume in target.volumes:
            name = choose_name(target.name, volume.type_name, when, cfg.schedule.frequency,
                               cfg.schedule.fires_more_than_once_a_day,
                               cfg.compression.extension + ctx.local_encryption_suffix, taken)
            chosen.add(name.relpath)
            writer = files.enter_context(ArchiveWriter(ctx.store.path(name.relpath), cfg.compression,
                                                       ctx.settings.file_mode, ctx.local_encryption))
            writers.append((volume, writer))

        with contextlib.ExitStack() as interruption:
            pause = None
            if running and cfg.strategy is Strategy.STOP:
                pause = interruption.enter_context(
                    Interruption(ctx, container, STOPPED, target.name, cfg.stop_timeout))
            elif running and cfg.strategy is Strategy.PAUSE:
                pause = interruption.enter_context(Interruption(ctx, container, PAUSED, target.name))
            for volume, writer in writers:
                _read_volume(ctx, target, container.id, volume, writer)
        # Here the container runs again (or never stopped): the rest costs no downtime.
        if pause is not None:
            downtime = pause.seconds
            logger.info("container running again", extra={**fields, "phase": "restart",
                                                           "downtime_seconds": round(downtime, 3)})
        results = []
        for volume, writer in writers:
            try:
                results.append(writer.finish())
            except OSError as exc:
                raise BackupError(target.name, "write", f"{writer.final_path}: {exc}") from exc
            logger.info("archive written", extra={**fields, "volume": volume.type_name, "phase": "write",
                                                  "path": str(results[-1].path), "bytes": results[-1].size,
                                                  "tar_bytes": results[-1].raw_bytes})
        # The first archive of a day, week or month also counts as that period's (hard links).
        for result in results:
            promote(ctx, ctx.store.archive_at(result.path), cfg.keep)

    # After the archives are safe: steps whose failure fails the run but keeps the archives.
    for step in (_post_command, _image_export):
        try:
            step(ctx, target, container.id)
        except BackupError as err:
            raise _PartialSuccess(err, results, downtime) from err
    return results, downtime


def _post_command(ctx: Context, target: Target, container_id: str) -> None:
    if target.config.exec_post:
        running = ctx.engine.state(container_id) is ContainerState.RUNNING
        _exec(ctx, target, container_id, target.config.exec_post, "post", running)


def _image_export(ctx: Context, target: Target, container_id: str) -> None:
    export = export_image(ctx, target)
    if export.archive is None:
        logger.debug("image not exported", extra={"target": target.name, "image": export.image,
                                                  "reason": export.reason, "phase": "image"})


def _read_volume(ctx: Context, target: Target, container_id: str, volume, writer: ArchiveWriter) -> None:
    fields = {"target": target.name, "volume": volume.type_name, "phase": "read"}
    started = time.monotonic()

    def report(done: int, rate: float) -> None:
        logger.info("backup in progress", extra={**fields, "bytes": done, "bytes_per_second": round(rate),
                                                 "seconds": round(time.monotonic() - started, 1)})

    progress = ProgressLog(report, ctx.settings.progress_interval, ctx.cancel, target.name)
    try:
        raw = writer.write_stream(ctx.engine.read_path(container_id, volume.mount.destination),
                                  target.config.exclude, progress)
    except BackupError:
        raise
    except SidecarError as err:
        raise BackupError(target.name, "read", f"volume {volume.type_name}: {err}") from err
    except OSError as exc:
        raise BackupError(target.name, "write", f"volume {volume.type_name}: {exc}") from exc
    except Exception as exc:  # tar or compressor errors on a broken stream
        raise BackupError(target.name, "read", f"volume {volume.type_name}: {exc!r}") from exc
    logger.info("volume read", extra={**fields, "bytes": raw, "seconds": round(time.monotonic() - started, 3)})


def _exec(ctx: Context, target: Target, container_id: str, command: str, phase: str, running: bool) -> None:
    fields = {"target": target.name, "phase": phase}
    if not running:
        logger.warning(f"backup.exec.{phase} not run: the container is not running", extra=fields)
        return
    started = time.monotonic()
    try:
        code, output = ctx.engine.exec(container_id, command)
    except SidecarError as err:
        raise BackupError(target.name, phase, f"backup.exec.{phase} could not run: {err}") from err
    tail = output.strip()[-500:]
    if code != 0:
        raise BackupError(target.name, phase, f"backup.exec.{phase} exited with {code}: {tail}")
    logger.info(f"backup.exec.{phase} succeeded", extra={**fields, "seconds": round(time.monotonic() - started, 3)})
