"""The `volumes` source: one archive per volume of a target, read through a Reader (see
sidecar/readers), and the volume restore: one worker (sidecar/readers/unpack.py, StagedRestore: the
checked extractor next to the data, the code that checks each member being the code that
writes it; no worker, no restore): the volume must be empty (or --force) before anything
stops; stop the container if it runs; the worker reads the archive once into a staging folder
inside the volume, checking every member and the checksum, and swaps it in for the old
contents only once all of it was accepted (a refusal leaves the volume as it was and the
container is started on it); start the container again. Two passes instead (verify before
stopping anything, room, empty, write) when the container mounts something inside the volume
or the volume cannot hold the old and the new contents at once. If the restore fails once the
volume was emptied or the swap began, the container is left stopped and journalled so
("left-stopped"), and RestoreLeftStopped says so."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable, Iterator

from ...tarball.archive import ArchiveResult, ProgressLog
from ...core.errors import BackupError, NotFound, RestoreError, RestoreLeftStopped, SidecarError
from ...tarball.extract import Summary, open_archive
from ...core.labels import mount_matches, restore_volumes
from ...core.model import ContainerInfo, ContainerState, Mount, Strategy, Target, VolumeSpec
from ... import readers
from ...readers import unpack
from ...readers.mirror import mirror_folder
from ..context import Context
from ..interrupt import Interruption, InterruptionKind, is_left_stopped, journal_left_stopped, put_back_left
from .base import ArchivePath, RestoreOutcome, RestoreRequest

logger = logging.getLogger(__name__)

NAME = "volumes"

# Empties the folder given as $1 including dot files; POSIX sh, so busybox images work too.
_CLEAR_SCRIPT = 'cd "$1" && rm -rf -- ..?* .[!.]* *'


def describe(target: Target) -> tuple[str, ...]:
    return tuple(v.volume_name for v in target.volumes)


def needs_quiesce(target: Target) -> bool:
    return target.config.strategy in (Strategy.STOP, Strategy.PAUSE)


# --- capture ------------------------------------------------------------------------------

class VolumeCapture:
    """One volume's archive: `read` while quiesced, `finish` once the container runs again."""

    def __init__(self, ctx: Context, target: Target, volume: VolumeSpec, pending: readers.PendingArchive):
        self.ctx, self.target, self.volume, self.pending = ctx, target, volume, pending
        self.item = volume.volume_name

    def _progress(self, phase: str) -> ProgressLog:
        fields = {"target": self.target.backup_name, "volume": self.item, "phase": phase}
        started = time.monotonic()

        def report(done: int, rate: float) -> None:
            logger.info("backup in progress", extra={**fields, "bytes": done, "bytes_per_second": round(rate),
                                                     "seconds": round(time.monotonic() - started, 1)})

        return ProgressLog(report, self.ctx.settings.progress_interval, self.ctx.cancel, self.target.backup_name)

    def prepare(self) -> None:
        """Right before the quiesce, the container running (a staging mirror's first pass)."""
        self._call(self.pending.prepare, self._progress("prepare"))

    def read(self) -> None:
        started = time.monotonic()
        raw = self._call(self.pending.read, self._progress("read"))
        logger.info("volume read", extra={"target": self.target.backup_name, "volume": self.item, "phase": "read",
                                          "bytes": raw, "seconds": round(time.monotonic() - started, 3)})

    def _call(self, step, *args):
        try:
            return step(*args)
        except BackupError:
            raise
        except SidecarError as err:  # the engine failed or its stream broke
            raise BackupError(self.target.backup_name, "read", f"volume {self.item}: {err}") from err
        except OSError as exc:  # writing the archive (disk full...)
            raise BackupError(self.target.backup_name, "write", f"volume {self.item}: {exc}") from exc

    def finish(self) -> ArchiveResult:
        try:
            result = self.pending.finish()
        except BackupError:
            raise
        except SidecarError as err:  # a mirror reader builds the archive here
            raise BackupError(self.target.backup_name, "write", f"volume {self.item}: {err}") from err
        except OSError as exc:
            raise BackupError(self.target.backup_name, "write", f"{self.pending.request.final_path}: {exc}") from exc
        logger.info("archive written", extra={"target": self.target.backup_name, "volume": self.item, "phase": "write",
                                              "path": str(result.path), "bytes": result.size,
                                              "tar_bytes": result.raw_bytes})
        return result


