"""Restore a volume (or one file or folder of it) from a restic snapshot (backup.format=restic).

The same boundary as an archive's restore: everything that can refuse it runs before
anything is stopped (the snapshot found, its one path the worker's `/volume`, `--path`
inside the volume, the volume empty or --force), then the container is stopped, the volume
emptied (not for `--path`) and `restic restore` runs in a worker container that sees only
the target volume, read-write at /restore/volume, and the backup volume read-only (restic
with --no-lock): restic's restorer writes below its --target only, and what is below
/restore besides the volume is the worker's read-only root. The container starts again
when it succeeded; a failure after emptying leaves it stopped (journalled), as for archives.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ..core.errors import NotFound, RestoreError, ResticError, SidecarError
from ..core.model import ContainerInfo, Mount, WorkerMount, WorkerSpec
from ..readers.worker import PYTHON, STORE_LABEL, STORE_ROOT, TARGET_LABEL, WorkerSite
from ..core.snapshots import (
    RESTORE_ROOT,
    VOLUME_PATH,
    Snapshot,
    choose_snapshot,
    restore_include,
    selector,
    snapshot_names,
)
from ..readers.unpack import CAPABILITIES as RESTORE_CAPABILITIES
from .context import Context
from ..store.restic import Repository, destination_repository
from ..core.settings import destination_name
from .formats.restic import local_repository, password_file, worker_site
from .restore import resolve_container
from .sources import RestoreRequest, volumes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SnapshotRestore:
    target: str
    container: str
    volume: str
    snapshot: str  # its id
    name: str  # its name in the seed's vocabulary
    path: str | None  # --path (None: the whole volume)
    seconds: float
    downtime: float


def run_restore_snapshot(ctx: Context, ref: str, volume: str, snapshot: str = "latest", force: bool = False,
                         path: str | None = None, from_destination: str | None = None) -> SnapshotRestore:
    """`from_destination`: a destination's name: the snapshot is chosen in its repository and
    copied into the local one first (`restic copy`), then restored from there."""
    started = time.monotonic()
    container, backup_name, stop_timeout = resolve_container(ctx, ref)
    mount, volume_name = volumes.find_volume(container, volume)
    include = restore_include(path)  # refused before anything else
    repo = local_repository(ctx)
    if from_destination is not None:
        chosen, name = _fetch(ctx, repo, from_destination, backup_name, volume_name, snapshot)
    else:
        chosen, name = _choose(ctx, repo, backup_name, volume_name, snapshot)
    fields = {"target": backup_name, "container": container.name, "volume": volume_name, "snapshot": chosen.short_id,
              "snapshot_name": name}
    with ctx.store.target_lock(backup_name):
        if include is None and not force and not ctx.engine.path_is_empty(container.id, mount.destination):
            raise RestoreError(f"volume {volume_name} of {container.name} ({mount.destination}) is not empty; "
                               "use --force to replace its contents (or --path for one file or folder)")
        site = worker_site(ctx)  # probes: before anything is stopped
        request = RestoreRequest(container, backup_name, volume_name, ctx.store.root, force, stop_timeout)
        logger.info("restoring from a restic snapshot", extra={**fields, "phase": "restore", "path": path})
        downtime = volumes.replace_contents(ctx, request, volume_name, mount, fields, lambda current: _restore(
            ctx, repo, site, current, mount, chosen, include, backup_name), clear=include is None)
    seconds = time.monotonic() - started
    logger.info("restore finished", extra={**fields, "phase": "done", "seconds": round(seconds, 3),
                                           "downtime_seconds": round(downtime, 3)})
    return SnapshotRestore(backup_name, container.name, volume_name, chosen.id, name, path, seconds, downtime)


def _choose(ctx: Context, repo: Repository, backup_name: str, volume_name: str, wanted: str) -> tuple[Snapshot, str]:
    found = repo.snapshots(selector(backup_name, volume_name))
    if not found:
        raise NotFound(f"no restic snapshot of {backup_name} volume {volume_name} in {repo.location}")
    names = snapshot_names(found, ctx.settings.tz)
    try:
        chosen = choose_snapshot(found, wanted, names)
    except SidecarError as err:
        raise NotFound(f"{backup_name} volume {volume_name}: {err}") from err
    if chosen.paths != (VOLUME_PATH,):  # restored below /restore it would not land in the volume
        raise RestoreError(f"snapshot {chosen.short_id} holds {', '.join(chosen.paths)}, not one volume "
                           f"({VOLUME_PATH}): it was not written by backup.format=restic; restore it with restic "
                           "itself")
    return chosen, names[chosen.id]


def _fetch(ctx: Context, local: Repository, destination: str, backup_name: str, volume_name: str,
           wanted: str) -> tuple[Snapshot, str]:
    """The snapshot chosen in `destination`'s repository, copied into the local one; the
    local copy (restic copy keeps its time and tags) and the name."""
    config = next((c for c in ctx.settings.destinations if destination_name(c) == destination), None)
    if config is None:
        raise NotFound(f"no destination named {destination!r}; configured: "
                       f"{', '.join(destination_name(c) for c in ctx.settings.destinations) or 'none'}")
    remote = destination_repository(config, local.environment()["RESTIC_PASSWORD"])
    chosen, name = _choose(ctx, remote, backup_name, volume_name, wanted)
    logger.info("copying the snapshot from the destination's repository", extra={
        "target": backup_name, "volume": volume_name, "destination": destination, "snapshot": chosen.short_id,
        "phase": "download"})
    local.copy_from(remote, snapshot=chosen.id)
    here = [s for s in local.snapshots(selector(backup_name, volume_name)) if s.time == chosen.time]
    if not here:
        raise RestoreError(f"restic copy of snapshot {chosen.short_id} from {destination} left no copy in "
                           f"{local.location}")
    return here[0], name


def _restore(ctx: Context, repo: Repository, site: WorkerSite, container: ContainerInfo, mount: Mount,
             snapshot: Snapshot, include: str | None, backup_name: str) -> None:
    store = site.store
    assert repo.local_path is not None
    read_only = WorkerMount(store.mount.kind, store.mount.source, STORE_ROOT, read_only=True)
    volume = WorkerMount(mount.kind, mount.source, RESTORE_ROOT + VOLUME_PATH, read_only=False)
    errors: list[str] = []

    def on_line(line: str) -> bool:
        if '"restic-stderr"' in line or '"error"' in line:
            errors.append(line)
            return True
        return False

    with password_file(ctx, repo) as password:
        args = ["-r", store.inside(repo.local_path), "--no-cache", "--no-lock", "--password-file",
                store.inside(password), "restore", snapshot.id, "--target", RESTORE_ROOT,
                *(["--include", include] if include else [])]
        spec = WorkerSpec(site.image, (*PYTHON, "restic", "--", *args), "restic-restore", (volume, read_only),
                          labels={STORE_LABEL: store.key, TARGET_LABEL: backup_name}, user="0",
                          capabilities=RESTORE_CAPABILITIES, timeout=ctx.settings.worker_timeout)
        result = ctx.engine.run_worker(spec, on_line)
    if not result.ok:
        detail = " | ".join(errors[-5:]) or " | ".join(result.tail[-5:]) or "no output"
        raise ResticError(f"restic restore of {snapshot.short_id} into {container.name}:{mount.destination} in the "
                          f"worker container {result.name} failed (exit {result.exit_code}): {detail}")
