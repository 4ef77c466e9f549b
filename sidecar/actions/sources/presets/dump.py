"""What every dump preset shares: a tool's stdout streamed into an archive, and back.

The archive stays a real tar (so checksums, `verify`, encryption, sync and rotation treat
it like any other): the dump is cut into parts of PART_SIZE bytes, each one tar member
named `{file}.{NNNNNN}`, because a tar header needs its member's size and a dump's size is
known only at its end. Memory stays at one part whatever the dump's size. To read a dump
by hand: `tar -xf ARCHIVE && cat FILE.* > FILE`.
"""

from __future__ import annotations

import contextlib
import logging
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

from ....tarball.archive import ArchiveResult, ArchiveWriter, ProgressLog
from ....docker.engine import Engine
from ....core.errors import BackupError, RestoreError, RestoreLeftStopped, SidecarError
from ....readers import unpack
from ....tarball.extract import ArchiveFile, open_archive
from ....core.model import ContainerInfo, ContainerState, ExecResult, Mount, Target
from ...context import Context
from ...interrupt import Interruption
from ..base import ArchivePath, RestoreOutcome, RestoreRequest

logger = logging.getLogger(__name__)

PART_SIZE = 4 << 20
TAIL_KEPT = 4096  # last bytes of a dump kept to check that it ended as the tool ends it


def parts_tar(chunks: Iterable[bytes], file: str, mtime: float | None = None,
              part_size: int = PART_SIZE) -> Iterator[bytes]:
    """A tar stream of `chunks` cut into members `{file}.000000`, `{file}.000001`, ...
    (at least one, empty when the dump is)."""
    mtime = time.time() if mtime is None else mtime
    buffer = bytearray()
    index = 0

    def member() -> Iterator[bytes]:
        info = tarfile.TarInfo(f"{file}.{index:06d}")
        info.size, info.mode, info.mtime, info.type = len(buffer), 0o600, int(mtime), tarfile.REGTYPE
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        yield bytes(buffer)
        padding = -len(buffer) % tarfile.BLOCKSIZE
        if padding:
            yield b"\0" * padding

    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            take = part_size - len(buffer)
            buffer += view[:take]
            view = view[take:]
            if len(buffer) == part_size:
                yield from member()
                buffer.clear()
                index += 1
    if buffer or index == 0:
        yield from member()
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


@dataclass(frozen=True)
class DumpCommand:
    """One run of an app's tool whose stdout is the dump."""

    argv: tuple[str, ...]  # run with `sh` in the container (see Engine.exec_stream)
    file: str  # the dump's file name inside the archive
    tool: str  # its name in messages
    environment: tuple[tuple[str, str], ...] = ()  # given to the process only; never logged
    check: Callable[[bytes, bytes], str | None] | None = None  # (head, tail) -> why it is incomplete


class DumpSink(Protocol):
    """Where a dump's bytes go: an archive (ArchiveSink) or a restic snapshot (the restic
    format's). A context manager: leaving it without `finish` removes what is partial."""

    def __enter__(self) -> "DumpSink": ...

    def __exit__(self, *exc_info) -> None: ...

    def write(self, chunks: Iterable[bytes], file: str, progress: ProgressLog) -> None:
        """Take the whole dump; `chunks` raises at its end when the dump is bad (before
        anything may be kept). Raises OSError or SidecarError."""
        ...

    def finish(self): ...

    def describe(self) -> str: ...


class ArchiveSink:
    """The dump cut into tar parts (parts_tar), compressed (and encrypted) into the partial file."""

    def __init__(self, ctx: Context, target: Target, item: str, path: Path):
        self.target, self.item = target, item
        self.writer = ArchiveWriter(path, target.config.compression, ctx.settings.file_mode, ctx.local_encryption)

    def __enter__(self) -> "ArchiveSink":
        self.writer.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self.writer.__exit__(*exc_info)

    def write(self, chunks: Iterable[bytes], file: str, progress: ProgressLog) -> None:
        self.writer.write_stream(parts_tar(chunks, file), on_progress=progress)

    def describe(self) -> str:
        return str(self.writer.final_path)

    def finish(self) -> ArchiveResult:
        try:
            result = self.writer.finish()
        except OSError as exc:
            raise BackupError(self.target.backup_name, "write", f"{self.writer.final_path}: {exc}") from exc
        logger.info("archive written", extra={"target": self.target.backup_name, "volume": self.item,
                                              "phase": "write", "path": str(result.path), "bytes": result.size,
                                              "tar_bytes": result.raw_bytes})
        return result