@contextlib.contextmanager
def capture(ctx: Context, target: Target, container: ContainerInfo,
            archive_path: ArchivePath) -> Iterator[list[VolumeCapture]]:
    """Partial archives for every volume of `target`, removed on the way out unless finished."""
    cfg = target.config
    mirrored = _mirrored(target, container, encrypted=ctx.local_encryption is not None)
    with contextlib.ExitStack() as stack:
        captures = []
        for volume in target.volumes:
            mirror = mirror_folder(ctx.store.state_dir, target.backup_name, volume.volume_name) if mirrored else None
            request = readers.ArchiveRequest(container.id, volume.mount, archive_path(volume.volume_name),
                                             cfg.compression, ctx.settings.file_mode, ctx.local_encryption,
                                             cfg.exclude, ctx.worker_settings, target.backup_name, mirror)
            reader = readers.choose(ctx.engine, request)
            pending = stack.enter_context(reader.open(ctx.engine, request))
            captures.append(VolumeCapture(ctx, target, volume, pending))
        yield captures


def mirror_refusal(target: Target, container: ContainerInfo, encrypted: bool) -> str | None:
    """Why the target's volumes do not go through a staging mirror, or None when they do: a
    stop or pause target that runs (a stopped one is read as it is), unless backup.mirror=false,
    or unset with local encryption on (the mirror is a plaintext copy kept between runs)."""
    if not needs_quiesce(target) or container.state is not ContainerState.RUNNING:
        return "not a running stop/pause target"
    wanted = target.config.mirror
    if wanted is None and encrypted:
        return ("local encryption is on and the mirror would be a plaintext copy; label backup.mirror=true "
                "keeps one")
    if wanted is False:
        return "label backup.mirror=false"
    return None


def _mirrored(target: Target, container: ContainerInfo, encrypted: bool) -> bool:
    why = mirror_refusal(target, container, encrypted)
    if why is not None and why != "not a running stop/pause target":
        logger.info(f"no staging mirror: plain stop ({why})", extra={"target": target.backup_name, "phase": "read"})
    return why is None


# --- restore ------------------------------------------------------------------------------

def find_volume(container: ContainerInfo, volume: str) -> tuple[Mount, str]:
    """A container's volume by its short name, volume name or mount destination; with its
    short name."""
    specs = restore_volumes(container)
    for spec in specs:
        if volume in (spec.volume_name, spec.mount.source) or mount_matches(spec.mount, volume,
                                                                           container.volume_prefix):
            return spec.mount, spec.volume_name
    listed = ", ".join(f"{s.volume_name} ({s.mount.destination})" for s in specs) or "none"
    raise NotFound(f"container {container.name!r} has no volume {volume!r}; its mounts: {listed}")


