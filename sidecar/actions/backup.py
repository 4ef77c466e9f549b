"""Back up one target: pre-command, quiesce (stop or pause), capture every source, put
the container back, publish the archives with their checksums, post-command, image
export; after a success the off-site copy and rotation.

The container runs again as soon as the data is read: checksum files, renames, uploads
and rotation all happen after.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterator

from ..tarball.archive import ArchiveResult
from ..core.consistency import ConsistencyRisk
from ..core.errors import BackupAborted, BackupBusy, BackupError, ContainerNotFound, SidecarError, StoppedByOthers
from ..core.groups import Group
from ..docker.engine import WORKER_LABEL
from ..core.model import ContainerInfo, ContainerState, SharedPolicy, Strategy, Target
from ..core.naming import choose_name
from ..core.stacks import ITEM
from . import formats
from .formats.archive import rotate_and_sync
from .formats.restic import Kept, keep_and_copy
from .context import Context
from .formats import Published, SnapshotResult
from .images import export_image
from .stack import export_stack
from .interrupt import Interruption, InterruptionKind, LinkedEvent, is_left_stopped
from .recover import put_back_earlier
from .sources import ArchivePath, Capture, sources_for
from .status import consistency_risk

logger = logging.getLogger(__name__)


class BackupResult(enum.StrEnum):
    """A run's result; the value is the metrics' `result` label (so it equals the string)."""

    SUCCESS = "success"
    FAILURE = "failure"
    SKIPPED = "skipped"
    # Given up on purpose: someone else stopped or removed the container meanwhile, or the
    # sidecar shut down. No archive; nothing is broken.
    ABORTED = "aborted"


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
    # A hot copy of what looks like a live database (consistency.py): the run succeeds, and
    # says so in its summary line, a notification and the metrics.
    risk: ConsistencyRisk | None = None
    # The stack archive of the target's Compose project made with this backup (sidecar/actions/stack.py).
    stack: "StackOutcome | None" = None
    snapshots: tuple[SnapshotResult, ...] = ()  # backup.format=restic: the snapshots this run added

    def __post_init__(self) -> None:
        object.__setattr__(self, "result", BackupResult(self.result))  # "success" given as a string too

    @property
    def ok(self) -> bool:
        return self.result is BackupResult.SUCCESS


@dataclass(frozen=True)
class StackOutcome:
    """The project's stack archive (or snapshot) of a run, recorded in the metrics as
    target {project}, volume `stack`, like every archive."""

    project: str
    archive: ArchiveResult | None
    snapshot: SnapshotResult | None = None  # backup.format=restic: the snapshot it went into instead

    def as_outcome(self, container: str, finished_at: datetime | None) -> BackupOutcome:
        return BackupOutcome(self.project, container, BackupResult.SUCCESS,
                             (self.archive,) if self.archive is not None else (), (ITEM,), finished_at=finished_at,
                             snapshots=(self.snapshot,) if self.snapshot is not None else ())


class _FailedAfterArchives(Exception):
    """The archives are written and published, but a later step (post-command, image
    export) failed: the run fails and keeps its archives."""

    def __init__(self, error: BackupError, published: Published, downtime: float):
        self.error, self.published, self.downtime = error, published, downtime


def run_backup(ctx: Context, target: Target, together: bool = False) -> BackupOutcome:
    """Back up `target` now. Never raises for an expected failure: the outcome says
    what failed and in which phase, and the failure is logged. A bug raises.
    `together`: a member of a group run (`run_group`), which already ran its pre-command and
    quiesced it, and does the off-site copy and rotation after the whole group."""
    started = time.monotonic()
    fields = {"target": target.backup_name, "container": target.container.name}
    items = tuple(item for source in sources_for(target) for item in source.describe(target))
    risk = consistency_risk(ctx, target)

    def failed(err: SidecarError, phase: str, published=Published(), downtime=0.0) -> BackupOutcome:
        logger.error("backup failed", extra={**fields, "phase": phase, "error": str(err),
                                             "seconds": round(time.monotonic() - started, 3)})
        return BackupOutcome(target.backup_name, target.container.name, BackupResult.FAILURE, published.archives,
                             items, time.monotonic() - started, downtime, phase, str(err), ctx.now(), risk=risk,
                             snapshots=published.snapshots)

    logger.info("backup started", extra={**fields, "phase": "start", "strategy": target.method})
    try:
        with ctx.store.target_lock(target.backup_name):
            ctx.pings.start(target.backup_name, target.config.ping)  # queued: costs the run nothing
            published, downtime, image, stack = _backup(ctx, target, together)
    except BackupBusy as err:
        logger.warning("backup skipped: the previous one is still running", extra={**fields, "phase": "start"})
        return BackupOutcome(target.backup_name, target.container.name, BackupResult.SKIPPED, error=str(err),
                             phase="start", finished_at=ctx.now())
    except _FailedAfterArchives as partial:
        return failed(partial.error, partial.error.phase, partial.published, partial.downtime)
    except StoppedByOthers as err:  # a shutdown's abort stays a failure: nothing was backed up
        logger.warning("backup aborted", extra={**fields, "phase": err.phase, "error": str(err)})
        return BackupOutcome(target.backup_name, target.container.name, BackupResult.ABORTED, (), items,
                             time.monotonic() - started, 0.0, err.phase, str(err), ctx.now(), risk=risk)
    except SidecarError as err:
        return failed(err, getattr(err, "phase", "backup"))
    offsite_error = None if together else _after_success(ctx, target, stack)
    seconds = time.monotonic() - started
    archives = published.archives
    summary = {
        **fields, "phase": "done", "seconds": round(seconds, 3), "downtime_seconds": round(downtime, 3),
        "bytes": sum(a.size for a in archives), "archives": [str(a.path) for a in archives],
        **({"snapshots": [s.snapshot_id for s in published.snapshots]} if published.snapshots else {}),
        **({"image_archive": str(image.path)} if image is not None else {}),
        **({"stack_archive": str(stack.archive.path)} if stack is not None and stack.archive is not None else {}),
        **({"stack_snapshot": stack.snapshot.snapshot_id} if stack is not None and stack.snapshot is not None
           else {}),
    }
    if risk is None:
        logger.info("backup finished", extra=summary)
    else:  # the one line a user who never runs `plan` reads
        logger.warning(f"backup finished with a warning: {risk.summary}", extra={
            **summary, "warning": "consistency", "app": risk.seen, "preset": risk.preset})
    return BackupOutcome(target.backup_name, target.container.name, BackupResult.SUCCESS, archives, items,
                         seconds, downtime, finished_at=ctx.now(), offsite_error=offsite_error, image_archive=image,
                         risk=risk, stack=stack, snapshots=published.snapshots)


def _backup(ctx: Context, target: Target, together: bool = False) -> tuple[Published, float,
                                                                         ArchiveResult | None, StackOutcome | None]:
    """The story of one backup; returns what it stored (archives or snapshots), the seconds
    the container was down, the image export it made (None: none was needed) and its
    project's stack archive (None: not this target's to make)."""
    if not together:  # a group's members: run_group did it before its own stops
        put_back_earlier(ctx, target.backup_name)
    container = ctx.engine.inspect(target.container.id)  # fresh state, not the one seen at discovery
    if is_left_stopped(ctx, container):  # an archive of its emptied volume would rotate good ones out
        raise BackupError(target.backup_name, "start", "a failed restore left the container stopped with an emptied "
                          "volume; restore it again before backing it up")
    running = container.state is ContainerState.RUNNING
    # This run's cancel flag: the sidecar shutting down, or someone else stopping the target.
    ctx = dataclasses.replace(ctx, cancel=LinkedEvent(ctx.cancel))
    if not together:
        _command(ctx, target, container.id, target.config.exec_pre, "pre", running)
    sources, archive_path, fmt = sources_for(target), _archive_path(ctx, target), formats.for_target(ctx, target)
    with contextlib.ExitStack() as partial:  # unfinished archives are removed on every way out
        hot: list[Capture] = []
        cold: list[Capture] = []
        reading = partial.enter_context(ctx.readable(container)) if _scales(target, container) else container
        for source in sources:
            captures = partial.enter_context(fmt.capture(ctx, target, source, reading, archive_path))
            (cold if source.needs_quiesce(target) else hot).extend(captures)
        for capture in hot:  # e.g. an app's dump: the app must run
            capture.read()
        for capture in cold:  # e.g. a staging mirror's first pass, while the app still runs
            _prepare(capture)
        with _quiesced(ctx, target, container, bool(cold) and running) as window:
            for capture in cold:
                capture.read()
        published = fmt.publish(ctx, target, hot + cold)
    try:
        _command(ctx, target, _after_window(ctx, container), target.config.exec_post, "post", None)
        image = _image_export(ctx, target)
        stack = export_stack(ctx, target, restic=fmt.name == "restic")
    except BackupError as err:
        raise _FailedAfterArchives(err, published, window.seconds) from err
    if stack is None:
        return published, window.seconds, image, None
    project, made = stack
    archived = isinstance(made, ArchiveResult)
    outcome = StackOutcome(project, made if archived else None, None if archived else made)
    return published, window.seconds, image, outcome


def _scales(target: Target, container: ContainerInfo) -> bool:
    """A stop of a replicated Swarm service's task: the service is scaled to 0 (see interrupt)."""
    return target.config.strategy is Strategy.STOP and container.replicated_task is not None


