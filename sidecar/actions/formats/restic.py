"""The `restic` format: one snapshot per volume or dump and run in the restic repository
`BACKUP_DIR/restic` (created on first use, 0700).

- A volume is read by restic inside a worker container from the sidecar's own image, next
  to the data (the volume read-only at /volume, the backup volume read-write), with the
  target item's newest snapshot on this host as the parent: unchanged files (inode, ctime,
  mtime, size) are not read again, so a `stop` window after a small change costs the scan
  and what changed, with no staging mirror.
- A preset's dump goes in uncompressed through `restic backup --stdin`, run by the
  sidecar (restic compresses and deduplicates); a dump found bad at its end kills restic
  before its input ends, so no snapshot of half a dump is kept.
- After a success, `restic forget --keep-*` of each item by backup.keep / BACKUP_KEEP
  (tag and host scoped); `prune` is the `prune` command's (its cost logged).

Snapshots are tagged (sidecar/core/snapshots.py) so `list`, `plan` and `restore` show them in
the seed's vocabulary. The repository's size and snapshot counts go to `.sidecar/restic.json`
for the metrics.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

from ...tarball.archive import ProgressLog
from ...core.config import LocalConfig, RcloneConfig, S3Config
from ...core.errors import BackupError, ConfigError, DestinationUnreachable, NotFound, ResticError, SidecarError
from ...telemetry.metrics import RESTIC_STATE_FILE
from ...core.model import ContainerInfo, ContainerState, Target, VolumeSpec, WorkerResult, WorkerSpec
from ...readers import READERS
from ...readers.mirror import give_go
from ...worker import PROTOCOL
from ...worker.restic import TMP_FOLDER as RESTIC_TMP_FOLDER
from ...readers.worker import KEYS_FOLDER, PYTHON, STORE_LABEL, STORE_ROOT, TARGET_LABEL, WorkerSite, volume_mounts
from ...store.restic import REPO_FOLDER, Repository, destination_repository, repository_bytes
from ...core.retention import Keep
from ...core.schedule import Frequency
from ...core.settings import destination_name
from ...core.values import without_userinfo
from ...core.snapshots import (
    VOLUME_PATH,
    BackupSummary,
    Forgotten,
    Snapshot,
    forget_args,
    parse_backup_line,
    selector,
    summary_of,
    tags,
)
from ...store.state import JsonState
from ...store.storage import STATE_DIR
from ..context import Context
from ..sources import ArchivePath, Capture, Source, items, volumes
from ..sources.presets.dump import DumpCapture
from .base import Published, SnapshotResult

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Root in the worker: read every file whatever its owner; give restic's new repository
# files the repository's owner (sidecar/worker/restic.py).
BACKUP_CAPABILITIES = ("DAC_READ_SEARCH", "DAC_OVERRIDE", "CHOWN", "FOWNER")
EXIT_INCOMPLETE = 3  # restic 0.14: snapshot saved, some files could not be read
# A restic worker's host name (what restic's lock records, with a pid of the worker's own
# namespace), also on its container as a label: how recovery tells a dead worker's lock.
WORKER_HOST, HOST_LABEL = "restic-worker-", "backup-sidecar.host"
ITEMS = "items"  # in the state file: node/target/item -> {id, time} of its newest snapshot (ItemRecord)
OLD_PARENTS, OLD_NEWEST = "parents", "newest"  # the shape before: id and time apart (read once, then gone)
REPOSITORIES = "repositories"  # in the state file: destinations' repositories seen to exist (no check per run)
GO_FOLDER = "restic-go"  # in the state folder: a held worker's go file, one folder per capture
READY_TIMEOUT = 120.0  # seconds to wait for a held worker at its gate before quiescing anyway


def local_repository(ctx: Context) -> Repository:
    """The backup volume's repository, created on first use."""
    password = ctx.settings.restic_password
    if password is None:
        raise ConfigError("backup.format=restic needs the repository's password: set RESTIC_PASSWORD_FILE (a file "
                          "or Docker secret holding it) or RESTIC_PASSWORD")
    repo = Repository(str(ctx.store.root / REPO_FOLDER), password, secrets_dir=secrets_dir(ctx))
    repo.ensure(ctx.store.state_dir / "locks")
    return repo


def secrets_dir(ctx: Context) -> Path:
    """Where the password files of restic's children go (0700; recovery removes stale ones)."""
    return ctx.store.root / STATE_DIR / KEYS_FOLDER


def _tag_args(target: Target, item: str) -> list[str]:
    return [arg for tag in tags(target.backup_name, item, target.config.schedule.frequency) for arg in ("--tag", tag)]


