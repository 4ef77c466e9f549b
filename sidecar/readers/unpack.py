"""How a verified archive reaches a volume: one writer, in a worker.

A short-lived worker container from the sidecar's image (the site WorkerReader probes) with
the target volume read-write at VOLUME_ROOT (the container's mounts nested in it as the
container has them: a read-only one stays read-only and its members are left out) and the
backup volume read-only runs `python -m sidecar.worker.extract` (sidecar/worker/extract.py):
the checked extractor reads the archive file once, decrypting, hashing and checking each
member as its folder writer writes it. Nothing else parses the archive.

Decided (issue 19): where no worker can run, the restore fails closed before anything is
stopped, naming BACKUP_WORKER_IMAGE. The engine's archive API (`PUT /archive`) is not a
fallback: its unpacker is a second tar reader writing our files (with its own rules on links,
xattrs and sparse data), and a canonical stream of files and folders only would restore a
different tree than the archive holds whenever it has a symlink or a hard link.

What the sidecar must know of an archive before it restores or shows it (a preset's member
names, which pick the mounts; `list --files`; a path's members) comes from such a worker too,
run with `--list` and the backup volume read-only only (`list_archive`: one record per member,
each bounded by the parser), and the sidecar decides from those records (issue 19).

A volume's restore runs ONE such worker (StagedRestore), started before anything stops, told
what to do by lines on its stdin (the attach that also ends it when the sidecar dies). The
sidecar itself reads no byte of the archive.
- One pass (a volume without nested mounts): once the container is stopped, the worker reads
  the archive once, writing it into a staging folder inside the volume with every check; only
  when all of it was accepted and written are the staged entries swapped in for the old ones
  (sidecar/tarball/staging.py). A refusal leaves the volume as it was.
- Two passes (nested mounts: a rename cannot cross them; or the volume cannot hold the old
  and the new tree at once, ENOSPC while staging): the worker verifies the whole archive, then
  compares the room it takes once written (`Summary.expanded`) with the free space of the
  volume (plus what emptying it frees), and writes on the sidecar's go once it is emptied.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NoReturn

import pyrage

from sidecar.docker.engine import Engine
from sidecar.core.errors import (
    ArchiveError,
    ChecksumMismatch,
    EncryptionError,
    EngineError,
    RestoreError,
    SidecarError,
    UnsafeArchive,
)
from sidecar.tarball.extract import MAX_PATH, ArchiveFile, Kind, Member, Summary
from sidecar.core.keys import DecryptionKeys
from sidecar.core.model import ContainerInfo, Mount, WorkerLink, WorkerMount, WorkerResult, WorkerSpec
from sidecar.readers import READERS
from sidecar.readers.base import WorkerSettings
from sidecar.readers.worker import KEYS_FOLDER, NAME as WORKER, VOLUME_ROOT, WorkerReader, WorkerSite, volume_mounts
from sidecar.store.storage import STATE_DIR
from sidecar.worker import PROTOCOL, record_of
from sidecar.worker.extract import MODULE, write_keys

logger = logging.getLogger(__name__)

WORKER_PATH = "worker"
# Root in the worker with only what writing other users' files takes: give files away
# (CHOWN), write into and set times and modes on what others own (DAC_OVERRIDE,
# DAC_READ_SEARCH, FOWNER), keep a folder's setgid bit whatever its group (FSETID).
CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID")
PURPOSE = "extract"
QUIT_WAIT = 30.0  # seconds a staged worker told to quit has to end before it is removed
STREAM_FRAMES = 64  # a streaming worker's stdout frames held while its reader is behind


@dataclass(frozen=True)
class UnpackRequest:
    """One verified archive to write into one mount of a container."""

    container: ContainerInfo  # as inspected now (its mounts)
    mount: Mount
    archive: ArchiveFile
    sha256: str  # what the verification read: the worker must read the same bytes
    keys: DecryptionKeys | None
    worker: WorkerSettings | None  # None: no worker is tried
    target: str  # backup name, for log lines
    only: tuple[str, ...] | None = None  # a preset's dump: the files it may write (Policy's `only`)
    path: str | None = None  # only this member (a file or folder, sidecar.core.members.member_path); None: all
    dump_parts: bool = False  # only a dump's parts (of the file `path`): sidecar.core.members.chosen
    leave_root: bool = False  # the root entry left out: the target folder keeps its owner and mode


@dataclass(frozen=True)
class WorkerPlan:
    """What an extract worker gets: its image, its mounts, the archive as it sees it."""

    site: WorkerSite
    mounts: tuple[WorkerMount, ...]
    archive: str  # the archive's path inside the worker
    timeout: float
    into: str = VOLUME_ROOT  # where the worker writes
    skip: tuple[str, ...] = ()  # below `into`: what the container mounts read-only (left out)
    nested: bool = False  # the container mounts something inside the volume (no one-pass restore)


class WorkerUnavailable(RestoreError):
    """No worker container could run our code: nothing was written."""


def worker_plan(engine: Engine, request: UnpackRequest, probe: bool = True) -> tuple[WorkerPlan | None, str]:
    """How a worker would restore `request`, or why none can (run it before stopping
    anything: the probe starts a container). `probe=False`: a chosen image is not probed
    (a StagedRestore's worker says its protocol itself, before anything stops)."""
    if request.worker is None:
        return None, "worker containers are not configured"
    if request.archive.encrypted and request.keys is not None and any(
            isinstance(i, pyrage.ssh.Identity) for i in request.keys.identities):
        return None, "SSH identities cannot be handed to a worker container"
    reader = READERS[WORKER]
    assert isinstance(reader, WorkerReader)
    site, reason = reader.site(engine, request.worker, probe)
    if site is None:
        return None, reason
    try:
        inside = site.store.inside(Path(os.path.abspath(request.archive.path)))
    except ValueError:
        return None, f"the archive {request.archive.path} is not on the backup volume"
    store = dataclasses.replace(site.store.mount, read_only=True)
    mounts, skip = target_mounts(request.container, request.mount)
    return WorkerPlan(site, mounts + (store,), inside, request.worker.timeout, skip=skip, nested=len(mounts) > 1), ""


def target_mounts(container: ContainerInfo, mount: Mount) -> tuple[tuple[WorkerMount, ...], tuple[str, ...]]:
    """The volume read-write at VOLUME_ROOT and the container's mounts nested in it as the
    container has them (read-only stays read-only); with those read-only ones' paths below
    VOLUME_ROOT, which the writer leaves out."""
    nested = volume_mounts(container, mount)
    read_only = {m.destination.rstrip("/") for m in container.mounts if m.read_only and m != mount}
    base = mount.destination.rstrip("/")
    mounts, skip = [], []
    for m in nested:
        below = m.target[len(VOLUME_ROOT):].lstrip("/")
        ro = bool(below) and f"{base}/{below}" in read_only
        mounts.append(dataclasses.replace(m, read_only=ro))
        if ro:
            skip.append(below)
    return tuple(mounts), tuple(skip)


def require_worker(request: UnpackRequest, plan: WorkerPlan | None, reason: str) -> WorkerPlan:
    """Fail closed: no worker, no restore (module docstring)."""
    if plan is not None:
        return plan
    raise WorkerUnavailable(
        f"cannot restore {request.archive.name} into {request.container.name}:{request.mount.destination}: no worker "
        f"container can run ({reason}). A restore is only written by the checked extractor in a worker container: "
        "run the sidecar in its container (its own image is used), or set BACKUP_WORKER_IMAGE to the sidecar's image")


def unpack(engine: Engine, request: UnpackRequest, plan: WorkerPlan) -> tuple[Summary, str]:
    """Write the archive into the mount; returns the summary and the path that ran."""
    return run_worker(engine, request, plan), WORKER_PATH


def listing_plan(engine: Engine, request: UnpackRequest, why: str = "") -> WorkerPlan:
    """The worker that lists an archive (`--list`): the backup volume read-only and nothing
    else. Fails closed, naming BACKUP_WORKER_IMAGE, where none can run: the sidecar never
    parses an archive itself. `why`: what the listing is for, in that message."""
    plan, reason = worker_plan(engine, request)
    if plan is None:
        raise WorkerUnavailable(
            f"cannot read {request.archive.name}{why}: no worker container can run ({reason}). An archive's members are "
            "only read by the checked extractor in a worker container: run the sidecar in its container (its own "
            "image is used), or set BACKUP_WORKER_IMAGE to the sidecar's image")
    return dataclasses.replace(plan, mounts=(plan.mounts[-1],), skip=(), nested=False)


def list_archive(engine: Engine, request: UnpackRequest, plan: WorkerPlan, on_member: Callable[[Member], None],
                 limit: int | None = None) -> Summary:
    """Every accepted member (`request.only` applied) as the worker's `--list` reports it,
    in the archive's order, to `on_member`; returns the summary (with `expanded`) once the
    whole archive was accepted. A damaged, unsafe or swapped archive raises as `verify`
    does; more than `limit` members raise RestoreError (the worker is stopped)."""
    fields = {"target": request.target, "container": request.container.name, "volume": request.mount.destination,
              "phase": "verify", "path": WORKER_PATH}
    seen = 0

    def member(record: dict) -> None:
        nonlocal seen
        seen += 1
        if limit is not None and seen > limit:
            raise RestoreError(f"{request.archive.name} holds more than {limit} members: not what this restore "
                               "expects")
        on_member(_member(record, request.archive.name))

    output = _Output(fields, on_member=member)
    with _spec(request, plan, ["--list"]) as spec:
        try:
            result = engine.run_worker(spec, output)
        except EngineError as err:
            raise WorkerUnavailable(f"no worker container could run ({err}); set BACKUP_WORKER_IMAGE to the "
                                    "sidecar's image") from err
    done = output.result
    if done is not None and result.ok and done.get("protocol") != PROTOCOL:
        raise WorkerUnavailable(f"the worker image {plan.site.image} speaks worker protocol {done.get('protocol')}, "
                                f"this sidecar {PROTOCOL}; set BACKUP_WORKER_IMAGE to the sidecar's image")
    if done is None or not result.ok:
        _outcome(result, output, plan, fields, typed=True)
    assert done is not None
    expected = request.archive.expected_sha256
    if expected is not None and done["sha256"] != expected:
        raise ChecksumMismatch(f"{request.archive.name}: the worker read SHA-256 {done['sha256']}, the checksum file "
                               f"says {expected}")
    return Summary(int(done["members"]), int(done["tar_bytes"]), str(done["sha256"]), int(done["stripped"]), None,
                   int(done["expanded"]))


def _member(record: dict, archive: str) -> Member:
    """A `member` record as a Member (no xattrs, no sparse map: what deciding and showing need),
    its text bounded as the parser bounds it."""
    try:
        name, link = record["name"], record.get("linkname", "")
        if not isinstance(name, str) or not isinstance(link, str) or max(len(name), len(link)) > MAX_PATH:
            raise ValueError("a name or link longer than MAX_PATH")
        return Member(name, Kind(record["kind"]), int(record["mode"]), int(record["uid"]), int(record["gid"]), "", "",
                      int(record["mtime_ns"]), int(record["size"]), int(record["realsize"]), link)
    except (KeyError, TypeError, ValueError) as err:
        raise RestoreError(f"the worker listing {archive} said a member the sidecar cannot read ({err})") from err


class _Held:
    """A worker run in a thread of its own while the sidecar talks to it (ArchiveStream,
    StagedRestore): what ended it, raised."""

    _thread: threading.Thread
    _failure: BaseException | None
    _result: WorkerResult | None
    output: "_Output"
    plan: WorkerPlan
    fields: dict

    def _ended(self, event: str) -> NoReturn:
        """The worker ended before `event`: what it said (or what kept it from running), raised."""
        self._thread.join()
        if self._failure is not None:
            raise self._failure
        assert self._result is not None
        _outcome(self._result, self.output, self.plan, self.fields, typed=True)
        raise RestoreError(f"the worker container {self._result.name} ended without {event}")


class ArchiveStream(_Held):
    """An archive's bytes for a client, checked and produced by an extract worker with
    `--stream KIND` (sidecar/worker/extract.py; `listing_plan`: the backup volume read-only
    and nothing else): a preset's dump for its app's client, an image export for `docker
    load`. The sidecar pipes them and parses none of them.

    Entering starts the worker and waits until it checked the whole archive (`verified`: the
    dump's `file`, the `bytes` to come), or raises its refusal as `verify` would: nothing has
    reached a client yet. `data()` says go and yields the bytes as the worker's stdout frames
    bring them (the engine's attach keeps them apart from its records on stderr), then raises
    unless the worker ended with its result, the SHA-256 and the byte count of its check.
    Leaving without a go tells it to quit; a reader that stops early has it removed."""

    def __init__(self, engine: Engine, request: UnpackRequest, plan: WorkerPlan, kind: str):
        self.engine, self.request, self.plan, self.kind = engine, request, plan, kind
        self.fields = {"target": request.target, "container": request.container.name, "phase": "verify",
                       "path": WORKER_PATH, "stream": kind}
        self.output = _Output(self.fields, events=queue.Queue())
        self.verified: dict = {}
        self._chunks: "queue.Queue[bytes | None]" = queue.Queue(maxsize=STREAM_FRAMES)
        self._closed = threading.Event()
        self._link: WorkerLink | None = None
        self._result: WorkerResult | None = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="stream-worker", daemon=True)
        self._went = False

    @property
    def file(self) -> str:
        """The dump's file name inside the archive (`dump`, `files`)."""
        return str(self.verified.get("file") or "")

    @property
    def size(self) -> int:
        """The bytes `data` yields."""
        return int(self.verified["bytes"])

    def __enter__(self) -> "ArchiveStream":
        self._thread.start()
        try:
            record = self.output.events.get()  # type: ignore[union-attr]
            if record.get("event") != "verified":
                self._ended("verified")
            if record.get("protocol") != PROTOCOL:
                raise WorkerUnavailable(f"the worker image {self.plan.site.image} speaks worker protocol "
                                        f"{record.get('protocol')}, this sidecar {PROTOCOL}; set BACKUP_WORKER_IMAGE "
                                        "to the sidecar's image")
            expected = self.request.archive.expected_sha256
            if expected is not None and record.get("sha256") != expected:
                raise ChecksumMismatch(f"{self.request.archive.name}: the worker read SHA-256 {record.get('sha256')}, "
                                       f"the checksum file says {expected}")
            self.verified = record
            logger.info("archive verified by the worker container", extra={
                **self.fields, "members": record.get("members"), "bytes": record.get("bytes"),
                "verify_seconds": record.get("seconds")})
        except ArchiveError as err:
            self.__exit__(None, None, None)
            raise type(err)(f"{err} (refused before anything reached {self.request.container.name})") from err
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def data(self) -> Iterator[bytes]:
        self.fields["phase"] = "restore"
        self._went = True
        assert self._link is not None
        try:
            self._link.send(b"go\n")
        except EngineError as err:
            raise RestoreError(f"the worker container {self._link.name} could not be sent 'go' ({err})") from err
        sent = 0
        while (chunk := self._chunks.get()) is not None:
            sent += len(chunk)
            yield chunk
        self._thread.join()
        if self._failure is not None:
            raise self._failure
        assert self._result is not None
        done = _outcome(self._result, self.output, self.plan, self.fields, typed=True)
        if done.sha256 != self.verified.get("sha256") or sent != self.size:
            raise RestoreError(f"the worker container {self._result.name} sent {sent} bytes of "
                               f"{self.request.archive.name} (SHA-256 {done.sha256}); it checked {self.size} "
                               f"(SHA-256 {self.verified.get('sha256')})")

    def __exit__(self, *exc_info) -> None:
        """Without a go: `quit`; a worker still running after that (or after a reader that
        stopped early) is removed."""
        self._closed.set()
        if not self._went and self._thread.is_alive() and self._link is not None:
            with contextlib.suppress(SidecarError):
                self._link.send(b"quit\n")
                self._thread.join(QUIT_WAIT)
        if self._thread.is_alive() and self._link is not None:
            self.engine.remove_worker(self._link.name)
        self._thread.join(QUIT_WAIT)

    def _on_data(self, data: bytes) -> None:
        """A frame of the worker's stdout, for `data`."""
        if not self._put(data):
            raise _Abandoned("the archive's reader stopped")

    def _put(self, item: bytes | None) -> bool:
        """`item` for `data`, waiting while its reader is behind (the worker waits with it);
        False once the reader is gone."""
        while not self._closed.is_set():
            try:
                self._chunks.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        logger.info("streaming an archive through a worker container",
                    extra={**self.fields, "image": self.plan.site.image})
        try:
            with _spec(self.request, self.plan, ["--stream", self.kind]) as spec:
                spec = dataclasses.replace(spec, logged=False)  # its stdout is the archive's data, decrypted
                self._result = self.engine.run_worker(spec, self.output, on_start=self._started,
                                                      on_data=self._on_data)
        except EngineError as err:
            self._failure = WorkerUnavailable(f"cannot read {self.request.archive.name}: no worker container could "
                                              f"run ({err}); set BACKUP_WORKER_IMAGE to the sidecar's image")
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            self._failure = exc
        finally:
            self.output.events.put({"event": "ended"})  # type: ignore[union-attr]
            self._put(None)

    def _started(self, link: WorkerLink) -> None:
        self._link = link