class DumpCapture:
    """A preset's dump: `read` runs the tool with the app running and streams its stdout
    into the sink (an archive, or a restic snapshot); `finish` publishes it."""

    def __init__(self, ctx: Context, target: Target, container_id: str, item: str, command: DumpCommand,
                 sink: DumpSink):
        self.ctx, self.target, self.container_id, self.item, self.command = ctx, target, container_id, item, command
        self.sink = sink
        self.head = b""
        self.tail = b""

    def __enter__(self) -> "DumpCapture":
        self.sink.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self.sink.__exit__(*exc_info)

    def read(self) -> None:
        cfg, name = self.target.config, self.target.backup_name
        fields = {"target": name, "container": self.target.container.name, "volume": self.item, "phase": "dump",
                  "tool": self.command.tool}
        started = time.monotonic()

        def report(done: int, rate: float) -> None:
            logger.info("dump in progress", extra={**fields, "bytes": done, "bytes_per_second": round(rate),
                                                   "seconds": round(time.monotonic() - started, 1)})

        progress = ProgressLog(report, self.ctx.settings.progress_interval, self.ctx.cancel, name)
        logger.info("dump started", extra={**fields, "user": cfg.exec_user, "timeout": cfg.exec_timeout})
        try:
            stream = self.ctx.engine.exec_stream(self.container_id, list(self.command.argv), user=cfg.exec_user,
                                                 environment=dict(self.command.environment),
                                                 timeout=cfg.exec_timeout, fields=fields)
        except SidecarError as err:
            raise BackupError(name, "dump", f"{self.command.tool} could not run: {err}") from err
        try:
            self.sink.write(self._watched(stream), self.command.file, progress)
        except BackupError:
            raise
        except SidecarError as err:
            raise BackupError(name, "dump", f"{self.command.tool}: {err}") from err
        except OSError as exc:
            raise BackupError(name, "write", f"{self.sink.describe()}: {exc}") from exc
        finally:
            stream.close()
        logger.info("dump read", extra={**fields, "bytes": stream.stdout_bytes,
                                        "seconds": round(time.monotonic() - started, 3)})

    def _watched(self, stream) -> Iterator[bytes]:
        """The stream, keeping its first and last bytes for the check, which runs at its
        end: a bad dump raises before the sink may keep anything."""
        for chunk in stream:
            if len(self.head) < TAIL_KEPT:
                self.head += chunk[:TAIL_KEPT - len(self.head)]
            self.tail = (self.tail + chunk)[-TAIL_KEPT:]
            yield chunk
        self._check(stream.result())

    def _check(self, result: ExecResult) -> None:
        """A failed, empty or incomplete dump fails the backup with the tool's own words."""
        name, tool = self.target.backup_name, self.command.tool
        if not result.ok:
            raise BackupError(name, "dump", f"{tool} {result.describe()}")
        if result.stdout_bytes == 0:
            raise BackupError(name, "dump", f"{tool} wrote nothing (an empty dump){_said(result)}")
        if self.command.check is not None:
            why = self.command.check(self.head, self.tail)
            if why:
                raise BackupError(name, "dump", f"{tool}: {why}{_said(result)}")

    def finish(self):
        return self.sink.finish()


def in_shell(prologue: str) -> Callable[..., tuple[str, ...]]:
    """How a preset runs its app's tool in the target: `sh -c PROLOGUE sh TOOL ARGS...`, the
    prologue finding the credentials in the container's own environment (never passed here)."""
    def argv(*tool: str) -> tuple[str, ...]:
        return ("sh", "-c", prologue, "sh", *tool)
    return argv


def preset_user(target: Target) -> tuple[tuple[str, str], ...]:
    """`backup.preset.user` for the prologue (PRESET_USER), when set."""
    user = target.config.preset_user
    return (("PRESET_USER", user),) if user else ()


def one_archive(item: str) -> Callable[[Target], tuple[str, ...]]:
    """A dump preset's `describe` (the Source seam's): one archive of type `item` a backup."""
    def describe(target: Target) -> tuple[str, ...]:
        return (item,)
    return describe


def needs_quiesce(target: Target) -> bool:
    """The Source seam's: a dump is consistent by itself and is taken from the running app."""
    return False


def dump_capture(item: str, command: Callable[[Target], DumpCommand]):
    """A preset's `capture` (the Source seam's): one archive `item` from the tool that
    `command` names for the target."""
    @contextlib.contextmanager
    def capture(ctx: Context, target: Target, container: ContainerInfo,
                archive_path: ArchivePath) -> Iterator[list[DumpCapture]]:
        sink = ArchiveSink(ctx, target, item, archive_path(item))
        with DumpCapture(ctx, target, container.id, item, command(target), sink) as one:
            yield [one]
    return capture


def _said(result: ExecResult) -> str:
    text = "\n".join(result.tail).strip()[-300:]
    return f"; it said: {text}" if text else ""


# --- reading a dump back -------------------------------------------------------------------

def dump_stream(ctx: Context, request: RestoreRequest, archive: ArchiveFile, kind: str = "dump") -> unpack.ArchiveStream:
    """The dump in `archive` as an extract worker reads it (`--stream`; readers/unpack.py
    ArchiveStream), the backup volume read-only: entered, the whole archive was checked (its
    shape a dump's: parts FILE.NNNNNN in order, one FILE) and nothing was sent yet. The sidecar
    parses no archive: where no worker can run, the restore fails closed naming BACKUP_WORKER_IMAGE.
    `kind`: `files` for a dump that is a tar itself (re-serialised as files and folders)."""
    how = unpack.UnpackRequest(request.container, Mount("bind", "", ""), archive, "", ctx.settings.decryption,
                               ctx.worker_settings, request.backup_name)
    plan = unpack.listing_plan(ctx.engine, how, f" to restore it into {request.container.name}")
    return unpack.ArchiveStream(ctx.engine, how, plan, kind)


