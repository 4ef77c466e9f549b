"""The `sqlite` preset: SQLite's online backup API, run by a worker container from the
sidecar's own image (most app images, Grafana's included, ship no sqlite3 CLI), on the
files `backup.sqlite.paths` names (globs inside the target, on its volumes).

The worker mounts each volume holding a database read-write: a reader of a WAL database
takes its read lock in the `-shm` file, so a read-only mount cannot read a live WAL database
(decided: read-write, the worker only ever reads the database; a `-wal`/`-shm` it had to
create is given to the database file's owner). Each database is copied with
`Connection.backup` into a temporary file on the backup volume, checked with
`PRAGMA quick_check`, then the sidecar streams the copies into one archive (members named
by their path in the target) and removes them. The app keeps running and writing (WAL) the
whole time; in rollback-journal mode its writers wait while a database is read.

Restore first has the checked extractor in a listing worker (the backup volume read-only,
nothing else) report the archive's members: the sidecar parses no archive, it decides from
those records which volumes the writing worker gets (every member must be a regular file
`backup.sqlite.paths` matches). It then stops the container, removes each database's
`-wal`/`-shm` (they belong to the old file), has the checked extractor in a worker write each
database back into its volume and starts it again, on every path out."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import logging
import shutil
import tarfile
import time
import uuid
from pathlib import Path
from typing import Iterable, Iterator

from ....readers import unpack
from ....tarball.archive import ProgressLog
from ....core.errors import BackupError, NotFound, RestoreError, SidecarError
from ....tarball.extract import ArchiveFile, Kind, Member, Summary, open_archive
from ....core.labels import SQLITE_PATHS, sqlite_globs
from ....core.model import ContainerInfo, ContainerState, Mount, Target, WorkerMount, WorkerSpec
from ....core.presetnames import dump_type
from ....readers import get as get_reader
from ....worker import record_of
from ...context import Context
from ...interrupt import Interruption, InterruptionKind
from ..base import ArchivePath, RestoreOutcome, RestoreRequest
from .dump import ArchiveSink, DumpSink, left_stopped, needs_quiesce, one_archive  # needs_quiesce: part of this Source

logger = logging.getLogger(__name__)

NAME = "sqlite"
ITEM = dump_type(NAME)
RESTIC_FILE = "sqlite.tar"  # backup.format=restic: the copies' tar as one file of the snapshot
describe = one_archive(ITEM)
TEMP_FOLDER = ".sidecar/sqlite"  # under BACKUP_DIR: the copies on their way into the archive
# Root with only these: read and write any database whatever its owner, and give a
# -wal/-shm it created to the database's owner.
CAPABILITIES = ("DAC_READ_SEARCH", "DAC_OVERRIDE", "CHOWN", "FOWNER")

# argv: JSON [[folder in the worker, the same folder in the target, glob below it], ...] and
# the output folder. One JSON line per database copied; exit 3: nothing matched, 4: bad copy.
WORKER_SCRIPT = r"""
import glob, json, os, sqlite3, sys
jobs, out = json.loads(sys.argv[1]), sys.argv[2]
n = 0
for root, shown, pattern in jobs:
    found = sorted(p for p in glob.glob(os.path.join(root, pattern))
                   if os.path.isfile(p) and not p.endswith(("-wal", "-shm", "-journal")))
    if not found:
        print(json.dumps({"event": "error", "error": "no file matches " + os.path.join(shown, pattern)}), flush=True)
        sys.exit(3)
    for path in found:
        st = os.stat(path)
        before = {s: os.path.exists(path + s) for s in ("-wal", "-shm")}
        copy = os.path.join(out, "%d.db" % n)
        n += 1
        src = sqlite3.connect("file:" + path + "?mode=rw", uri=True, timeout=60)
        try:
            dst = sqlite3.connect(copy)
            src.backup(dst)
            dst.close()
        finally:
            src.close()
            for s, existed in before.items():
                if not existed and os.path.exists(path + s):
                    os.chown(path + s, st.st_uid, st.st_gid)
        check = sqlite3.connect("file:" + copy + "?mode=ro", uri=True)
        verdict = check.execute("PRAGMA quick_check").fetchone()[0]
        check.close()
        if verdict != "ok":
            print(json.dumps({"event": "error", "error": path + ": quick_check of the copy says " + verdict}), flush=True)
            sys.exit(4)
        os.chmod(copy, 0o644)
        print(json.dumps({"event": "copied", "copy": os.path.basename(copy), "path": shown + path[len(root):],
                          "uid": st.st_uid, "gid": st.st_gid, "mode": st.st_mode & 0o7777}), flush=True)
