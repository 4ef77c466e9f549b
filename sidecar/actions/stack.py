"""The stack kept with the data: a Compose project's definition (compose files, `.env`,
file secrets, read-only configs, extra paths) archived with the backups of the project's
first target (sidecar/core/stacks.py decides which files and which target), and put back into
a folder of the user's choice by `restore-stack`.

Both directions run in worker containers that bind-mount the host paths (read-only to
archive, the chosen folder read-write to restore): the sidecar never reads or writes the
host's files itself. Restore writes through the worker's checked extractor
(sidecar/worker/extract.py) after a whole verification pass here.

Secrets leave the host only encrypted: without BACKUP_AGE_RECIPIENTS/PASSPHRASE they are
left out with one warning per run naming them (paths only, never content).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os.path
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..tarball.archive import ArchiveResult
from ..core.errors import BackupError, RestoreError, SidecarError
from ..tarball.extract import open_archive
from ..core.model import Compression, ContainerInfo, ContainerState, Mount, Target, WorkerMount
from ..core.naming import CHECKSUM_SUFFIX, choose_name
from ..readers import READERS
from ..readers.stack import StackArchive, stack_request
from ..readers.worker import NAME as WORKER, VOLUME_ROOT, WorkerReader, WorkerSite
from ..core.stacks import ITEM, WORKING_DIR, Stack, discover_stacks
from ..readers.unpack import UnpackRequest, WorkerPlan, WorkerUnavailable, list_archive, run_worker
from .context import Context
from .formats import StorageFormat, format_of
from .formats.base import SnapshotResult
from .formats.restic import snapshot_of_stream
from .prune import promote
from .restore import archive_to_read
from .restore_snapshot import dump_archive

logger = logging.getLogger(__name__)

STACK_FILE = "stack.tar.zst"  # backup.format=restic: the stack's archive as one file of its snapshot
STACK_TEMP = "restic-stack"  # under the state folder: the tar on its way into the repository


def stack_for(ctx: Context, target: Target) -> Stack | None:
    """The stack whose archive `target`'s backups make (None: none, or not this target's)."""
    project = target.container.compose_project
    if project is None or not ctx.settings.stack_enabled:
        return None
    containers = ctx.engine.list_containers(project, running=False)
    found = discover_stacks([t for t in ctx.discover().targets if t.container.compose_project == project],
                            containers, ctx.settings.stack)
    for skipped in found.skipped:
        if not skipped.warn:
            logger.info("stack not archived", extra={"project": project, "reason": skipped.reason, "phase": "stack"})
        else:
            logger.warning(f"stack not archived: {skipped.reason}", extra={"project": project, "phase": "stack"})
    return found.led_by(target.backup_name)


def _site(ctx: Context) -> tuple[WorkerSite | None, str]:
    reader = READERS[WORKER]
    assert isinstance(reader, WorkerReader)
    return reader.site(ctx.engine, ctx.worker_settings)


def export_stack(ctx: Context, target: Target,
                 restic: bool = False) -> tuple[str, ArchiveResult | SnapshotResult] | None:
    """Archive the stack `target` leads (see stack_for): its project and the archive, or
    with `restic` (backup.format=restic) the snapshot it went into; None when there is none
    or no worker container can run here (said in the log). Raises BackupError (phase
    "stack")."""
    try:
        stack = stack_for(ctx, target)
    except SidecarError as err:
        raise BackupError(target.backup_name, "stack", f"cannot list the containers of its project: {err}") from err
    if stack is None:
        return None
    fields = {"target": target.backup_name, "project": stack.project, "phase": "stack"}
    if ctx.settings.encryption is None and stack.secrets and not restic:  # a restic repository is encrypted
        logger.warning("file secrets left out of the stack archive: archives are not encrypted; set "
                       "BACKUP_AGE_RECIPIENTS (or BACKUP_AGE_PASSPHRASE) to keep them, encrypted",
                       extra={**fields, "secrets": [p.host_path for p in stack.secrets]})
        stack = stack.without_secrets()
    site, reason = _site(ctx)
    if site is None:
        logger.warning("stack not archived: it is read by a worker container and none can run here",
                       extra={**fields, "reason": reason})
        return None
    if restic:
        return stack.project, _stack_snapshot(ctx, target, stack, site, fields)
    cfg = target.config
    name = choose_name(stack.project, ITEM, ctx.now(), cfg.schedule.frequency, cfg.schedule.fires_more_than_once_a_day,
                       ".tar.zst" + ctx.local_encryption_suffix, ctx.store.taken)
    request = stack_request(ctx.store.path(name.relpath), stack, target.container.id, ctx.settings.file_mode,
                            ctx.local_encryption, ctx.worker_settings)
    started = time.monotonic()
    try:
        with StackArchive(ctx.engine, request, site, stack, ctx.settings.stack.max_bytes) as pending:
            pending.read()
            result = pending.finish()
    except (SidecarError, OSError) as err:
        raise BackupError(target.backup_name, "stack", f"archiving the stack of project {stack.project!r} "
                          f"({stack.working_dir}): {err}") from err
    _report_left_out(pending, fields)
    promote(ctx, ctx.store.archive_at(result.path), ctx.settings.keep)
    logger.info("stack archived", extra={**fields, "path": str(result.path), "bytes": result.size,
                                         "files": list(pending.stored), "seconds": round(time.monotonic() - started, 3)})
    return stack.project, result


def _stack_snapshot(ctx: Context, target: Target, stack: Stack, site: WorkerSite, fields: dict) -> SnapshotResult:
    """backup.format=restic: the worker writes the stack's archive (zstd, no age: the
    repository encrypts) into the state folder, which goes into the repository as one file,
    STACK_FILE, of a snapshot tagged {project}/stack; the file is removed on every way out.
    restore-stack reads it back into an archive (dump_archive) and verifies it as any."""
    path = ctx.store.state_dir / STACK_TEMP / f"{uuid.uuid4().hex}{Compression.ZSTD.extension}"
    request = stack_request(path, stack, target.container.id, 0o600, None, ctx.worker_settings)
    started = time.monotonic()
    try:
        with StackArchive(ctx.engine, request, site, stack, ctx.settings.stack.max_bytes) as pending:
            pending.read()
            result = pending.finish()
        with open(result.path, "rb") as tar:
            snapshot = snapshot_of_stream(ctx, stack.project, ITEM, target.config.schedule.frequency, STACK_FILE,
                                          iter(lambda: tar.read(1 << 20), b""))
    except (SidecarError, OSError) as err:
        raise BackupError(target.backup_name, "stack", f"storing the stack of project {stack.project!r} "
                          f"({stack.working_dir}) in the restic repository: {err}") from err
    finally:
        for leftover in (path, path.with_name(path.name + CHECKSUM_SUFFIX)):
            leftover.unlink(missing_ok=True)
    _report_left_out(pending, fields)
    logger.info("stack stored in a restic snapshot", extra={
        **fields, "snapshot": snapshot.snapshot_id, "bytes": snapshot.raw_bytes, "added_bytes": snapshot.added_bytes,
        "files": list(pending.stored), "seconds": round(time.monotonic() - started, 3)})
    return snapshot


def _report_left_out(pending: StackArchive, fields: dict) -> None:
    too_big = [f"{x.host_path} ({x.size} bytes)" for x in pending.left_out if x.reason == "too big"]
    if too_big:
        logger.warning(f"left out of the stack archive, bigger than BACKUP_STACK_MAX_MB "
                       f"({pending.max_bytes // (1024 * 1024)} MiB): {', '.join(too_big)}; exclude them "
                       "(backup.stack.exclude) or raise the bound", extra=fields)
    other = [f"{x.host_path} ({x.reason})" for x in pending.left_out if x.reason != "too big"]
    if other:
        logger.warning(f"left out of the stack archive: {', '.join(other)}", extra=fields)


# --- restore --------------------------------------------------------------------------------

@dataclass(frozen=True)
class StackRestoreOutcome:
    project: str
    into: str  # the folder on the engine's host
    archive: Path
    members: int
    tar_bytes: int
    seconds: float


def run_restore_stack(ctx: Context, project: str, into: str, archive: str = "latest", force: bool = False,
                      from_remote: str | None = None, node: str | None = None,
                      restic: bool = False) -> StackRestoreOutcome:
    """Put the project's stack archive back into the host folder `into` (it must exist;
    not the live project's working folder unless `force`). `restic`: from the project's
    stack snapshot (`archive`: latest, its id or name) in the restic repository (or
    `from_remote`'s), read back into an archive and restored the same checked way."""
    started = time.monotonic()
    into = _host_folder(into)
    if not force:
        _refuse_live(ctx, project, into)
    site, reason = _site(ctx)
    if site is None:
        raise RestoreError(f"restoring a stack needs a worker container (it writes into the host folder {into}): "
                           f"{reason}")
    with contextlib.ExitStack() as stack:
        if restic:
            path, name = stack.enter_context(dump_archive(ctx, project, ITEM, archive, from_remote,
                                                           raw=Compression.ZSTD, node=node))
        else:
            path = archive_to_read(ctx, stack, project, ITEM, archive, from_remote, node,
                                   f"the stack of project {project}")
        fields = {"project": project, "archive": str(path), "into": into, "phase": "restore-stack"}
        plan = _plan(ctx, site, path, into)
        with open_archive(path) as opened:
            logger.info("verifying archive", extra={**fields, "phase": "verify"})
            request = UnpackRequest(_folder_as_container(project, into), Mount("bind", into, into), opened, "",
                                    ctx.settings.decryption, ctx.worker_settings, project)
            # Nothing is written from a damaged archive: a listing worker checks it whole first
            # (the backup volume read-only, nothing else), the sidecar parses none.
            check = list_archive(ctx.engine, request, dataclasses.replace(plan, mounts=plan.mounts[-1:]),
                                 lambda member: None)
            request = dataclasses.replace(request, sha256=check.sha256)
            try:
                summary = run_worker(ctx.engine, request, plan)
            except WorkerUnavailable as err:
                raise RestoreError(f"{err}; the folder must exist on the Docker host (mkdir -p {into})") from err
    seconds = time.monotonic() - started
    logger.info("stack restored", extra={**fields, "members": summary.members, "seconds": round(seconds, 3)})
    return StackRestoreOutcome(project, into, Path(name) if restic else path, summary.members, summary.tar_bytes,
                               seconds)


def stack_is_restic(ctx: Context, project: str) -> bool:
    """Whether the project's stack goes into restic snapshots: BACKUP_FORMAT=restic, or
    one of the project's targets is labelled backup.format=restic."""
    return ctx.settings.backup_format is StorageFormat.RESTIC or any(
        format_of(ctx, t) is StorageFormat.RESTIC for t in ctx.discover().targets
        if t.container.compose_project == project)


def _host_folder(into: str) -> str:
    if not os.path.isabs(into):
        raise RestoreError(f"--into {into!r}: accepted: an absolute path of a folder on the Docker host")
    return os.path.normpath(into)


def _refuse_live(ctx: Context, project: str, into: str) -> None:
    """The live project's folder (the working folder its containers name) is never written
    over without --force, nor a folder above or below it."""
    for container in ctx.engine.list_containers(project, running=False):
        live = container.labels.get(WORKING_DIR)
        if live and _overlaps(os.path.normpath(live), into):
            raise RestoreError(f"--into {into}: the folder of the live project {project!r} is {live} (container "
                               f"{container.name!r}); restore into another folder and compare, or use --force to "
                               "write over it")


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def _folder_as_container(project: str, into: str) -> ContainerInfo:
    """What the unpack path's log lines name: the folder, as no container holds it."""
    return ContainerInfo("", f"folder {into} (stack {project})", "", "", ContainerState.EXITED, {}, ())


def _plan(ctx: Context, site: WorkerSite, path: Path, into: str) -> WorkerPlan:
    try:
        inside = site.store.inside(Path(os.path.abspath(path)))
    except ValueError as exc:
        raise RestoreError(f"the archive {path} is not on the backup volume") from exc
    store = WorkerMount(site.store.mount.kind, site.store.mount.source, site.store.mount.target, read_only=True)
    folder = WorkerMount("bind", into, VOLUME_ROOT, read_only=False)
    return WorkerPlan(site, (folder, store), inside, ctx.worker_settings.timeout)