def feed(engine: Engine, container_id: str, argv: list[str], chunks: Iterable[bytes], *, user: str | None,
         timeout: float, environment: dict[str, str], fields: dict) -> ExecResult:
    """Run an app's client with `chunks` on its stdin; its output goes to the log."""
    stream = engine.exec_stream(container_id, argv, user=user, environment=environment, timeout=timeout,
                                stdin=chunks, stdout_lines=True, fields=fields)
    return stream.run()


def left_stopped(stop: Interruption, container: str, item: str, what: str, err: SidecarError) -> RestoreLeftStopped:
    """A restore failed after the app's files were removed or half written: the container
    stays stopped (journalled), as a failed volume restore leaves it (exit code 3)."""
    stop.leave_stopped(str(err))
    return RestoreLeftStopped(container, item, (
        f"RESTORE FAILED AFTER {what} of {container}: {err}. The container is left stopped so the app does not "
        "start on partial data. Restore again with --force (the container is started when it succeeds), or "
        "start it yourself"))


# --- restoring through the running app ------------------------------------------------------

CLIENT_TIMEOUT = 24 * 3600.0  # seconds an app's client may take to load a dump


def restore_fields(request: RestoreRequest, item: str) -> dict:
    """The log fields of a preset's restore."""
    return {"target": request.backup_name, "container": request.container.name, "volume": item,
            "archive": str(request.archive), "phase": "restore"}


@dataclass(frozen=True)
class Restoring:
    """A preset's restore under way (see `restoring`)."""

    request: RestoreRequest
    item: str
    fields: dict
    size: int  # the archive's tar bytes
    container: ContainerInfo  # as inspected: running
    started: float
    dump: unpack.ArchiveStream  # checked, nothing sent yet: its `data()` once the server is ready

    def outcome(self, downtime: float = 0.0) -> RestoreOutcome:
        seconds = time.monotonic() - self.started
        logger.info("restore finished", extra={**self.fields, "phase": "done", "seconds": round(seconds, 3)})
        return RestoreOutcome(self.request.backup_name, self.request.container.name, self.item, self.request.archive,
                              1, self.size, seconds, downtime)


@contextlib.contextmanager
def restoring(ctx: Context, request: RestoreRequest, item: str, running_for: str,
              kind: str = "dump") -> Iterator[Restoring]:
    """How every preset's restore starts: under the target's lock, the whole archive checked
    by a worker that then holds the dump for `Restoring.dump` (dump_stream; `kind`), then the
    app's container must run (`running_for`: the preset and what it needs the server for)."""
    fields = restore_fields(request, item)
    started = time.monotonic()
    with ctx.store.target_lock(request.backup_name), open_archive(request.archive) as archive:
        logger.info("verifying archive", extra={**fields, "phase": "verify"})
        with dump_stream(ctx, request, archive, kind) as dump:
            current = ctx.engine.inspect(request.container.id)
            if current.state is not ContainerState.RUNNING:
                raise RestoreError(f"{request.container.name} is not running: {running_for}; start it first")
            yield Restoring(request, item, fields, int(dump.verified["tar_bytes"]), current, started, dump)


def feed_dump(ctx: Context, restore: Restoring, argv: Sequence[str], tool: str) -> ExecResult:
    """The dump on the stdin of the app's client (`argv`) in the running container; a failure
    raises RestoreError naming `tool` (or the worker's refusal, when the archive failed its
    second read: the client's input was cut before its end)."""
    result = feed(ctx.engine, restore.container.id, list(argv), restore.dump.data(), user=None,
                  timeout=CLIENT_TIMEOUT, environment={}, fields=restore.fields)
    if isinstance(result.stdin_error, SidecarError):
        raise RestoreError(f"{tool} was fed part of the dump only: {result.stdin_error}") from result.stdin_error
    if not result.ok:
        raise RestoreError(f"{tool} {result.describe()}")
    return result


def ask(ctx: Context, container: ContainerInfo, argv: Sequence[str], fields: dict, *, unreachable: str,
        failed: str, well_formed: Callable[[str], bool] = lambda out: True) -> str:
    """What a command run in the running app's container printed (stripped): how a preset
    looks into the server before a restore. The messages start with `unreachable` when it
    cannot run, with `failed` when it fails or prints what `well_formed` refuses."""
    try:
        stream = ctx.engine.exec_stream(container.id, list(argv), timeout=60, fields=fields)
        out = b"".join(stream).decode("utf-8", "replace").strip()
        result = stream.result()
    except SidecarError as err:
        raise RestoreError(f"{unreachable}: {err}") from err
    if not result.ok or not well_formed(out):
        raise RestoreError(f"{failed} {result.describe()}")
    return out