"""


def plan_mounts(container: ContainerInfo, patterns: tuple[str, ...]) -> tuple[tuple[WorkerMount, ...], list[list[str]]]:
    """Each pattern's volume (the mount that holds it: the longest destination above it)
    mounted read-write at /db/N in the worker, and the worker's jobs. Raises BackupError
    naming a pattern on no volume."""
    mounts: list[WorkerMount] = []
    jobs: list[list[str]] = []
    by_destination: dict[str, str] = {}
    for pattern in patterns:
        holder = _holder(container.mounts, pattern)
        if holder is None:
            raise NotFound(f"{pattern} is on no volume or bind mount of {container.name}: the sqlite preset reads "
                           "databases from their volumes")
        if holder.destination not in by_destination:
            root = f"/db/{len(mounts)}"
            by_destination[holder.destination] = root
            mounts.append(WorkerMount(holder.kind, holder.source, root, read_only=False))
        below = pattern[len(holder.destination.rstrip("/")):].lstrip("/")
        jobs.append([by_destination[holder.destination], holder.destination.rstrip("/"), below])
    return tuple(mounts), jobs


def _holder(mounts: tuple[Mount, ...], pattern: str) -> Mount | None:
    best = None
    for mount in mounts:
        dest = mount.destination.rstrip("/")
        if pattern.startswith(dest + "/") and (best is None or len(dest) > len(best.destination.rstrip("/"))):
            best = mount
    return best


class SqliteCapture:
    """`read` runs the worker (the copies land on the backup volume) and streams them into
    the archive; `finish` publishes it. The copies go on every path out."""

    def __init__(self, ctx: Context, target: Target, container: ContainerInfo, sink: DumpSink):
        self.ctx, self.target, self.container, self.item = ctx, target, container, ITEM
        self.sink = sink
        self.temp = ctx.settings.backup_dir / TEMP_FOLDER / uuid.uuid4().hex

    def __enter__(self) -> "SqliteCapture":
        self.sink.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        shutil.rmtree(self.temp, ignore_errors=True)
        self.sink.__exit__(*exc_info)

    def read(self) -> None:
        name = self.target.backup_name
        site, why = get_reader("worker").site(self.ctx.engine, self.ctx.worker_settings)
        if site is None:
            raise BackupError(name, "dump", f"the sqlite preset needs a worker container: {why}")
        try:
            mounts, jobs = plan_mounts(self.container, self.target.config.sqlite_paths)
        except NotFound as err:
            raise BackupError(name, "dump", str(err)) from err
        self.temp.mkdir(parents=True, mode=0o700)
        copies: list[dict] = []
        errors: list[str] = []

        def on_line(line: str) -> bool:
            record = record_of(line)
            if record.get("event") == "copied":
                copies.append(record)
                return True
            if record.get("event") == "error":
                errors.append(str(record.get("error")))
                return True
            return False

        spec = WorkerSpec(site.image, ("python3", "-c", WORKER_SCRIPT, json.dumps(jobs), site.store.inside(self.temp)),
                          "sqlite", mounts + (site.store.mount,), user="0", capabilities=CAPABILITIES,
                          timeout=float(self.target.config.exec_timeout))
        started = time.monotonic()
        try:
            result = self.ctx.engine.run_worker(spec, on_line)
        except SidecarError as err:
            raise BackupError(name, "dump", f"the sqlite worker could not run: {err}") from err
        if not result.ok or errors:
            said = "; ".join(errors) or "\n".join(result.tail)[-500:]
            what = "ran past its timeout" if result.timed_out else f"exited with {result.exit_code}"
            raise BackupError(name, "dump", f"sqlite backup {what}: {said}")
        self._write(copies)
        logger.info("dump read", extra={"target": name, "volume": ITEM, "phase": "dump", "tool": "sqlite3.backup",
                                        "databases": [c["path"] for c in copies],
                                        "seconds": round(time.monotonic() - started, 3)})

    def _write(self, copies: list[dict]) -> None:
        progress = ProgressLog(lambda done, rate: None, self.ctx.settings.progress_interval, self.ctx.cancel,
                               self.target.backup_name)
        try:
            self.sink.write(_copies_tar(self.temp, copies), RESTIC_FILE, progress)
        except BackupError:
            raise
        except (OSError, SidecarError) as exc:
            raise BackupError(self.target.backup_name, "write", f"{self.sink.describe()}: {exc}") from exc

    def finish(self):
        return self.sink.finish()


class TarSink(ArchiveSink):
    """The archive format's sink for a stream that is a tar already (the copies'), not a
    dump to cut into parts."""

    def write(self, chunks: Iterable[bytes], file: str, progress: ProgressLog) -> None:
        self.writer.write_stream(chunks, on_progress=progress)


def _copies_tar(folder: Path, copies: list[dict]) -> Iterator[bytes]:
    """A tar stream of the copies, each named by its path in the target (without the leading /)."""
    for record in copies:
        path = folder / record["copy"]
        info = tarfile.TarInfo(record["path"].lstrip("/"))
        info.size, info.mode, info.uid, info.gid = path.stat().st_size, record["mode"], record["uid"], record["gid"]
        info.mtime = int(time.time())
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk
        if info.size % tarfile.BLOCKSIZE:
            yield b"\0" * (tarfile.BLOCKSIZE - info.size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


@contextlib.contextmanager
def capture(ctx: Context, target: Target, container: ContainerInfo,
            archive_path: ArchivePath) -> Iterator[list[SqliteCapture]]:
    with SqliteCapture(ctx, target, container, TarSink(ctx, target, ITEM, archive_path(ITEM))) as one:
        yield [one]


def capture_into(ctx: Context, target: Target, container: ContainerInfo, sink: DumpSink) -> SqliteCapture:
    """The capture with another format's sink (backup.format=restic: the copies' tar is one
    file of the snapshot, RESTIC_FILE, restored through `restore` as an archive)."""
    return SqliteCapture(ctx, target, container, sink)


# --- restore ---------------------------------------------------------------------------------

MAX_DATABASES = 1000  # members an sqlite dump archive may hold (each a database file)
RESTORE_ROOT = "/restore"  # in the extract worker: each database's volume at RESTORE_ROOT + its destination


def restore(ctx: Context, request: RestoreRequest) -> RestoreOutcome:
    """Check the archive (every member a regular file matching `backup.sqlite.paths`, or any
    regular file when the container has no such label, on a writable volume of the container); stop the container; remove each database's -wal/-shm; the
    checked extractor in a worker writes the databases into their volumes (the one writer
    of every restore: nothing else parses the archive, nothing is written elsewhere); start
    the container again (on every path out)."""
    started = time.monotonic()
    container, path = request.container, request.archive
    fields = {"target": request.backup_name, "container": container.name, "volume": ITEM, "archive": str(path)}
    # A container not (yet) labelled takes the databases the archive names, regular files only.
    patterns = sqlite_globs(container) if SQLITE_PATHS in container.labels else None
    with ctx.store.target_lock(request.backup_name), open_archive(path) as archive:
        current = ctx.engine.inspect(container.id)
        members, check = _members(ctx, current, archive, request.backup_name, patterns)
        if any(m.kind is not Kind.FILE for m in members):
            raise RestoreError(f"{path.name}: not an sqlite preset archive (it holds more than database files)")
        names = [m.name for m in members]
        patterns = patterns or tuple("/" + glob.escape(n) for n in names)
        how, plan = _plan(ctx, current, archive, check.sha256, request.backup_name, patterns, names)
        if not request.force:  # refused before anything is stopped
            _refuse_existing(ctx, current, names)
        with contextlib.ExitStack() as stack:
            stop = None
            if current.state in (ContainerState.RUNNING, ContainerState.PAUSED, ContainerState.RESTARTING):
                stop = stack.enter_context(Interruption(ctx, current, InterruptionKind.STOPPED, request.backup_name,
                                                        request.stop_timeout))
            try:
                _remove_sidecars(ctx, current, names)
                logger.info("restoring databases", extra={**fields, "phase": "restore",
                                                          "databases": ["/" + n for n in names]})
                unpack.unpack(ctx.engine, how, plan)
            except SidecarError as err:
                if stop is None:
                    raise
                raise left_stopped(stop, container.name, ITEM, "REMOVING THE OLD -wal/-shm", err) from err
    seconds = time.monotonic() - started
    return RestoreOutcome(request.backup_name, container.name, ITEM, path, check.members, check.tar_bytes, seconds,
                          stop.seconds if stop is not None else 0.0)


def _members(ctx: Context, container: ContainerInfo, archive: ArchiveFile, backup_name: str,
             patterns: tuple[str, ...] | None) -> tuple[list[Member], Summary]:
    """The archive's members as a listing worker reads them (`patterns`: each a regular file one
    of them matches, or the archive is refused), at most MAX_DATABASES; the sidecar parses none."""
    how = unpack.UnpackRequest(container, container.mounts[0] if container.mounts else Mount("bind", "", ""),
                               archive, "", ctx.settings.decryption, ctx.worker_settings, backup_name,
                               only=tuple(p.lstrip("/") for p in patterns) if patterns else None)
    members: list[Member] = []
    check = unpack.list_archive(ctx.engine, how, unpack.listing_plan(ctx.engine, how), members.append,
                                limit=MAX_DATABASES)
    return members, check


def _plan(ctx: Context, container: ContainerInfo, archive: ArchiveFile, sha256: str, backup_name: str,
          patterns: tuple[str, ...], names: list[str]) -> tuple[unpack.UnpackRequest, unpack.WorkerPlan]:
    """The extract worker's request and mounts: each database's volume read-write at
    RESTORE_ROOT + its destination; no worker, no restore."""
    holders: dict[str, Mount] = {}
    for name in names:
        holder = _holder(container.mounts, "/" + name)
        if holder is None or holder.read_only:
            raise RestoreError(f"/{name} is on no writable volume of {container.name}: the sqlite preset restores "
                               "databases into their volumes only")
        holders[holder.destination] = holder
    mount = next(iter(holders.values()))
    how = unpack.UnpackRequest(container, mount, archive, sha256, ctx.settings.decryption, ctx.worker_settings,
                               backup_name, only=tuple(p.lstrip("/") for p in patterns))
    plan = unpack.require_worker(how, *unpack.worker_plan(ctx.engine, how))
    mounts = tuple(WorkerMount(m.kind, m.source, RESTORE_ROOT + m.destination.rstrip("/"), read_only=False)
                   for m in holders.values())
    store = plan.mounts[-1]
    return how, dataclasses.replace(plan, mounts=mounts + (store,), into=RESTORE_ROOT, skip=())


def _helper_image(ctx: Context, container: ContainerInfo) -> str:
    if ctx.settings.helper_image:
        return ctx.settings.helper_image
    own = ctx.engine.own_container()
    return own.image_id if own is not None else container.image_id


def _refuse_existing(ctx: Context, container: ContainerInfo, names: list[str]) -> None:
    script = 'for f in "$@"; do [ -e "$f" ] && echo "$f"; done; exit 0'
    code, logs = ctx.engine.run_helper(_helper_image(ctx, container), container.id,
                                       ["sh", "-c", script, "sh", *("/" + n for n in names)])
    present = [line for line in logs.split() if line.startswith("/")]
    if code != 0 or present:
        raise RestoreError(f"{', '.join(present) or 'a database'} exists in {container.name}; use --force to replace it")


def _remove_sidecars(ctx: Context, container: ContainerInfo, names: list[str]) -> None:
    files = [f"/{n}{suffix}" for n in names for suffix in ("-wal", "-shm", "-journal")]
    code, logs = ctx.engine.run_helper(_helper_image(ctx, container), container.id, ["rm", "-f", "--", *files])
    if code != 0:
        raise RestoreError(f"removing the old -wal/-shm of {container.name} failed (exit {code}: {logs.strip()[-300:]})")