class _Abandoned(SidecarError):
    """The reader of an ArchiveStream left before its end: the worker is stopped."""


class StagedRestore(_Held):
    """A volume's whole restore in one extract worker (sidecar/worker/extract.py), started
    before anything stops. The sidecar reads no byte of the archive.

    `one_pass` (`--one-pass`; a volume without nested mounts): entering waits for the worker's
    `ready`; `stage` (the target stopped) says go and waits until the archive was read once and
    written into a staging folder in the volume (True), or the volume cannot hold both trees
    (False: the worker fell back to the two-pass path and verified the archive, `verified`);
    `swap` puts the staged tree in place and returns the summary. Otherwise (`--staged`, two
    passes): entering waits until it verified the archive (the summary, with what the tree takes
    once written) or refused it; `room` asks it whether that fits the volume (raises
    RestoreError when not); `write` says go and waits for the written summary. Leaving without
    a go or a swap tells it to quit: the volume is as it was."""

    def __init__(self, engine: Engine, request: UnpackRequest, plan: WorkerPlan, replacing: bool,
                 one_pass: bool = False):
        self.engine, self.request, self.plan, self.replacing = engine, request, plan, replacing
        self.one_pass = one_pass
        self.fields = {"target": request.target, "container": request.container.name,
                       "volume": request.mount.destination, "phase": "verify", "path": WORKER_PATH}
        self.output = _Output(self.fields, events=queue.Queue())
        self.verified: Summary | None = None
        self._link: WorkerLink | None = None
        self._result: WorkerResult | None = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="extract-worker", daemon=True)
        self._went = False

    def __enter__(self) -> "StagedRestore":
        self._thread.start()
        try:
            if self.one_pass:
                self._protocol(self._next("ready"))
                logger.info("extract worker ready", extra=self.fields)
            else:
                self.verified = self._check(self._next("verified"))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def stage(self) -> bool:
        """Once the target is stopped: True when the archive is staged, False when the worker
        fell back to two passes (then `room` and `write` follow, as without `one_pass`)."""
        self.fields["phase"] = "restore"
        self._send(b"go\n")
        record = self._next("staged", "fallback")
        if record["event"] == "staged":
            logger.info("archive written into the staging folder", extra={
                **self.fields, "members": record["members"], "bytes": record["tar_bytes"],
                "write_seconds": record.get("seconds")})
            return True
        logger.info("restoring in two passes: " + str(record.get("reason")), extra=self.fields)
        self.fields["phase"] = "verify"
        self.verified = self._check(self._next("verified"))
        return False

    def swap(self) -> Summary:
        """The staged tree in place of the volume's contents (the worker's last step)."""
        return self._go(b"swap\n")

    def _protocol(self, record: dict) -> None:
        if record.get("protocol") != PROTOCOL:
            raise WorkerUnavailable(f"the worker image {self.plan.site.image} speaks worker protocol "
                                    f"{record.get('protocol')}, this sidecar {PROTOCOL}; set BACKUP_WORKER_IMAGE to "
                                    "the sidecar's image")

    def _check(self, record: dict) -> Summary:
        self._protocol(record)
        expected = self.request.archive.expected_sha256
        if expected is not None and record["sha256"] != expected:
            raise ChecksumMismatch(f"{self.request.archive.name}: the worker read SHA-256 {record['sha256']}, the "
                                   f"checksum file says {expected}")
        logger.info("archive verified by the worker container", extra={
            **self.fields, "members": record["members"], "bytes": record["tar_bytes"],
            "expanded_bytes": record["expanded"], "verify_seconds": record.get("seconds")})
        return Summary(int(record["members"]), int(record["tar_bytes"]), str(record["sha256"]),
                       int(record["stripped"]), None, int(record["expanded"]))

    def __exit__(self, *exc_info) -> None:
        """Without a go: `quit`, or the worker removed when it cannot be told."""
        if not self._went and self._thread.is_alive() and self._link is not None:
            try:
                self._link.send(b"quit\n")
                self._thread.join(QUIT_WAIT)
            except SidecarError:
                pass
        if self._thread.is_alive() and self._link is not None:
            self.engine.remove_worker(self._link.name)
            self._thread.join(QUIT_WAIT)

    def room(self) -> None:
        """Once the volume's writers are stopped, before it is emptied."""
        request, needed = self.request, self.verified.expanded if self.verified else 0
        self._send(b"room\n")
        record = self._next("room")
        if not record.get("fits"):
            raise RestoreError(f"{request.archive.name} does not fit into {request.container.name}:"
                               f"{request.mount.destination}: the archive takes {needed} bytes once written and the "
                               f"volume has {record.get('free')} bytes free"
                               + (" (counting what emptying it frees)" if self.replacing else "")
                               + "; nothing was emptied")
        logger.info("room checked", extra={**self.fields, "bytes": needed, "free_bytes": record.get("free")})

    def write(self) -> Summary:
        self.fields["phase"] = "restore"
        return self._go(b"go\n")

    def _go(self, line: bytes) -> Summary:
        self._send(line)
        self._went = True
        self._thread.join()
        if self._failure is not None:
            raise self._failure
        assert self._result is not None
        return _outcome(self._result, self.output, self.plan, self.fields)

    def _send(self, line: bytes) -> None:
        if self._link is None or not self._thread.is_alive():
            self._next("")  # the worker ended: its error
        try:
            self._link.send(line)  # type: ignore[union-attr]
        except EngineError as err:
            raise RestoreError(f"the worker container {self._link.name} could not be sent {line.strip().decode()!r} ({err})") from err

    def _run(self) -> None:
        request = self.request
        command = ["--one-pass" if self.one_pass else "--staged", *(["--replacing"] if self.replacing else [])]
        logger.info("verifying and restoring through a worker container", extra={**self.fields,
                                                                                  "image": self.plan.site.image})
        try:
            with _spec(request, self.plan, command) as spec:
                self._result = self.engine.run_worker(spec, self.output, on_start=self._started)
        except EngineError as err:
            self._failure = WorkerUnavailable(
                f"cannot restore {request.archive.name} into {request.container.name}:{request.mount.destination}: "
                f"no worker container could run ({err}); set BACKUP_WORKER_IMAGE to the sidecar's image")
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            self._failure = exc
        finally:
            self.output.events.put({"event": "ended"})  # type: ignore[union-attr]

    def _started(self, link: WorkerLink) -> None:
        self._link = link

    def _next(self, *events: str) -> dict:
        """The worker's next record among `events`; raises what ended it instead."""
        record = self.output.events.get()  # type: ignore[union-attr]
        if record.get("event") in events:
            return record
        self._ended(" or ".join(events) or "a result")