def _exclude_args(patterns: Iterable[str]) -> list[str]:
    """backup.exclude in restic's terms: a pattern without `/` matches a name anywhere (as
    the archive format's base-name and parent-folder matching); one with `/` is anchored
    at the volume's root."""
    return [f"--exclude={p if '/' not in p.strip('/') else VOLUME_PATH + '/' + p.lstrip('/')}" for p in patterns]


def _result(item: str, summary: BackupSummary) -> SnapshotResult:
    return SnapshotResult(item, summary.snapshot_id, summary.total_bytes_processed, summary.data_added,
                          summary.files_new, summary.files_changed, summary.files_unmodified)


def _progress(ctx: Context, target: Target, item: str, phase: str) -> ProgressLog:
    fields = {"target": target.backup_name, "volume": item, "phase": phase}
    started = time.monotonic()

    def report(done: int, rate: float) -> None:
        logger.info("backup in progress", extra={**fields, "bytes": done, "bytes_per_second": round(rate),
                                                 "seconds": round(time.monotonic() - started, 1)})

    return ProgressLog(report, ctx.settings.progress_interval, ctx.cancel, target.backup_name)


@dataclass(frozen=True)
class ItemRecord:
    """A target item's newest snapshot of this node, as `.sidecar/restic.json` remembers it:
    the next run's parent (`id`) and what the copies' state compares with (`time`, restic's
    own; until the run's rotation listed it, the moment its backup ended)."""

    id: str | None  # None: read from the old shape, which kept no id for dumps
    time: float | None


def item_records(doc: dict, host: str) -> dict[str, ItemRecord]:
    """`target/item` -> this node's ItemRecord, from the state file's `items` (or the shape
    before it: `parents` keyed `node/target/item` -> id, `newest` keyed `target/item` -> time)."""
    found: dict[str, ItemRecord] = {}
    old_ids = doc.get(OLD_PARENTS) if isinstance(doc.get(OLD_PARENTS), dict) else {}
    old_times = doc.get(OLD_NEWEST) if isinstance(doc.get(OLD_NEWEST), dict) else {}
    for item_key, when in old_times.items():  # this node's newest snapshot times, all items
        found[item_key] = ItemRecord(None, float(when) if isinstance(when, (int, float)) else None)
    for key, snapshot in old_ids.items():
        node, _, item_key = key.partition("/")
        if node == host and isinstance(snapshot, str):
            found[item_key] = ItemRecord(snapshot, found[item_key].time if item_key in found else None)
    records = doc.get(ITEMS) if isinstance(doc.get(ITEMS), dict) else {}
    for key, record in records.items():
        node, _, item_key = key.partition("/")
        if node == host and isinstance(record, dict):
            when, snapshot = record.get("time"), record.get("id")
            found[item_key] = ItemRecord(snapshot if isinstance(snapshot, str) else None,
                                         float(when) if isinstance(when, (int, float)) else None)
    return found


def _write_records(doc: dict, host: str, records: dict[str, ItemRecord]) -> None:
    """Store `records` (`target/item` -> ItemRecord) in `doc`; the old shape, read by
    item_records, goes."""
    merged = item_records(doc, host)
    merged.update(records)
    mine = doc.get(ITEMS) if isinstance(doc.get(ITEMS), dict) else {}
    mine.update({f"{host}/{key}": {"id": r.id, "time": r.time} for key, r in merged.items()})
    doc[ITEMS] = mine
    doc.pop(OLD_PARENTS, None)
    doc.pop(OLD_NEWEST, None)


def _state(ctx: Context) -> JsonState:
    return JsonState(ctx.store.state_dir / RESTIC_STATE_FILE, "restic state")


def _parent(ctx: Context, repo: Repository, target: Target, item: str) -> str | None:
    """The item's newest snapshot on this node: the one this node's last run of it saved, as
    remembered in the state file and still in the repository (a look at its snapshots/
    folder: no restic start and its key derivation), else the newest restic lists."""
    host = ctx.node().name
    known = item_records(_state(ctx).read(), host).get(f"{target.backup_name}/{item}")
    short = known.id if known is not None else None
    if isinstance(short, str) and re.fullmatch(r"[0-9a-f]{8,64}", short) and repo.local_path is not None:
        found = list((repo.local_path / "snapshots").glob(short + "*"))
        if len(found) == 1:
            return found[0].name
    listed = repo.snapshots(selector(target.backup_name, item), host)
    return listed[-1].id if listed else None