def restore(ctx: Context, request: RestoreRequest) -> RestoreOutcome:
    started = time.monotonic()
    container, backup_name, path = request.container, request.backup_name, request.archive
    mount, volume_name = find_volume(container, request.item)
    fields = {"target": backup_name, "container": container.name, "volume": volume_name, "archive": str(path)}
    with ctx.store.target_lock(backup_name), open_archive(path) as archive, contextlib.ExitStack() as stack:
        # Everything that can refuse the restore runs before anything is stopped: one worker
        # verifies the archive (the sidecar reads none of it), waits, checks the room and writes.
        if not request.force and not ctx.engine.path_is_empty(container.id, mount.destination):
            raise _not_empty(container, mount, volume_name)
        how = unpack.UnpackRequest(container, mount, archive, archive.expected_sha256 or "", ctx.settings.decryption,
                                   ctx.worker_settings, backup_name)
        plan = unpack.require_worker(how, *unpack.worker_plan(ctx.engine, how, probe=False))
        if plan.nested:
            logger.info("restoring in two passes: the container mounts something inside the volume (a rename "
                        "cannot cross it)", extra=fields)
        else:
            return _one_pass(ctx, request, how, plan, stack, fields, started)
        logger.info("verifying archive", extra={**fields, "phase": "verify"})
        worker = stack.enter_context(unpack.StagedRestore(ctx.engine, how, plan, replacing=request.force))
        check = worker.verified
        assert check is not None
        logger.info("archive verified", extra={**fields, "phase": "verify", "members": check.members,
                                               "bytes": check.tar_bytes, "sha256": check.sha256})
        downtime = replace_contents(
            ctx, request, volume_name, mount, fields, write=lambda current: _unpack(how, worker.write, fields),
            # The room, once the volume is reachable (a Swarm service's stand-in) and its writers stopped.
            before_clear=lambda current: worker.room())
    return _finished(request, fields, check, started, downtime)


def _one_pass(ctx: Context, request: RestoreRequest, how: unpack.UnpackRequest, plan: unpack.WorkerPlan,
              stack: contextlib.ExitStack, fields: dict, started: float) -> RestoreOutcome:
    """The archive read once by the worker into a staging folder in the volume, swapped in for
    the old contents (journalled as an emptying first: a swap cut short must not start the
    app); the two-pass path when the volume cannot hold both (the worker says so)."""
    worker = stack.enter_context(unpack.StagedRestore(ctx.engine, how, plan, replacing=request.force, one_pass=True))

    def write(current: ContainerInfo, emptying: Callable[[], None]) -> Summary:
        if worker.stage():
            emptying()
            return _unpack(how, worker.swap, fields)
        worker.room()
        emptying()  # the worker empties the volume itself on the go
        return _unpack(how, worker.write, fields)

    outcome: list[Summary] = []
    downtime = replace_contents(ctx, request, fields["volume"], how.mount, fields, clear=not request.force,
                                write=lambda current, emptying: outcome.append(write(current, emptying)), marks=True)
    return _finished(request, fields, outcome[0], started, downtime)


def _finished(request: RestoreRequest, fields: dict, summary: Summary, started: float,
              downtime: float) -> RestoreOutcome:
    seconds = time.monotonic() - started
    logger.info("restore finished", extra={**fields, "phase": "done", "seconds": round(seconds, 3),
                                           "downtime_seconds": round(downtime, 3)})
    return RestoreOutcome(request.backup_name, request.container.name, fields["volume"], request.archive,
                          summary.members, summary.tar_bytes, seconds, downtime)


