"""Restore a volume (or one file or folder of it) from a restic snapshot (backup.format=restic).

The same boundary as an archive's restore: everything that can refuse it runs before
anything is stopped (the snapshot found, its one path the worker's `/volume`, `--path`
inside the volume, the volume empty or --force, the worker's protocol), then the container
is stopped and one worker container that sees only the target volume, read-write at
/restore/volume, and the backup volume read-only, empties the volume (not for `--path`; no
helper container) and runs `restic restore` (with --no-lock): restic's restorer writes below
its --target only, and what is below /restore besides the volume is the worker's read-only
root. The container starts again when it succeeded; a failure after emptying leaves it
stopped (journalled), as for archives.

The worker is started first, staged (sidecar/worker/restic.py, `--staged`): its container's
and Python's start-up run beside the sidecar's `restic snapshots` (the choice of the
snapshot) and the app's stop, and its `staged` record says its protocol, so no probe
container runs; it writes nothing before the sidecar's `go SNAPSHOT_ID`, sent once the app
is stopped, and ends having written nothing on `quit` (any refusal before that).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..tarball.archive import ArchiveWriter, ProgressLog
from ..core.errors import ConfigError, NotFound, RestoreError, ResticError, SidecarError
from ..core.naming import CHECKSUM_SUFFIX
from ..core.errors import EngineError
from ..core.model import Compression, ContainerInfo, Mount, WorkerLink, WorkerMount, WorkerResult, WorkerSpec
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
from ..worker import PROTOCOL, record_of
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
QUIT_WAIT = 30.0  # seconds a staged worker told to quit has to end before it is removed


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
    site = worker_site(ctx, probe=False)  # the staged worker's record says its protocol
    # The target's lock from before the worker starts: recovery (another process) leaves a
    # running worker of a locked target alone (recover.remove_leftover_workers).
    with ctx.store.target_lock(backup_name), _StagedRestore(ctx, repo, site, mount, include, backup_name) as worker:
        if from_destination is not None or node is not None:  # meanwhile the worker starts
            chosen, name = _fetch(ctx, repo, from_destination, backup_name, volume_name, snapshot, node=node)
        else:
            chosen, name = _choose(ctx, repo, backup_name, volume_name, snapshot)
        worker.staged()
        fields = {"target": backup_name, "container": container.name, "volume": volume_name,
                  "snapshot": chosen.short_id, "snapshot_name": name}
        if include is None and not force and not ctx.engine.path_is_empty(container.id, mount.destination):
            raise RestoreError(f"volume {volume_name} of {container.name} ({mount.destination}) is not empty; "
                               "use --force to replace its contents (or --path for one file or folder)")
        request = RestoreRequest(container, backup_name, volume_name, ctx.store.root, force, stop_timeout)
        logger.info("restoring from a restic snapshot", extra={**fields, "phase": "restore", "path": path})
        downtime = volumes.replace_contents(ctx, request, volume_name, mount, fields, lambda current: worker.go(
            current, chosen), clear=include is None, write_empties=True)
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
    remote = reachable_repository(config, local.password, local.secrets_dir)
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


class _StagedRestore:
    """The restore's one worker container, started on entering (staged: it writes nothing
    before `go`); `staged` waits for its `staged` record and checks its protocol; `go`
    (the app stopped) sends `go SNAPSHOT_ID` and waits for its end. Leaving without a go
    tells it to quit (removed when it cannot be told). The password file it reads goes once
    it has ended."""

    def __init__(self, ctx: Context, repo: Repository, site: WorkerSite, mount: Mount, include: str | None,
                 backup_name: str):
        self.ctx, self.repo, self.site, self.mount, self.include = ctx, repo, site, mount, include
        self.fields = {"target": backup_name, "volume": mount.destination, "phase": "restore"}
        self.events: "queue.Queue[dict]" = queue.Queue()
        self.errors: list[str] = []
        self.timings: dict[str, float] = {}  # the worker's restic_seconds, removal_wait_seconds
        self._link: WorkerLink | None = None
        self._result: WorkerResult | None = None
        self._failure: BaseException | None = None
        self._went = False
        self._stack = contextlib.ExitStack()
        self._thread = threading.Thread(target=self._run, name="restic-restore", daemon=True)

    def __enter__(self) -> "_StagedRestore":
        with contextlib.ExitStack() as failing:
            failing.push(self.__exit__)
            self._spec = self._make_spec(self._stack.enter_context(password_file(self.ctx, self.repo)))
            self._thread.start()
            failing.pop_all()
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            if not self._went and self._thread.is_alive():
                self._quit()
            if self._thread.ident is not None:
                self._thread.join(QUIT_WAIT)
        finally:
            self._stack.close()

    def _quit(self) -> None:
        link = self._wait_link()
        if link is not None:
            with contextlib.suppress(SidecarError):
                link.send(b"quit\n")
                self._thread.join(QUIT_WAIT)
            if self._thread.is_alive():
                self.ctx.engine.remove_worker(link.name)

    def _wait_link(self) -> WorkerLink | None:
        while self._link is None and self._thread.is_alive():
            self._thread.join(0.01)
        return self._link

    def staged(self) -> None:
        """Its `staged` record, before anything stops; raises what ended it instead, or
        ConfigError when it speaks another protocol."""
        record = self._next("staged")
        if record.get("protocol") != PROTOCOL:
            raise ConfigError(f"the worker image {self.site.image} speaks worker protocol {record.get('protocol')}, "
                              f"this sidecar {PROTOCOL}; set BACKUP_WORKER_IMAGE to the sidecar's image")

    def go(self, container: ContainerInfo, snapshot: Snapshot) -> None:
        """The app is stopped (and the emptying journalled): restic restore of `snapshot`."""
        link = self._wait_link()
        self._went = True
        went = time.monotonic()
        try:
            if link is None:
                raise EngineError("the worker ended before its go")
            link.send(f"go {snapshot.id}\n".encode())
        except EngineError as err:
            self._thread.join()
            raise ResticError(f"restic restore of {snapshot.short_id} into {container.name}:{self.mount.destination}: "
                              f"the worker container could not be told to go ({err})") from err
        # Its `exit 0` record is the end of its writes: the app may start while the engine
        # still tears the worker's container down (joined on leaving, after the start).
        record = self.events.get()
        done = record.get("event") == "exit" and record.get("code") == 0
        if not done:
            self._thread.join()
            if self._failure is not None:
                raise self._failure
        result = self._result
        if done or (result is not None and result.ok):
            logger.info("restic restore done in the worker container", extra={
                **self.fields, "worker": link.name, "snapshot": snapshot.short_id,
                "seconds": round(time.monotonic() - went, 3), **self.timings})
            return
        assert result is not None
        detail = " | ".join(self.errors[-5:]) or " | ".join(result.tail[-5:]) or "no output"
        raise ResticError(f"restic restore of {snapshot.short_id} into {container.name}:{self.mount.destination} "
                          f"in the worker container {result.name} failed (exit {result.exit_code}): {detail}")

    def _next(self, event: str) -> dict:
        record = self.events.get()
        if record.get("event") == event:
            return record
        self._thread.join()
        if self._failure is not None:
            raise self._failure
        result = self._result
        assert result is not None
        detail = " | ".join(self.errors[-5:]) or " | ".join(result.tail[-5:]) or "no output"
        raise ConfigError(f"the restore's worker container {result.name} (image {self.site.image}) ended without "
                          f"saying `{event}` (exit {result.exit_code}: {detail}); it may speak an older worker "
                          "protocol: set BACKUP_WORKER_IMAGE to the sidecar's image")

    def _make_spec(self, password: Path) -> WorkerSpec:
        store, repo_path = self.site.store, self.repo.local_path
        assert repo_path is not None
        read_only = WorkerMount(store.mount.kind, store.mount.source, STORE_ROOT, read_only=True)
        volume = WorkerMount(self.mount.kind, self.mount.source, RESTORE_ROOT + VOLUME_PATH, read_only=False)
        args = ["-r", store.inside(repo_path), "--no-cache", "--no-lock", "--password-file", store.inside(password),
                "restore", "--target", RESTORE_ROOT, *(["--include", self.include] if self.include else [])]
        empty = () if self.include else ("--empty", volume.target)  # the whole volume: emptied by this worker
        timeout = self.ctx.settings.worker_timeout
        command = (*PYTHON, "restic", "--staged", f"--wait-timeout={timeout:g}", *empty, "--", *args)
        return WorkerSpec(self.site.image, command, "restic-restore", (volume, read_only),
                          labels={STORE_LABEL: self.site.store.key, TARGET_LABEL: self.fields["target"]}, user="0",
                          capabilities=RESTORE_CAPABILITIES, timeout=timeout)

    def _run(self) -> None:
        try:
            self._result = self.ctx.engine.run_worker(self._spec, self._on_line, on_start=self._started)
        except BaseException as exc:  # noqa: BLE001 - raised again in the waiting thread
            self._failure = exc if isinstance(exc, SidecarError) else ResticError(
                f"the restore's worker container failed: {exc}")
        finally:
            self.events.put({"event": "ended"})

    def _started(self, link: WorkerLink) -> None:
        self._link = link

    def _on_line(self, line: str) -> bool:
        record = record_of(line)
        if not record:
            return False
        event = record.get("event")
        if event == "staged":
            self.events.put(record)
        elif event in ("restic-stderr", "error"):
            self.errors.append(str(record.get("line") or record.get("message") or record))
        elif event == "emptied":
            logger.info("volume emptied by the restore's worker container", extra={
                **self.fields, "entries": record.get("entries")})
        elif event in ("restic-done", "removed") and isinstance(record.get("seconds"), (int, float)):
            self.timings["restic_seconds" if event == "restic-done" else "removal_wait_seconds"] = record["seconds"]
        elif event == "exit":
            self.events.put(record)
        else:
            return False
        return True


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