def _remember_parent(ctx: Context, target: Target, item: str, snapshot_id: str) -> None:
    """This run's snapshot: the next run's parent (never forgotten: forget keeps the last)."""
    with _state(ctx).update() as doc:
        _write_records(doc, ctx.node().name, {f"{target.backup_name}/{item}": ItemRecord(snapshot_id, time.time())})


# --- volumes: restic in a worker next to the data ------------------------------------------

class ResticVolumeCapture:
    """One volume's snapshot by restic in a worker container.

    Quiesced (a `stop`/`pause` target: `prepare` comes first): `prepare` looks up the parent
    and starts the worker, whose restic opens the repository (key derivation), takes its lock
    and waits at its gate (sidecar/worker/restic.py); `read` (the container down) gives the
    go and returns once restic printed its summary (the snapshot is saved), so the stop
    window holds the index load, the scan, the changed files and the snapshot's save, and
    not the container's start, restic's start-up or the end (unlock, owners, removal);
    `finish` waits for the worker's end and its exit code. Hot: `read` runs the worker to its
    end."""

    def __init__(self, ctx: Context, target: Target, volume: VolumeSpec, container: ContainerInfo,
                 repo: Repository, site: WorkerSite):
        self.ctx, self.target, self.volume, self.repo, self.site = ctx, target, volume, repo, site
        self.item = volume.volume_name
        self.mounts = volume_mounts(container, volume.mount)
        self.result: SnapshotResult | None = None
        self._parent: tuple[str | None] | None = None  # looked up (before the quiesce when there is one)
        self._held: _HeldWorker | None = None
        self._fields = {"target": target.backup_name, "volume": self.item, "phase": "read"}

    def prepare(self) -> None:
        """Before the container is quiesced: the parent snapshot, then the worker held at
        restic's gate."""
        self._parent = (_parent_or_fail(self),)
        go = self.ctx.store.state_dir / GO_FOLDER / uuid.uuid4().hex
        lines = _WorkerLines(_progress(self.ctx, self.target, self.item, "read"), self._fields)
        self._held = _HeldWorker(self.ctx, self.repo, go, lines)
        self._held.start(lambda password: self._spec(password, self._parent[0], go))
        if lines.at_gate and lines.protocol != PROTOCOL:  # called off before anything stops
            self._held.close()
            raise BackupError(self.target.backup_name, "start", self._wrong_protocol(lines))
        if not lines.at_gate and self._held.ended():  # it ended before its gate (a worker image of another
            self.result = self._judge(self._held.join(), lines)  # protocol, a bad option): said before any stop

    def read(self) -> None:
        held = self._held
        if held is None:  # a hot target: no prepare, restic runs to its end here
            self._parent = (_parent_or_fail(self),)
            lines = _WorkerLines(_progress(self.ctx, self.target, self.item, "read"), self._fields)
            with password_file(self.ctx, self.repo) as password:
                try:
                    result = self.ctx.engine.run_worker(self._spec(password, self._parent[0]), lines.take)
                except SidecarError as err:
                    raise BackupError(self.target.backup_name, "read", f"volume {self.item}: {err}") from err
            self.result = self._judge(result, lines)
            return
        held.go()
        if held.lines.summary is None:  # it ended without a snapshot: why
            self.result = self._judge(held.join(), held.lines)

    def finish(self) -> SnapshotResult:
        if self.result is None:
            assert self._held is not None
            self.result = self._judge(self._held.join(), self._held.lines)
        return self.result

    def close(self) -> None:
        """On every way out: a worker still held at its gate is called off (restic unlocks)."""
        if self._held is not None:
            self._held.close()

    def _judge(self, result: WorkerResult, lines: "_WorkerLines") -> SnapshotResult:
        name, item, fields = self.target.backup_name, self.item, self._fields
        where = f"the worker container {result.name} (image {self.site.image})"
        if result.timed_out:
            raise BackupError(name, "read", f"volume {item}: {where} ran past BACKUP_WORKER_TIMEOUT and was killed")
        code = lines.code if lines.code is not None else result.exit_code
        if lines.protocol != PROTOCOL:
            detail = " | ".join(lines.errors[-3:]) or " | ".join(result.tail[-3:]) or "no output"
            raise BackupError(name, "read", f"volume {item}: {self._wrong_protocol(lines)} (exit {code}: {detail})")
        if lines.summary is None or code not in (0, EXIT_INCOMPLETE):
            detail = " | ".join(lines.errors[-5:]) or " | ".join(result.tail[-5:]) or "no output"
            raise BackupError(name, "read", f"volume {item}: restic backup in {where} failed (exit {code}): {detail}")
        if code == EXIT_INCOMPLETE:
            logger.warning("restic could not read some files; the snapshot lacks them", extra={
                **fields, "errors": lines.errors[-5:]})
        summary = lines.summary
        logger.info("volume read by restic in a worker container", extra={
            **fields, "worker": result.name, "snapshot": summary.snapshot_id, "parent": self._parent[0],
            "bytes": summary.total_bytes_processed, "added_bytes": summary.data_added,
            "files_new": summary.files_new, "files_changed": summary.files_changed,
            "files_unmodified": summary.files_unmodified, "seconds": round(result.seconds, 3),
            **(self._held.timings() if self._held is not None else {})})
        _remember_parent(self.ctx, self.target, item, summary.snapshot_id)
        return _result(item, summary)

    def _wrong_protocol(self, lines: "_WorkerLines") -> str:
        said = f"speaks worker protocol {lines.protocol}" if lines.protocol is not None else "says no worker protocol"
        return (f"the worker image {self.site.image} {said}, this sidecar {PROTOCOL}; set BACKUP_WORKER_IMAGE to the "
                "sidecar's image")

    def _spec(self, password: Path, parent: str | None, go: Path | None = None) -> WorkerSpec:
        store, repo_path = self.site.store, self.repo.local_path
        assert repo_path is not None
        args = ["-r", store.inside(repo_path), "--no-cache", "--password-file", store.inside(password),
                "backup", "--json", VOLUME_PATH, "--host", self.ctx.node().name, *_tag_args(self.target, self.item),
                *_exclude_args(self.target.config.exclude), *(["--parent", parent] if parent else [])]
        timeout = self.ctx.settings.worker_timeout
        held = ["--go", store.inside(go), f"--wait-timeout={timeout:g}"] if go is not None else []
        command = (*PYTHON, "restic", "--repo", store.inside(repo_path), "--store", STORE_ROOT, *held, "--", *args)
        host = worker_host_prefix(self.ctx) + uuid.uuid4().hex[:12]
        return WorkerSpec(self.site.image, command, "restic-backup", self.mounts + (store.mount,),
                          labels={STORE_LABEL: store.key, TARGET_LABEL: self.target.backup_name, HOST_LABEL: host},
                          user="0", capabilities=BACKUP_CAPABILITIES, timeout=timeout, hostname=host)