def _after_window(ctx: Context, container: ContainerInfo) -> str:
    """The container backup.exec.post runs in: the same one, or, when a scale back replaced
    a replicated Swarm service's task, this node's running task in the same slot."""
    task = container.replicated_task
    if task is None:
        return container.id
    try:
        now = [c for c in ctx.engine.service_containers(task.service_id) if c.state is ContainerState.RUNNING
               and c.swarm is not None and c.swarm.slot == task.slot]
    except SidecarError:
        return container.id
    return now[0].id if now else container.id


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
    window = Interruption(ctx, container, kind, target.backup_name, target.config.stop_timeout, abort=ctx.cancel,
                          ready_timeout=target.config.ready_timeout)
    windows = [window]
    try:
        with contextlib.ExitStack() as others:
            # Other writers of the same volumes first, the target last: it starts first again.
            for writer in shared_writers(ctx, target, container):
                windows.append(others.enter_context(Interruption(
                    ctx, writer, kind, target.backup_name, target.config.stop_timeout, abort=ctx.cancel,
                    ready_timeout=target.config.ready_timeout)))
            with window:
                yield window
    except BackupAborted as err:
        if (why := _overruled(windows)) is None:
            raise
        raise StoppedByOthers(target.backup_name, err.phase, why) from err
    if (why := _overruled(windows)) is not None:  # seen only at the end: not a backup of what we put back
        raise StoppedByOthers(target.backup_name, "restart", why)
    # Here the container runs again (and is ready, as far as its healthcheck says): the
    # rest costs no downtime.
    logger.info("container running again", extra={"target": target.backup_name, "container": container.name,
                                                   "phase": "restart", "downtime_seconds": round(window.seconds, 3),
                                                   "ready": _readiness(window.ready)})


