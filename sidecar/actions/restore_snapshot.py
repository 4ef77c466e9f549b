"""Restore a volume (or one file or folder of it) from a restic snapshot (backup.format=restic).

The same boundary as an archive's restore: everything that can refuse it runs before
anything is stopped (the snapshot found, its one path the worker's `/volume`, `--path`
inside the volume, the volume empty or --force; the worker image's probe runs meanwhile),
then the container is stopped and one worker container that sees only the target volume,
read-write at /restore/volume, and the backup volume read-only, empties the volume (not for
`--path`; no helper container) and runs `restic restore` (with --no-lock): restic's
restorer writes below its --target only, and what is below /restore besides the volume is
the worker's read-only root. The container starts again when it succeeded; a failure after
emptying leaves it stopped (journalled), as for archives.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..tarball.archive import ArchiveWriter, ProgressLog
from ..core.errors import NotFound, RestoreError, ResticError, SidecarError
from ..core.naming import CHECKSUM_SUFFIX
from ..core.model import Compression, ContainerInfo, Mount, WorkerMount, WorkerSpec
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
from ..store.restic import Repository
from ..core.settings import destination_name
from .formats.restic import destination_config, local_repository, password_file, reachable_repository, worker_site
from .restore import resolve_container
from .sources import RestoreRequest, volumes
from .sources.presets.dump import parts_tar

logger = logging.getLogger(__name__)

DUMP_PATH = re.compile(r"/?[A-Za-z0-9_][A-Za-z0-9_.+$-]{0,200}")  # a preset's --stdin-filename
DUMPS_FOLDER = "restic-dumps"  # under the state folder: a dump on its way back, as a checked archive


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
                         path: str | None = None, from_destination: str | None = None,
                         node: str | None = None) -> SnapshotRestore:
    """`from_destination`: a destination's name: the snapshot is chosen in its repository and
    copied into the local one first (`restic copy`), then restored from there. `node`: a
    snapshot another node took (restic's host), from `from_destination`'s repository (else
    the first destination's), as the archive format's --node reads that node's folder;
    without it, this node's snapshots only."""
    started = time.monotonic()
    container, backup_name, stop_timeout = resolve_container(ctx, ref)
    mount, volume_name = volumes.find_volume(container, volume)
    include = restore_include(path)  # refused before anything else
    repo = local_repository(ctx)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="probe") as pool:
        probed = pool.submit(worker_site, ctx)  # a worker container's run, beside restic's key derivation
        if from_destination is not None or node is not None:
            chosen, name = _fetch(ctx, repo, from_destination, backup_name, volume_name, snapshot, node=node)
        else:
            chosen, name = _choose(ctx, repo, backup_name, volume_name, snapshot)
        site = probed.result()
    fields = {"target": backup_name, "container": container.name, "volume": volume_name, "snapshot": chosen.short_id,
              "snapshot_name": name}
    with ctx.store.target_lock(backup_name):
        if include is None and not force and not ctx.engine.path_is_empty(container.id, mount.destination):
            raise RestoreError(f"volume {volume_name} of {container.name} ({mount.destination}) is not empty; "
                               "use --force to replace its contents (or --path for one file or folder)")
        request = RestoreRequest(container, backup_name, volume_name, ctx.store.root, force, stop_timeout)
        logger.info("restoring from a restic snapshot", extra={**fields, "phase": "restore", "path": path})
        downtime = volumes.replace_contents(ctx, request, volume_name, mount, fields, lambda current: _restore(
            ctx, repo, site, current, mount, chosen, include, backup_name), clear=include is None, write_empties=True)
    seconds = time.monotonic() - started
    logger.info("restore finished", extra={**fields, "phase": "done", "seconds": round(seconds, 3),
                                           "downtime_seconds": round(downtime, 3)})
    return SnapshotRestore(backup_name, container.name, volume_name, chosen.id, name, path, seconds, downtime)


def _choose(ctx: Context, repo: Repository, backup_name: str, volume_name: str, wanted: str,
            dump: bool = False, node: str | None = None) -> tuple[Snapshot, str]:
    """`dump`: a preset's dump (one file at the snapshot's root), else a volume (/volume).
    `node`: the snapshots that node took (restic's host; None: this node's)."""
    what = f"{backup_name}'s {volume_name} dump" if dump else f"{backup_name} volume {volume_name}"
    host = node if node is not None else ctx.node().name
    found = repo.snapshots(selector(backup_name, volume_name), host)
    if not found:
        others = sorted({s.host for s in repo.snapshots(selector(backup_name, volume_name))} - {host})
        hint = (f"; it holds snapshots of node {', '.join(others)}: name one with --node (and --from DEST)"
                if others else "")
        raise NotFound(f"no restic snapshot of {what} taken on node {host} in {repo.location}{hint}")
    names = snapshot_names(found, ctx.settings.tz)
    try:
        chosen = choose_snapshot(found, wanted, names)
    except SidecarError as err:
        raise NotFound(f"{what}: {err}") from err
    if dump:
        if len(chosen.paths) != 1 or not DUMP_PATH.fullmatch(chosen.paths[0]):
            raise RestoreError(f"snapshot {chosen.short_id} holds {', '.join(chosen.paths)}, not one dump file at "
                               "its root: it was not written by a preset with backup.format=restic")
    elif chosen.paths != (VOLUME_PATH,):  # restored below /restore it would not land in the volume
        raise RestoreError(f"snapshot {chosen.short_id} holds {', '.join(chosen.paths)}, not one volume "
                           f"({VOLUME_PATH}): it was not written by backup.format=restic; restore it with restic "
                           "itself")
    return chosen, names[chosen.id]


def _fetch(ctx: Context, local: Repository, destination: str | None, backup_name: str, volume_name: str,
           wanted: str, dump: bool = False, node: str | None = None) -> tuple[Snapshot, str]:
    """The snapshot chosen in `destination`'s repository (None: the first destination's),
    copied into the local one; the local copy (restic copy keeps its time, host and tags)
    and the name. `node`: among the snapshots that node took."""
    config = destination_config(ctx, destination)
    destination = destination_name(config)
    remote = reachable_repository(config, local.environment()["RESTIC_PASSWORD"])
    chosen, name = _choose(ctx, remote, backup_name, volume_name, wanted, dump, node)
    logger.info("copying the snapshot from the destination's repository", extra={
        "target": backup_name, "volume": volume_name, "destination": destination, "snapshot": chosen.short_id,
        "phase": "download"})
    local.copy_from(remote, snapshot=chosen.id)
    here = [s for s in local.snapshots(selector(backup_name, volume_name), chosen.host) if s.time == chosen.time]
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
        if '"emptied"' in line:
            logger.info("volume emptied by the restore's worker container", extra={
                "target": backup_name, "container": container.name, "volume": mount.destination, "phase": "restore"})
            return True
        return False

    with password_file(ctx, repo) as password:
        args = ["-r", store.inside(repo.local_path), "--no-cache", "--no-lock", "--password-file",
                store.inside(password), "restore", snapshot.id, "--target", RESTORE_ROOT,
                *(["--include", include] if include else [])]
        empty = () if include else ("--empty", volume.target)  # the whole volume: emptied by this worker
        spec = WorkerSpec(site.image, (*PYTHON, "restic", *empty, "--", *args), "restic-restore", (volume, read_only),
                          labels={STORE_LABEL: store.key, TARGET_LABEL: backup_name}, user="0",
                          capabilities=RESTORE_CAPABILITIES, timeout=ctx.settings.worker_timeout)
        result = ctx.engine.run_worker(spec, on_line)
    if not result.ok:
        detail = " | ".join(errors[-5:]) or " | ".join(result.tail[-5:]) or "no output"
        raise ResticError(f"restic restore of {snapshot.short_id} into {container.name}:{mount.destination} in the "
                          f"worker container {result.name} failed (exit {result.exit_code}): {detail}")


@contextlib.contextmanager
def dump_archive(ctx: Context, backup_name: str, item: str, wanted: str = "latest",
                 from_destination: str | None = None, raw: Compression | None = None,
                 node: str | None = None) -> Iterator[tuple[Path, str]]:
    """A preset's dump snapshot (`wanted`: latest, an id or a name) as an archive on the
    backup volume's state folder, the one form the presets' restores read (checksum,
    members, parts: the checked path; nothing else parses what restic returns), removed
    afterwards; with the snapshot's name. `restic dump` streams the file; `raw`: the file
    is an archive itself, so compressed (the sqlite preset's tar, a stack's .tar.zst), else
    the dump is cut into parts as the archive format stores it."""
    repo = local_repository(ctx)
    if from_destination is not None or node is not None:
        chosen, name = _fetch(ctx, repo, from_destination, backup_name, item, wanted, dump=True, node=node)
    else:
        chosen, name = _choose(ctx, repo, backup_name, item, wanted, dump=True)
    path = chosen.paths[0]
    file = path.lstrip("/")
    final = ctx.store.state_dir / DUMPS_FOLDER / f"{uuid.uuid4().hex}{(raw or Compression.NONE).extension}"
    fields = {"target": backup_name, "volume": item, "snapshot": chosen.short_id, "snapshot_name": name,
              "phase": "download"}
    logger.info("reading the dump out of the restic snapshot", extra=fields)
    progress = ProgressLog(lambda done, rate: None, ctx.settings.progress_interval, ctx.cancel, backup_name)
    try:
        with ArchiveWriter(final, Compression.NONE, 0o600, None) as writer:  # NONE: the bytes as they come
            chunks = repo.dump(chosen.id, "/" + file)
            writer.write_stream(chunks if raw is not None else parts_tar(chunks, file, chosen.time.timestamp()),
                                on_progress=progress)
            writer.finish()
        yield final, name
    finally:
        for leftover in (final, final.with_name(final.name + CHECKSUM_SUFFIX)):
            leftover.unlink(missing_ok=True)