def worker_host_prefix(ctx: Context) -> str:
    """The start of the host name of this node's restic workers, which restic writes into
    its locks: a lock that starts so and whose worker no longer runs here is a killed run's
    (maintenance.remove_dead_worker_locks); another node's workers have another prefix."""
    node = hashlib.sha256(ctx.node().name.encode()).hexdigest()[:8]
    return f"{WORKER_HOST}{node}-"


def _parent_or_fail(capture: ResticVolumeCapture) -> str | None:
    try:
        return _parent(capture.ctx, capture.repo, capture.target, capture.item)
    except ResticError as err:
        raise BackupError(capture.target.backup_name, "read", f"volume {capture.item}: {err}") from err


class _HeldWorker:
    """A restic worker started before the quiesce and held at restic's gate until `go`
    (run in a thread of its own; the go file is in a 0700 folder of the state folder)."""

    def __init__(self, ctx: Context, repo: Repository, folder: Path, lines: "_WorkerLines"):
        self.ctx, self.repo, self.folder, self.lines = ctx, repo, folder, lines
        self._thread: threading.Thread | None = None
        self._result: WorkerResult | None = None
        self._failure: BaseException | None = None
        self._marks: dict[str, float] = {"start": time.monotonic()}

    def start(self, spec_for) -> None:
        with contextlib.ExitStack() as failing:
            stack = failing.enter_context(contextlib.ExitStack())
            stack.callback(shutil.rmtree, self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True, mode=0o700)
            os.chmod(self.folder.parent, 0o700)
            password = stack.enter_context(password_file(self.ctx, self.repo))
            spec = spec_for(password)
            failing.pop_all()

        def run() -> None:
            try:
                with stack:  # the password file and the go folder go when the worker ends
                    self._result = self.ctx.engine.run_worker(spec, self.lines.take)
            except BaseException as exc:  # noqa: BLE001 - raised again by join() in the caller's thread
                self._failure = exc
            finally:
                self.lines.ended()

        self._thread = threading.Thread(target=run, name=f"restic-{self.folder.name[:8]}", daemon=True)
        self._thread.start()
        if not self.lines.ready.wait(READY_TIMEOUT):
            logger.warning("the restic worker is not at its gate yet; quiescing anyway", extra=self.lines.fields)
        self._marks["ready"] = time.monotonic()

    def ended(self) -> bool:
        return self._thread is None or not self._thread.is_alive()

    def go(self) -> None:
        """Give the go and wait until the snapshot is saved (or the worker ended: its go folder
        went with it, and the caller judges its end)."""
        self._marks["go"] = time.monotonic()
        if self.ended():
            return
        try:
            give_go(self.folder, "go")
        except FileNotFoundError:  # it ended meanwhile
            return
        self.lines.saved.wait()
        self._marks["saved"] = time.monotonic()

    def join(self) -> WorkerResult:
        """The worker's end; raises what stopped it (an engine error, an abort)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self._marks["ended"] = time.monotonic()
        if isinstance(self._failure, BackupError):
            raise self._failure
        if self._failure is not None:
            raise BackupError(self.lines.fields["target"], "read", f"volume {self.lines.fields['volume']}: "
                              f"{self._failure}") from self._failure
        assert self._result is not None
        return self._result

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive() and "go" not in self._marks:
            with contextlib.suppress(OSError):
                give_go(self.folder, "abort")
        with contextlib.suppress(SidecarError):
            self.join()

    def timings(self) -> dict[str, float]:
        """Seconds of each step (the breakdown a bench reads from the log)."""
        m = self._marks
        steps = {"held_ready_seconds": ("start", "ready"), "held_go_to_saved_seconds": ("go", "saved"),
                 "held_saved_to_end_seconds": ("saved", "ended")}
        return {k: round(m[b] - m[a], 3) for k, (a, b) in steps.items() if a in m and b in m}


class _WorkerLines:
    """A restic worker's output: restic's JSON lines, its stderr, the exit record."""

    def __init__(self, progress: ProgressLog, fields: dict):
        self.progress, self.fields = progress, fields
        self.summary: BackupSummary | None = None
        self.code: int | None = None
        self.protocol: object = None  # the worker's own word (its first record): no probe container
        self.at_gate = False
        self.errors: list[str] = []
        self.ready, self.saved = threading.Event(), threading.Event()  # at the gate; summary (or end)

    def ended(self) -> None:
        self.ready.set()
        self.saved.set()

    def take(self, line: str) -> bool:
        record = parse_backup_line(line)
        if record is None:
            return False
        kind = record.get("message_type") or record.get("event")
        if kind == "status":
            self.progress(int(record.get("bytes_done") or 0))  # raises BackupAborted on shutdown
        elif kind == "restic-worker":
            self.protocol = record.get("protocol")
        elif kind == "ready":
            self.at_gate = True
            self.ready.set()
        elif kind == "summary":
            self.summary = summary_of(record)
            self.saved.set()
        elif kind == "restic-stderr":
            text = str(record.get("line") or "")
            self.errors.append(text)
            logger.warning("restic: " + text, extra=self.fields)
        elif kind == "error":
            self.errors.append(str(record.get("message") or record.get("error") or record))
        elif kind == "exit":
            self.code = int(record.get("code", -1))
        elif kind != "verbose_status":
            return False
        return True


@contextlib.contextmanager
def password_file(ctx: Context, repo: Repository) -> Iterator[Path]:
    """The password in a 0600 file a worker reads by path (never in its environment or
    arguments, which `docker inspect` shows), removed when the worker is done (a killed
    sidecar's leftovers: readers.worker.remove_stale_keys)."""
    folder = secrets_dir(ctx)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"restic-{uuid.uuid4().hex}.keys"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(repo.password)
        yield path
    finally:
        path.unlink(missing_ok=True)


def worker_site(ctx: Context, probe: bool = True) -> WorkerSite:
    """Where restic workers run; raises ConfigError saying why none can. `probe=False`: no
    probe container for an image named by BACKUP_WORKER_IMAGE or the sidecar's own (the
    worker says its protocol itself: a staged restore's `staged` record)."""
    site, reason = READERS["worker"].site(ctx.engine, ctx.worker_settings, probe=probe)
    if site is None:
        raise ConfigError(f"backup.format=restic runs restic next to the data in a worker container, and none can "
                          f"run here: {reason}")
    return site


# --- dumps: restic backup --stdin ---------------------------------------------------------

class ResticSink:
    """A preset's dump into `restic backup --stdin` (the DumpSink of this format)."""

    def __init__(self, ctx: Context, target: Target, item: str, repo: Repository):
        self.ctx, self.target, self.item, self.repo = ctx, target, item, repo
        self.summary: BackupSummary | None = None

    def __enter__(self) -> "ResticSink":
        return self

    def __exit__(self, *exc_info) -> None:
        """Nothing partial: restic saves a snapshot only when its input ended well."""

    def write(self, chunks: Iterable[bytes], file: str, progress: ProgressLog) -> None:
        def counted() -> Iterator[bytes]:
            done = 0
            for chunk in chunks:
                done += len(chunk)
                progress(done)
                yield chunk

        host = self.ctx.node().name
        self.summary = self.repo.backup(["--stdin", "--stdin-filename", file, "--host", host,
                                         *_tag_args(self.target, self.item)], stdin=counted())

    def describe(self) -> str:
        return f"restic repository {self.repo.location}"

    def finish(self) -> SnapshotResult:
        assert self.summary is not None
        logger.info("snapshot written", extra={"target": self.target.backup_name, "volume": self.item,
                                               "phase": "write", "snapshot": self.summary.snapshot_id,
                                               "bytes": self.summary.total_bytes_processed,
                                               "added_bytes": self.summary.data_added})
        return _result(self.item, self.summary)


def snapshot_of_stream(ctx: Context, backup_name: str, item: str, frequency: Frequency, file: str,
                       chunks: Iterable[bytes]) -> SnapshotResult:
    """One snapshot of `chunks` as the file `file` (`restic backup --stdin`), tagged as
    `item` of `backup_name` (a project's stack: project, `stack`)."""
    tagged = [arg for tag in tags(backup_name, item, frequency) for arg in ("--tag", tag)]
    summary = local_repository(ctx).backup(["--stdin", "--stdin-filename", file, "--host", ctx.node().name,
                                            *tagged], stdin=chunks)
    logger.info("snapshot written", extra={"target": backup_name, "volume": item, "phase": "write",
                                           "snapshot": summary.snapshot_id, "bytes": summary.total_bytes_processed,
                                           "added_bytes": summary.data_added})
    return _result(item, summary)


# --- the format -------------------------------------------------------------------------------

class ResticFormat:
    name = "restic"

    @contextlib.contextmanager
    def capture(self, ctx: Context, target: Target, source: Source, container: ContainerInfo,
                archive_path: ArchivePath) -> Iterator[list[Capture]]:
        try:
            repo = local_repository(ctx)
        except ResticError as err:
            raise BackupError(target.backup_name, "start", str(err)) from err
        if source.NAME == volumes.NAME:
            try:
                site = worker_site(ctx, probe=False)  # the worker's first record says its protocol
            except ConfigError as err:
                raise BackupError(target.backup_name, "start", str(err)) from err
            captures = [ResticVolumeCapture(ctx, target, v, container, repo, site) for v in target.volumes]
            with contextlib.ExitStack() as held:
                for capture in captures:
                    held.callback(capture.close)
                yield captures
            return
        into = getattr(source, "capture_into", None)  # a preset that writes a tar of its own (sqlite)
        if into is not None:
            (item,) = source.describe(target)
            with into(ctx, target, container, ResticSink(ctx, target, item, repo)) as one:
                yield [one]
            return
        command = getattr(source, "dump_command", None)
        if command is None:
            raise BackupError(target.backup_name, "start", f"backup.preset={source.NAME} has no dump stream for "
                              "backup.format=restic yet; use backup.format=archive for this container")
        (item,) = source.describe(target)
        sink = ResticSink(ctx, target, item, repo)
        with DumpCapture(ctx, target, container.id, item, command(target), sink) as one:
            yield [one]

    def publish(self, ctx: Context, target: Target, captures: list[Capture]) -> Published:
        return Published(snapshots=tuple(capture.finish() for capture in captures))

    def after_success(self, ctx: Context, target: Target) -> str | None:
        return keep_and_copy(ctx, Kept(target.backup_name, tuple(items(target)), target.config.keep))


@dataclass(frozen=True)
class Kept:
    """What one rotation and copy is about: a backup name's items and their keep rules (a
    target's, or a project's stack)."""

    backup_name: str
    items: tuple[str, ...]
    keep: Keep


def keep_and_copy(ctx: Context, kept: Kept) -> str | None:
    """`forget` by the keep rules for each item, the repository's figures for the metrics,
    then `restic copy` to each destination's repository; why a copy failed (None: none
    did). A failed forget is logged: the snapshots are safe, the next run forgets again.
    The forget's own answer (what each item keeps) gives the state file's figures: no
    `restic snapshots` of its own (each restic start costs a key derivation)."""
    try:
        repo = local_repository(ctx)
        forgotten = forget(ctx, repo, kept)
        newest = record_state(ctx, repo, kept, forgotten)
    except SidecarError as err:
        logger.error("restic rotation failed", extra={"target": kept.backup_name, "phase": "rotate",
                                                      "error": str(err)})
        return None
    problems = []
    for config in ctx.settings.destinations:
        name = destination_name(config)
        try:
            copy_to(ctx, repo, reachable_repository(config, repo.password, secrets_dir(ctx)), kept, name, newest)
        except (SidecarError, OSError) as err:
            logger.error("restic copy to a destination failed", extra={
                "target": kept.backup_name, "destination": name, "phase": "sync", "error": str(err)})
            problems.append(f"{name}: {err}")
    return "; ".join(problems) or None


def destination_config(ctx: Context, name: str | None) -> S3Config | RcloneConfig | LocalConfig:
    """A destination's settings by its name (None: the first configured); raises NotFound."""
    configs = ctx.settings.destinations
    config = next((c for c in configs if name is None or destination_name(c) == name), None)
    if config is None:
        raise NotFound(f"no destination named {name!r}; configured: "
                       f"{', '.join(destination_name(c) for c in configs) or 'none'}" if name is not None else
                       "no destination is configured (BACKUP_DESTINATIONS or S3_BUCKET) to read another node's "
                       "snapshots from")
    return config


def reachable_repository(config: S3Config | RcloneConfig | LocalConfig, password: str,
                         secrets: Path | None = None) -> Repository:
    """A destination's repository (restic.destination_repository); a second disk's root must
    be there, as for archives: a missing mount is unreachable, never created (restic's
    init would create the folder on the host's own disk)."""
    if isinstance(config, LocalConfig) and not Path(config.root).is_dir():
        raise DestinationUnreachable(f"local: {config.root} does not exist or is not a folder: is the disk mounted? "
                                     "(a missing mount is never created; the next run copies what it missed)",
                                     destination="local")
    return destination_repository(config, password, secrets)


def copy_to(ctx: Context, local: Repository, remote: Repository, kept: Kept, name: str,
            newest: dict[str, float]) -> None:
    """3-2-1: the destination's own repository (created with the local one's chunker
    parameters, so deduplication holds across copies) takes the target's snapshots it lacks
    (`restic copy`: only blobs it lacks travel), then forgets by the same keep rules.
    `newest`: `target/item` -> the time of its newest local snapshot (the copies' state). A
    remote repository once seen is not looked for again (a restic start each): a copy that
    finds none creates it and copies once more."""
    started = time.monotonic()
    location = without_userinfo(remote.location)
    known = remote.local_path is None and location in (_state(ctx).read().get(REPOSITORIES) or ())
    created = False if known else remote.ensure(ctx.store.state_dir / "locks", chunker_from=local)

    def copy():
        return remote.copy_from(local, tag=selector(kept.backup_name))

    try:
        result = unlocked(ctx, remote, copy)
    except ResticError as err:
        if not known or not _no_repository(err):
            raise
        created = remote.ensure(ctx.store.state_dir / "locks", chunker_from=local)
        result = unlocked(ctx, remote, copy)
    forgotten = forget(ctx, remote, kept)
    with _state(ctx).update() as doc:
        copied = doc.setdefault("copied", {})
        for key, when in newest.items():  # the destination holds every snapshot up to these
            copied.setdefault(key, {})[name] = when
        if remote.local_path is None and location not in (doc.get(REPOSITORIES) or ()):
            doc[REPOSITORIES] = sorted({*(doc.get(REPOSITORIES) or ()), location})
    logger.info("snapshots copied to the destination's restic repository", extra={
        "target": kept.backup_name, "destination": name, "phase": "sync", "repository_created": created,
        "seconds": round(time.monotonic() - started, 3), "copy_seconds": round(result.seconds, 3),
        "forgotten": len(forgotten.removed)})


def _no_repository(err: ResticError) -> bool:
    """restic found no repository at the location (its 0.14 words)."""
    text = str(err)
    return "Is there a repository at the following location?" in text or "unable to open config file" in text


def forget(ctx: Context, repo: Repository, kept: Kept) -> Forgotten:
    """One `restic forget` of the items on this host by their keep rules (backup.keep);
    what it kept and forgot (BACKUP_PRUNE_DRY_RUN: would forget)."""
    host = ctx.node().name
    keep = forget_args(kept.keep) + (("--dry-run",) if ctx.settings.prune_dry_run else ())
    tags = [selector(kept.backup_name, item) for item in kept.items]
    if not tags:  # a forget without --tag would take every snapshot of the host
        return Forgotten((), ())
    forgotten = unlocked(ctx, repo, lambda: repo.forget(tags, host, keep))
    for item in kept.items:
        removed = [s.id for s in forgotten.removed if s.item == item and s.backup_name == kept.backup_name]
        if removed:
            logger.info("restic snapshots forgotten" if not ctx.settings.prune_dry_run else
                        "restic snapshots would be forgotten", extra={
                            "target": kept.backup_name, "volume": item, "phase": "rotate", "snapshots": removed})
    return forgotten


def record_state(ctx: Context, repo: Repository, kept: Kept | None = None,
                 forgotten: Forgotten | None = None) -> dict[str, float]:
    """The repository's disk use, snapshots per target item and each item's newest snapshot
    of this node ({id, time}), for the metrics, the next parent and the copies' state; the
    newest times (`target/item` -> seconds). With `forgotten` (the run's forget of `kept`'s
    items) only those items' figures, from its answer; else from one listing of all."""
    host = ctx.node().name
    size = repository_bytes(repo.local_path) if repo.local_path is not None else None
    if forgotten is not None and kept is not None:
        found = [*forgotten.kept, *(forgotten.removed if ctx.settings.prune_dry_run else ())]
        covered = {f"{kept.backup_name}/{item}" for item in kept.items}
    else:
        found, covered = repo.snapshots(), None
    counts: dict[str, int] = {}
    newest: dict[str, Snapshot] = {}
    for snap in found:
        if snap.ours:
            key = f"{snap.backup_name}/{snap.item}"
            counts[key] = counts.get(key, 0) + 1
            if snap.host == host and (key not in newest or snap.time >= newest[key].time):
                newest[key] = snap
    with _state(ctx).update() as doc:
        if covered is None:
            doc["snapshots"] = counts
        else:
            doc["snapshots"] = {**{k: v for k, v in (doc.get("snapshots") or {}).items() if k not in covered},
                                **counts}
        doc["repository_bytes"], doc["updated"] = size, time.time()
        _write_records(doc, host, {key: ItemRecord(snap.id, snap.time.timestamp()) for key, snap in newest.items()})
    return {key: snap.time.timestamp() for key, snap in newest.items()}


def unlocked(ctx: Context, repo: Repository, call: Callable[[], T]) -> T:
    """`call()` (a restic command on `repo`); when restic finds the repository locked, the
    stale locks are removed (restic's own unlock; on the local repository also those of
    killed workers) and it runs once more: a killed run's lock costs one retry, not the 30
    minutes restic waits before it calls a lock of an unknown process stale."""
    try:
        return call()
    except ResticError as err:
        if "locked" not in str(err):
            raise
        logger.warning("restic found the repository locked; removing stale locks and trying again", extra={
            "repository": without_userinfo(repo.location), "error": str(err)[-300:]})
        repo.unlock()
        remove_dead_worker_locks(ctx, repo)
        return call()


def remove_dead_worker_tmp(ctx: Context) -> list[str]:
    """The temporary folders (restic's pack files on their way) of this node's restic
    workers that no longer run here: a killed run's (`.sidecar/restic-tmp/HOST.ID`, HOST the
    worker's host name; an older worker's folder, named ID alone, when none of ours runs).
    Returns their names."""
    folder = ctx.store.root / RESTIC_TMP_FOLDER
    found = [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    if not found:
        return []
    prefix = worker_host_prefix(ctx)
    running = {w.labels.get(HOST_LABEL) for w in ctx.engine.list_workers({}) if w.state is ContainerState.RUNNING}
    ours_running = any(host and host.startswith(WORKER_HOST) for host in running)
    removed = []
    for path in found:
        host, dot, _ = path.name.rpartition(".")
        dead = (host.startswith(prefix) and host not in running) if dot else not ours_running
        if dead:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
            logger.warning("removed the temporary folder of a killed restic worker", extra={
                "phase": "recovery", "folder": str(path)})
    return removed


def remove_dead_worker_locks(ctx: Context, repo: Repository) -> list[str]:
    """Locks of this node's restic workers (their host name) whose worker container no
    longer runs on this engine: a killed run's. Returns their ids. Locks of other hosts, of
    the sidecar's own restic (restic's unlock judges those) and of running workers stay."""
    folder = repo.local_path / "locks" if repo.local_path is not None else None
    if folder is None or not folder.is_dir() or not any(folder.iterdir()):
        return []
    prefix = worker_host_prefix(ctx)
    ours = [lock for lock in repo.locks() if lock.hostname.startswith(prefix)]
    if not ours:
        return []
    running = {w.labels.get(HOST_LABEL) for w in ctx.engine.list_workers({}) if w.state is ContainerState.RUNNING}
    removed = []
    for lock in ours:
        if lock.hostname in running:
            continue
        (folder / lock.id).unlink(missing_ok=True)
        removed.append(lock.id)
        logger.warning("removed the lock of a killed restic worker", extra={
            "phase": "recovery", "lock": lock.id[:8], "worker_host": lock.hostname, "exclusive": lock.exclusive})
    return removed
