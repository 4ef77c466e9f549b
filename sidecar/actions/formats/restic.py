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
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Iterable, Iterator

from ...tarball.archive import ProgressLog
from ...core.errors import BackupError, ConfigError, ResticError, SidecarError
from ...telemetry.metrics import RESTIC_STATE_FILE
from ...core.model import ContainerInfo, Target, VolumeSpec, WorkerSpec
from ...readers import READERS
from ...readers.worker import KEYS_FOLDER, PYTHON, STORE_LABEL, STORE_ROOT, TARGET_LABEL, WorkerSite, volume_mounts
from ...store.restic import REPO_FOLDER, Repository, destination_repository, repository_bytes
from ...core.settings import destination_name
from ...core.snapshots import VOLUME_PATH, BackupSummary, forget_args, parse_backup_line, selector, summary_of, tags
from ...store.state import JsonState
from ...store.storage import STATE_DIR
from ..context import Context
from ..sources import ArchivePath, Capture, Source, items, volumes
from ..sources.presets.dump import DumpCapture
from .base import Published, SnapshotResult

logger = logging.getLogger(__name__)

# Root in the worker: read every file whatever its owner; give restic's new repository
# files the repository's owner (sidecar/worker/restic.py).
BACKUP_CAPABILITIES = ("DAC_READ_SEARCH", "DAC_OVERRIDE", "CHOWN", "FOWNER")
EXIT_INCOMPLETE = 3  # restic 0.14: snapshot saved, some files could not be read


def local_repository(ctx: Context) -> Repository:
    """The backup volume's repository, created on first use."""
    password = ctx.settings.restic_password
    if password is None:
        raise ConfigError("backup.format=restic needs the repository's password: set RESTIC_PASSWORD_FILE (a file "
                          "or Docker secret holding it) or RESTIC_PASSWORD")
    repo = Repository(str(ctx.store.root / REPO_FOLDER), password)
    repo.ensure(ctx.store.state_dir / "locks")
    return repo


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


def _parent(repo: Repository, target: Target, item: str, host: str) -> str | None:
    found = repo.snapshots(selector(target.backup_name, item), host)
    return found[-1].id if found else None


# --- volumes: restic in a worker next to the data ------------------------------------------

class ResticVolumeCapture:
    """One volume's snapshot: `read` (quiesced when the strategy says) runs the worker."""

    def __init__(self, ctx: Context, target: Target, volume: VolumeSpec, container: ContainerInfo,
                 repo: Repository, site: WorkerSite):
        self.ctx, self.target, self.volume, self.repo, self.site = ctx, target, volume, repo, site
        self.item = volume.volume_name
        self.mounts = volume_mounts(container, volume.mount)
        self.result: SnapshotResult | None = None
        self._parent: tuple[str | None] | None = None  # looked up (before the quiesce when there is one)

    def prepare(self) -> None:
        """Before the container is quiesced: the parent snapshot (a restic call of its own
        that need not lengthen the stop window)."""
        try:
            self._parent = (_parent(self.repo, self.target, self.item, self.ctx.node().name),)
        except ResticError as err:
            raise BackupError(self.target.backup_name, "read", f"volume {self.item}: {err}") from err

    def read(self) -> None:
        ctx, name, item = self.ctx, self.target.backup_name, self.item
        fields = {"target": name, "volume": item, "phase": "read"}
        host = ctx.node().name
        if self._parent is None:  # a hot target: no prepare
            self.prepare()
        assert self._parent is not None
        (parent,) = self._parent
        with password_file(ctx, self.repo) as password:
            spec = self._spec(password, host, parent)
            lines = _WorkerLines(_progress(ctx, self.target, item, "read"), fields)
            try:
                result = ctx.engine.run_worker(spec, lines.take)
            except SidecarError as err:
                raise BackupError(name, "read", f"volume {item}: {err}") from err
        where = f"the worker container {result.name} (image {self.site.image})"
        if result.timed_out:
            raise BackupError(name, "read", f"volume {item}: {where} ran past BACKUP_WORKER_TIMEOUT and was killed")
        code = lines.code if lines.code is not None else result.exit_code
        if lines.summary is None or code not in (0, EXIT_INCOMPLETE):
            detail = " | ".join(lines.errors[-5:]) or " | ".join(result.tail[-5:]) or "no output"
            raise BackupError(name, "read", f"volume {item}: restic backup in {where} failed (exit {code}): {detail}")
        if code == EXIT_INCOMPLETE:
            logger.warning("restic could not read some files; the snapshot lacks them", extra={
                **fields, "errors": lines.errors[-5:]})
        self.result = _result(item, lines.summary)
        logger.info("volume read by restic in a worker container", extra={
            **fields, "worker": result.name, "snapshot": lines.summary.snapshot_id, "parent": parent,
            "bytes": lines.summary.total_bytes_processed, "added_bytes": lines.summary.data_added,
            "files_new": lines.summary.files_new, "files_changed": lines.summary.files_changed,
            "files_unmodified": lines.summary.files_unmodified, "seconds": round(result.seconds, 3)})

    def _spec(self, password: Path, host: str, parent: str | None) -> WorkerSpec:
        store, repo_path = self.site.store, self.repo.local_path
        assert repo_path is not None
        args = ["-r", store.inside(repo_path), "--no-cache", "--password-file", store.inside(password),
                "backup", "--json", VOLUME_PATH, "--host", host, *_tag_args(self.target, self.item),
                *_exclude_args(self.target.config.exclude), *(["--parent", parent] if parent else [])]
        command = (*PYTHON, "restic", "--repo", store.inside(repo_path), "--store", STORE_ROOT, "--", *args)
        return WorkerSpec(self.site.image, command, "restic-backup", self.mounts + (store.mount,),
                          labels={STORE_LABEL: store.key, TARGET_LABEL: self.target.backup_name}, user="0",
                          capabilities=BACKUP_CAPABILITIES, timeout=self.ctx.settings.worker_timeout)

    def finish(self) -> SnapshotResult:
        assert self.result is not None
        return self.result