# --- worker -------------------------------------------------------------------------------

class _Output:
    """The worker's JSON lines, as they come."""

    def __init__(self, fields: dict, events: "queue.Queue[dict] | None" = None,
                 on_member: Callable[[dict], None] | None = None):
        self.fields = fields
        self.events = events  # `verified` and `room` (a staged worker's), for the thread that waits
        self.on_member = on_member  # a listing worker's `member` records
        self.started = False
        self.result: dict | None = None
        self.error: dict | None = None

    def __call__(self, line: str) -> bool:
        record = record_of(line)
        if not record:
            return False
        event = record.get("event")
        if event == "started":
            self.started = True
        elif event == "progress":
            logger.info("restore in progress", extra={**self.fields, "tar_bytes": record.get("tar_bytes")})
        elif event == "warning":
            logger.warning("worker: " + str(record.get("message")),
                           extra={**self.fields, "member": record.get("member")})
        elif event == "member" and self.on_member is not None:
            self.on_member(record)
        elif event == "result":
            self.result = record
        elif event == "error":
            self.error = record
        elif event in ("verified", "room", "ready", "staged", "fallback") and self.events is not None:
            self.events.put(record)
        else:
            return False
        return True


@contextlib.contextmanager
def _spec(request: UnpackRequest, plan: WorkerPlan, extra: list[str]) -> Iterator[WorkerSpec]:
    """The extract worker's spec, with the keys file it reads (removed once it has ended)."""
    command = [*MODULE, "--archive", plan.archive, "--into", plan.into, "--progress-interval=5",
               *(f"--skip={s}" for s in plan.skip), *(f"--only={p}" for p in request.only or ()),
               *([f"--path={request.path}"] if request.path else []), *(["--dump-parts"] if request.dump_parts else []),
               *(["--leave-root"] if request.leave_root else []), *extra]
    keys_path = _keys_file(request) if request.keys is not None and request.archive.encrypted else None
    try:
        if keys_path is not None:
            command += ["--keys-file", plan.site.store.inside(keys_path)]
        yield WorkerSpec(plan.site.image, tuple(command), PURPOSE, plan.mounts, user="0", capabilities=CAPABILITIES,
                         timeout=plan.timeout)
    finally:
        if keys_path is not None:
            keys_path.unlink(missing_ok=True)


