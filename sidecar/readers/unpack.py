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

Before the volume is emptied a worker compares the room the archive takes once written
(`Summary.expanded`) with the free space of the volume (plus what emptying it frees).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyrage

from sidecar.docker.engine import Engine
from sidecar.core.errors import EngineError, RestoreError, SidecarError
from sidecar.tarball.extract import ArchiveFile, Summary
from sidecar.core.keys import DecryptionKeys
from sidecar.core.model import ContainerInfo, Mount, WorkerMount, WorkerSpec
from sidecar.readers import READERS
from sidecar.readers.base import WorkerSettings
from sidecar.readers.worker import KEYS_FOLDER, NAME as WORKER, VOLUME_ROOT, WorkerReader, WorkerSite, volume_mounts
from sidecar.store.storage import STATE_DIR
from sidecar.worker.extract import EXIT_NO_ROOM, MODULE, write_keys

logger = logging.getLogger(__name__)

WORKER_PATH = "worker"
# Root in the worker with only what writing other users' files takes: give files away
# (CHOWN), write into and set times and modes on what others own (DAC_OVERRIDE,
# DAC_READ_SEARCH, FOWNER), keep a folder's setgid bit whatever its group (FSETID).
CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID")
PURPOSE = "extract"
ROOM_PURPOSE = "room"


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


class WorkerUnavailable(RestoreError):
    """No worker container could run our code: nothing was written."""


def worker_plan(engine: Engine, request: UnpackRequest) -> tuple[WorkerPlan | None, str]:
    """How a worker would restore `request`, or why none can (run it before stopping
    anything: the probe starts a container)."""
    if request.worker is None:
        return None, "worker containers are not configured"
    if request.archive.encrypted and request.keys is not None and any(
            isinstance(i, pyrage.ssh.Identity) for i in request.keys.identities):
        return None, "SSH identities cannot be handed to a worker container"
    reader = READERS[WORKER]
    assert isinstance(reader, WorkerReader)
    site, reason = reader.site(engine, request.worker)
    if site is None:
        return None, reason
    try:
        inside = site.store.inside(Path(os.path.abspath(request.archive.path)))
    except ValueError:
        return None, f"the archive {request.archive.path} is not on the backup volume"
    store = dataclasses.replace(site.store.mount, read_only=True)
    mounts, skip = target_mounts(request.container, request.mount)
    return WorkerPlan(site, mounts + (store,), inside, request.worker.timeout, skip=skip), ""


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


def check_room(engine: Engine, request: UnpackRequest, plan: WorkerPlan, needed: int, replacing: bool) -> None:
    """Before the volume is emptied: a worker compares `needed` bytes with the
    volume's free space (plus what its current contents take, when `replacing`). Raises
    RestoreError when it does not fit."""
    command = [*MODULE, "--into", plan.into, "--room", str(needed), *(["--replacing"] if replacing else [])]
    fields = {"target": request.target, "container": request.container.name, "volume": request.mount.destination,
              "phase": "verify"}
    output = _Output(fields)
    spec = WorkerSpec(plan.site.image, tuple(command), ROOM_PURPOSE, plan.mounts, user="0",
                      capabilities=("DAC_READ_SEARCH",), timeout=plan.timeout)
    try:
        result = engine.run_worker(spec, output)
    except EngineError as err:
        raise WorkerUnavailable(f"no worker container could run to check the volume's free space ({err})") from err
    if result.ok and output.result is not None:
        logger.info("room checked", extra={**fields, "bytes": needed, "free_bytes": output.result.get("free")})
        return
    detail = str(output.error["message"]) if output.error else " | ".join(result.tail[-3:]) or "no output"
    if result.exit_code == EXIT_NO_ROOM:
        raise RestoreError(f"{request.archive.name} does not fit into {request.container.name}:"
                           f"{request.mount.destination}: {detail}; nothing was emptied")
    hint = "" if output.error else "; set BACKUP_WORKER_IMAGE to the sidecar's image"
    raise WorkerUnavailable(f"checking the free space of {request.container.name}:{request.mount.destination} in "
                            f"a worker failed (exit {result.exit_code}): {detail}{hint}; nothing was emptied")


# --- worker -------------------------------------------------------------------------------

class _Output:
    """The worker's JSON lines, as they come."""

    def __init__(self, fields: dict):
        self.fields = fields
        self.started = False
        self.result: dict | None = None
        self.error: dict | None = None

    def __call__(self, line: str) -> bool:
        try:
            record = json.loads(line)
        except ValueError:
            return False
        event = record.get("event") if isinstance(record, dict) else None
        if event == "started":
            self.started = True
        elif event == "progress":
            logger.info("restore in progress", extra={**self.fields, "tar_bytes": record.get("tar_bytes")})
        elif event == "warning":
            logger.warning("worker: " + str(record.get("message")),
                           extra={**self.fields, "member": record.get("member")})
        elif event == "result":
            self.result = record
        elif event == "error":
            self.error = record
        else:
            return False
        return True


def run_worker(engine: Engine, request: UnpackRequest, plan: WorkerPlan) -> Summary:
    """Run the extract worker to its end. Raises WorkerUnavailable when it ran none of our
    code, RestoreError when it failed or refused the archive."""
    fields = {"target": request.target, "container": request.container.name, "volume": request.mount.destination,
              "phase": "restore", "path": WORKER_PATH}
    command = [*MODULE, "--archive", plan.archive, "--into", plan.into, "--sha256", request.sha256,
               "--progress-interval=5", *(f"--skip={s}" for s in plan.skip),
               *(f"--only={p}" for p in request.only or ()), *([f"--path={request.path}"] if request.path else []),
               *(["--dump-parts"] if request.dump_parts else []), *(["--leave-root"] if request.leave_root else [])]
    keys_path = _keys_file(request) if request.keys is not None and request.archive.encrypted else None
    output = _Output(fields)
    try:
        if keys_path is not None:
            command += ["--keys-file", plan.site.store.inside(keys_path)]
        spec = WorkerSpec(plan.site.image, tuple(command), PURPOSE, plan.mounts, user="0",
                          capabilities=CAPABILITIES, timeout=plan.timeout)
        logger.info("restoring through a worker container", extra={**fields, "image": plan.site.image})
        try:
            result = engine.run_worker(spec, output)
        except EngineError as err:
            raise WorkerUnavailable(f"no worker container could run ({err})") from err
    finally:
        if keys_path is not None:
            keys_path.unlink(missing_ok=True)
    where = f"the worker container {result.name} (image {plan.site.image})"
    if result.timed_out:
        raise RestoreError(f"{where} ran past BACKUP_WORKER_TIMEOUT ({plan.timeout:g} s) and was killed")
    if output.result is not None and result.ok:
        done = output.result
        logger.info("archive unpacked by a worker container", extra={
            **fields, "worker": result.name, "members": done["members"], "tar_bytes": done["tar_bytes"],
            "stripped": done["stripped"], "seconds": round(result.seconds, 3)})
        return Summary(int(done["members"]), int(done["tar_bytes"]), str(done["sha256"]), int(done["stripped"]),
                       None)
    if output.error is None and not output.started:
        raise WorkerUnavailable(f"{where} could not run the extractor (exit {result.exit_code}: "
                                f"{' | '.join(result.tail[-3:]) or 'no output'}); set BACKUP_WORKER_IMAGE to the "
                                "sidecar's image")
    detail = str(output.error["message"]) if output.error else " | ".join(result.tail[-5:]) or "no output"
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