def _overruled(windows: list[Interruption]) -> str | None:
    """Why the run gives up: someone else stopped one of the containers it interrupted."""
    for window in windows:
        if window.overruled is not None:
            return f"someone else stopped {window.container.name!r}: {window.overruled}"
    return None


def shared_writers(ctx: Context, target: Target, container: ContainerInfo,
                   exclude: frozenset[str] = frozenset()) -> list[ContainerInfo]:
    """Other running containers that mount one of the target's volumes read-write: with
    backup.shared=quiesce they are interrupted with it (the sidecar itself never is); with
    `ignore` the log names them. `exclude`: ids quiesced already (a group's members)."""
    volumes = {v.mount.source for v in target.volumes if v.mount.kind == "volume"}
    if not volumes:
        return []
    own = ctx.own_id()
    found = [c for c in ctx.engine.list_containers() if c.id not in (container.id, own, *exclude)
             and WORKER_LABEL not in c.labels and not _scaled_with(target, container, c)
             and any(m.kind == "volume" and m.source in volumes and not m.read_only for m in c.mounts)]
    if found and target.config.shared is SharedPolicy.IGNORE:
        logger.warning("other containers write to the target's volumes and are not quiesced (backup.shared=ignore)",
                       extra={"target": target.backup_name, "containers": sorted(c.name for c in found)})
        return []
    if found:
        logger.info("quiescing the other writers of the target's volumes too",
                    extra={"target": target.backup_name, "containers": sorted(c.name for c in found)})
    return found


def _scaled_with(target: Target, container: ContainerInfo, other: ContainerInfo) -> bool:
    """`other` is another replica of the target's replicated Swarm service, which a stop
    scales to 0 as a whole: it needs no interruption of its own."""
    return (target.config.strategy is Strategy.STOP and container.swarm is not None and other.swarm is not None
            and other.swarm.service_id == container.swarm.service_id)


def _readiness(ready: bool | None) -> str:
    return {True: "healthy", False: "not healthy in time", None: "running (no healthcheck)"}[ready]


def _after_success(ctx: Context, target: Target, stack: StackOutcome | None = None) -> str | None:
    """The format's rotation and off-site copies after a success (see formats), and the
    rotation and copy of the project's stack archive made with it (an archive file whatever
    the target's format); why an off-site copy failed, None when it went through (or there is
    no destination)."""
    def stack_keep(_backup_name: str):  # a project's stack: BACKUP_KEEP, as discovery.keep_for says
        return ctx.settings.keep

    fmt = formats.for_target(ctx, target)
    if stack is not None and fmt.name == "archive":  # one sync for both
        return rotate_and_sync(ctx, [(target.backup_name, lambda _name: target.config.keep),
                                     (stack.project, stack_keep)])
    problem = fmt.after_success(ctx, target)
    if stack is not None:
        more = (keep_and_copy(ctx, Kept(stack.project, (ITEM,), ctx.settings.keep)) if stack.snapshot is not None
                else rotate_and_sync(ctx, [(stack.project, stack_keep)]))
        problem = "; ".join(p for p in (problem, more) if p) or None
    return problem


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
        try:
            running = ctx.engine.state(container_id) is ContainerState.RUNNING
        except ContainerNotFound:
            running = False
    if not running:
        logger.warning(f"backup.exec.{phase} not run: the container is not running", extra=fields)
        return
    cfg = target.config
    try:
        result = ctx.engine.run_command(container_id, command, user=cfg.exec_user, timeout=cfg.exec_timeout,
                                        fields={**fields, "container": target.container.name})
    except SidecarError as err:
        raise BackupError(target.backup_name, phase, f"backup.exec.{phase} could not run: {err}") from err
    if not result.ok:
        raise BackupError(target.backup_name, phase, f"backup.exec.{phase} {result.describe()}")
    logger.info(f"backup.exec.{phase} succeeded", extra={**fields, "seconds": round(result.seconds, 3)})