def run_worker(engine: Engine, request: UnpackRequest, plan: WorkerPlan) -> Summary:
    """Run the extract worker to its end. Raises WorkerUnavailable when it ran none of our
    code, RestoreError when it failed or refused the archive."""
    fields = {"target": request.target, "container": request.container.name, "volume": request.mount.destination,
              "phase": "restore", "path": WORKER_PATH}
    output = _Output(fields)
    logger.info("restoring through a worker container", extra={**fields, "image": plan.site.image})
    with _spec(request, plan, ["--sha256", request.sha256]) as spec:
        try:
            result = engine.run_worker(spec, output)
        except EngineError as err:
            raise WorkerUnavailable(f"no worker container could run ({err})") from err
    return _outcome(result, output, plan, fields)


# The refusals a worker names (its error's `kind`), raised here as the sidecar's own verify raised them.
_REFUSALS = {cls.__name__: cls for cls in (ArchiveError, ChecksumMismatch, UnsafeArchive, EncryptionError)}


def _outcome(result: WorkerResult, output: _Output, plan: WorkerPlan, fields: dict, typed: bool = False) -> Summary:
    """The summary of a worker that wrote, or the error it ended with (`typed`: a refusal
    raised as the error class the worker named)."""
    where = f"the worker container {result.name} (image {plan.site.image})"
    if result.timed_out:
        raise RestoreError(f"{where} ran past BACKUP_WORKER_TIMEOUT ({plan.timeout:g} s) and was killed")
    if output.result is not None and result.ok:
        done = output.result
        logger.info("archive unpacked by a worker container", extra={
            **fields, "worker": result.name, "members": done["members"], "tar_bytes": done["tar_bytes"],
            "stripped": done["stripped"], "seconds": round(result.seconds, 3), "write_seconds": done.get("seconds"),
            "swap_seconds": done.get("swap_seconds")})
        return Summary(int(done["members"]), int(done["tar_bytes"]), str(done["sha256"]), int(done["stripped"]),
                       None)
    if output.error is None and not output.started:
        raise WorkerUnavailable(f"{where} could not run the extractor (exit {result.exit_code}: "
                                f"{' | '.join(result.tail[-3:]) or 'no output'}); set BACKUP_WORKER_IMAGE to the "
                                "sidecar's image")
    detail = str(output.error["message"]) if output.error else " | ".join(result.tail[-5:]) or "no output"
    if typed and output.error and output.error.get("kind") in _REFUSALS:
        raise _REFUSALS[output.error["kind"]](detail)
    verb = "refused the archive" if output.error and output.error.get("refused") else "failed"
    raise RestoreError(f"{where} {verb} (exit {result.exit_code}): {detail}")


def _keys_file(request: UnpackRequest) -> Path:
    assert request.worker is not None and request.keys is not None
    folder = request.worker.backup_dir / STATE_DIR / KEYS_FOLDER
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{uuid.uuid4().hex}.keys"
    try:
        write_keys(path, request.keys)
    except ValueError as err:
        path.unlink(missing_ok=True)
        raise WorkerUnavailable(str(err)) from err
    return path