def replace_contents(ctx: Context, request: RestoreRequest, volume_name: str, mount: Mount, fields: dict,
                     write: Callable[[ContainerInfo], object], clear: bool = True,
                     before_clear: Callable[[ContainerInfo], object] | None = None,
                     write_empties: bool = False, marks: bool = False) -> float:
    """Stop, call `before_clear` (a check that may still refuse), empty (unless `clear` is
    False: one file or folder written over the rest), call `write` with the container whose
    mounts reach the volume, start; returns the seconds the container was down. A container
    a failed restore left stopped is started once this restore succeeds. `write_empties`:
    `write` empties the volume itself first (a worker that sees only that volume), so no
    helper container does; it is journalled all the same before `write` runs. `marks`:
    `write` empties or swaps the volume itself and calls its second argument just before it
    does (journalled then: a failure before that starts the container again; `clear` then
    only refuses a volume that is not empty)."""
    container, backup_name = request.container, request.backup_name
    was_left = is_left_stopped(ctx, container)
    with contextlib.ExitStack() as stack:
        current = ctx.engine.inspect(container.id) if container.id else container  # "": see left_at_zero
        stop = None
        if current.state in (ContainerState.RUNNING, ContainerState.PAUSED, ContainerState.RESTARTING):
            stop = stack.enter_context(Interruption(ctx, current, InterruptionKind.STOPPED, backup_name,
                                                    request.stop_timeout))
        # A replicated Swarm service's task containers go with a scale to 0: a stand-in reaches its volumes.
        current = stack.enter_context(ctx.readable(current))
        emptied = was_left

        def emptying() -> None:
            nonlocal emptied
            emptied = True
            if stop is not None:  # killed from here on, the next start must not run it
                journal_left_stopped(ctx, current, backup_name)

        try:
            if before_clear is not None:
                before_clear(current)
            if clear and not ctx.engine.path_is_empty(current.id, mount.destination):
                if not request.force:  # written to while it was stopping
                    raise _not_empty(container, mount, volume_name)
                if not marks:
                    emptying()
                    if not write_empties:
                        _clear(ctx, current, mount)
            logger.info("restoring", extra={**fields, "phase": "restore"})
            if marks:
                write(current, emptying)  # type: ignore[call-arg]
            else:
                write(current)
        except SidecarError as err:
            if emptied:
                raise _left_stopped(stop, current, backup_name, volume_name, mount, err) from err
            raise
    if was_left:
        put_back_left(ctx, container, backup_name)
        logger.info("container a failed restore had left stopped started again", extra={**fields, "phase": "start"})
    return stop.seconds if stop is not None else 0.0


def _not_empty(container: ContainerInfo, mount: Mount, volume_name: str) -> RestoreError:
    return RestoreError(f"volume {volume_name} of {container.name} ({mount.destination}) is not empty; "
                        "use --force to replace its contents")


def _left_stopped(stop: Interruption | None, container: ContainerInfo, backup_name: str,
                  volume_name: str, mount: Mount, err: SidecarError) -> RestoreLeftStopped:
    """The volume's old contents are gone and the new ones incomplete: never start the app
    on that. Journalled, so a restarted sidecar does not start it either."""
    if stop is not None:
        stop.leave_stopped(str(err))
    else:  # not running when the restore began (its owner's or an earlier failed restore's doing)
        logger.error("restore failed after emptying the volume; the container stays stopped", extra={
            "target": backup_name, "container": container.name, "volume": volume_name, "phase": "restore",
            "error": str(err)})
    return RestoreLeftStopped(container.name, volume_name, (
        f"RESTORE FAILED AFTER EMPTYING volume {volume_name} of {container.name} ({mount.destination}): {err}. "
        f"The container is left stopped so the app does not start on an empty or partial volume. Restore again "
        f"with --force (the container is started when it succeeds), or start it yourself"))


def _unpack(how: unpack.UnpackRequest, write: Callable[[], Summary], fields: dict) -> Summary:
    """Write the archive into the volume by the worker container (sidecar/readers/unpack.py)."""
    try:
        summary = write()
    except SidecarError as err:
        raise RestoreError(f"unpacking {how.archive.name} into {how.container.name}:{how.mount.destination} "
                           f"failed: {err}") from err
    logger.info("volume unpacked", extra={**fields, "phase": "restore", "path": unpack.WORKER_PATH,
                                          "members": summary.members, "stripped": summary.stripped})
    return summary


def _clear(ctx: Context, container: ContainerInfo, mount: Mount) -> None:
    """Empty the mount through a short-lived helper container that shares the target's
    mounts (the engine's API cannot delete files)."""
    image = ctx.helper_image(container)
    code, logs = ctx.engine.run_helper(image, container.id, ["sh", "-c", _CLEAR_SCRIPT, "sh", mount.destination])
    if code != 0:
        raise RestoreError(
            f"emptying {container.name}:{mount.destination} with a helper container from image {image} failed "
            f"(exit {code}: {logs.strip()[-300:]}); set BACKUP_HELPER_IMAGE to an image with sh and rm")
    if not ctx.engine.path_is_empty(container.id, mount.destination):
        raise RestoreError(f"{container.name}:{mount.destination} is still not empty after clearing it")