class _WorkerLines:
    """A restic worker's output: restic's JSON lines, its stderr, the exit record."""

    def __init__(self, progress: ProgressLog, fields: dict):
        self.progress, self.fields = progress, fields
        self.summary: BackupSummary | None = None
        self.code: int | None = None
        self.errors: list[str] = []

    def take(self, line: str) -> bool:
        record = parse_backup_line(line)
        if record is None:
            return False
        kind = record.get("message_type") or record.get("event")
        if kind == "status":
            self.progress(int(record.get("bytes_done") or 0))  # raises BackupAborted on shutdown
        elif kind == "summary":
            self.summary = summary_of(record)
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
    folder = ctx.store.root / STATE_DIR / KEYS_FOLDER
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"restic-{uuid.uuid4().hex}.keys"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(repo.environment()["RESTIC_PASSWORD"])
        yield path
    finally:
        path.unlink(missing_ok=True)


def worker_site(ctx: Context) -> WorkerSite:
    """Where restic workers run; raises ConfigError saying why none can."""
    site, reason = READERS["worker"].site(ctx.engine, ctx.worker_settings)
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
                site = worker_site(ctx)
            except ConfigError as err:
                raise BackupError(target.backup_name, "start", str(err)) from err
            yield [ResticVolumeCapture(ctx, target, v, container, repo, site) for v in target.volumes]
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
        """`forget` by the keep rules for each item, then the repository's figures for the
        metrics. A failure is logged: the snapshots are safe, the next run forgets again."""
        try:
            repo = local_repository(ctx)
            forget(ctx, repo, target)
            record_state(ctx, repo)
        except SidecarError as err:
            logger.error("restic rotation failed", extra={"target": target.backup_name, "phase": "rotate",
                                                          "error": str(err)})
            return None
        problems = []
        for config in ctx.settings.destinations:
            name = destination_name(config)
            try:
                copy_to(ctx, repo, destination_repository(config, repo.environment()["RESTIC_PASSWORD"]), target,
                        name)
            except SidecarError as err:
                logger.error("restic copy to a destination failed", extra={
                    "target": target.backup_name, "destination": name, "phase": "sync", "error": str(err)})
                problems.append(f"{name}: {err}")
        return "; ".join(problems) or None


def copy_to(ctx: Context, local: Repository, remote: Repository, target: Target, name: str) -> None:
    """3-2-1: the destination's own repository (created with the local one's chunker
    parameters, so deduplication holds across copies) takes the target's snapshots it lacks
    (`restic copy`: only blobs it lacks travel), then forgets by the same keep rules."""
    started = time.monotonic()
    created = remote.ensure(ctx.store.state_dir / "locks", chunker_from=local)
    result = remote.copy_from(local, tag=selector(target.backup_name))
    forgotten = forget(ctx, remote, target)
    logger.info("snapshots copied to the destination's restic repository", extra={
        "target": target.backup_name, "destination": name, "phase": "sync", "repository_created": created,
        "seconds": round(time.monotonic() - started, 3), "copy_seconds": round(result.seconds, 3),
        "forgotten": sum(len(v) for v in forgotten.values())})


def forget(ctx: Context, repo: Repository, target: Target) -> dict[str, list[str]]:
    """`restic forget` of each of the target's items on this host by backup.keep; the ids
    forgotten per item (BACKUP_PRUNE_DRY_RUN: what would be)."""
    host = ctx.node().name
    keep = forget_args(target.config.keep) + (("--dry-run",) if ctx.settings.prune_dry_run else ())
    removed = {}
    for item in items(target):
        removed[item] = repo.forget(selector(target.backup_name, item), host, keep)
        if removed[item]:
            logger.info("restic snapshots forgotten" if not ctx.settings.prune_dry_run else
                        "restic snapshots would be forgotten", extra={
                            "target": target.backup_name, "volume": item, "phase": "rotate",
                            "snapshots": removed[item]})
    return removed


def record_state(ctx: Context, repo: Repository) -> None:
    """The repository's disk use and snapshots per target item, for the metrics."""
    counts: dict[str, int] = {}
    for snap in repo.snapshots():
        if snap.ours:
            key = f"{snap.backup_name}/{snap.item}"
            counts[key] = counts.get(key, 0) + 1
    size = repository_bytes(repo.local_path) if repo.local_path is not None else None

    with JsonState(ctx.store.state_dir / RESTIC_STATE_FILE, "restic state").update() as doc:
        doc["repository_bytes"], doc["snapshots"], doc["updated"] = size, counts, time.time()