def run_group(ctx: Context, group: Group) -> list[BackupOutcome]:
    """Back up the members of a backup.group in one run: every member's pre-command, then
    all stopped (or paused) in stop order (dependents first) with their volumes' other
    writers, every member's archives, all put back in start order; the off-site copy and
    rotation after. One outcome per member, in start order."""
    lead = group.lead
    kind = {Strategy.STOP: InterruptionKind.STOPPED, Strategy.PAUSE: InterruptionKind.PAUSED}.get(lead.config.strategy)
    logger.info("group backup started", extra={"group": group.name, "phase": "start",
                                               "members": [t.backup_name for t in group.members]})
    gctx = dataclasses.replace(ctx, cancel=LinkedEvent(ctx.cancel))
    outcomes: list[BackupOutcome] = []
    windows: dict[str, Interruption] = {}
    extra: list[Interruption] = []  # the other writers of the members' volumes
    try:
        with contextlib.ExitStack() as interrupted:
            for target in group.members:
                with contextlib.suppress(BackupBusy), gctx.store.target_lock(target.backup_name):
                    put_back_earlier(gctx, target.backup_name)  # busy: its holder does it
            states = {t.backup_name: gctx.engine.inspect(t.container.id) for t in group.members}
            for target in group.members:
                running = states[target.backup_name].state is ContainerState.RUNNING
                _command(gctx, target, target.container.id, target.config.exec_pre, "pre", running)
            if kind is not None:
                _quiesce_group(gctx, group, kind, states, interrupted, windows, extra)
            for target in group.members:
                # Not waiting for the watchers' next look: a member someone stopped meanwhile
                # aborts the members not read yet.
                for window in (*windows.values(), *extra):
                    window.check()
                outcomes.append(run_backup(gctx, target, together=True))
    except (BackupError, SidecarError) as err:
        logger.error("group backup failed", extra={"group": group.name, "error": str(err)})
        return [BackupOutcome(t.backup_name, t.container.name, BackupResult.FAILURE, phase=getattr(err, "phase", "stop"),
                              error=str(err), finished_at=ctx.now(), risk=consistency_risk(ctx, t))
                for t in group.members]
    overruled = _overruled(list(windows.values()) + extra)
    finished = []
    for target, outcome in zip(group.members, outcomes):
        window = windows.get(target.backup_name)
        downtime = window.seconds if window is not None else 0.0
        if overruled is not None and not outcome.ok and outcome.result is not BackupResult.SKIPPED:
            # Given up for someone else's stop; members read before it keep their (consistent) archives.
            outcome = dataclasses.replace(outcome, result=BackupResult.ABORTED, archives=(), downtime=downtime,
                                          error=f"group {group.name!r}: {overruled}")
        elif outcome.ok:
            outcome = dataclasses.replace(outcome, downtime=downtime,
                                          offsite_error=_after_success(ctx, target, outcome.stack))
        finished.append(outcome)
    logger.info("group backup finished", extra={"group": group.name, "phase": "done",
                                                "results": {o.target: str(o.result) for o in finished}})
    return finished


def _quiesce_group(ctx: Context, group: Group, kind: InterruptionKind, states: dict[str, ContainerInfo],
                   stack: contextlib.ExitStack, windows: dict[str, Interruption], extra: list[Interruption]) -> None:
    """Interrupts every running member in stop order (and the other writers of its volumes
    before it); the ExitStack puts them back in the reverse order: start order."""
    members = frozenset(t.container.id for t in group.members)
    for target in group.stop_order:
        container = states[target.backup_name]
        if container.state is not ContainerState.RUNNING:
            continue
        for writer in shared_writers(ctx, target, container, exclude=members):
            extra.append(stack.enter_context(Interruption(ctx, writer, kind, target.backup_name,
                                                          target.config.stop_timeout, abort=ctx.cancel,
                                                          ready_timeout=target.config.ready_timeout)))
        windows[target.backup_name] = stack.enter_context(Interruption(
            ctx, container, kind, target.backup_name, target.config.stop_timeout, abort=ctx.cancel,
            ready_timeout=target.config.ready_timeout))
