"""How a verified archive reaches a volume: the restore's two unpack paths.

- worker (preferred): a short-lived worker container from the sidecar's image (the site
  WorkerReader probes) with the target volume read-write at VOLUME_ROOT (and the
  container's mounts nested in it, as the backup reads them) and the backup volume
  read-only, runs `python -m sidecar.worker.extract` (sidecar/worker/extract.py): our
  checked extractor reads the archive file once, decrypting, hashing and checking each
  member as it writes it. Nothing else parses the archive, so nothing can read it differently.
- engine-api (fallback, when no worker can run): the extractor's canonical stream (only
  the members it accepted, re-serialised by us) through the engine's archive API.

A worker that ends without saying `started` wrote nothing (an image without the extract
entry, a worker that could not start): the engine-API path runs instead. The log says which
path ran and why.
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

from .engine import Engine
from .errors import EngineError, RestoreError, SidecarError
from .extract import ArchiveFile, Summary, canonical_tar, root_entry
from .keys import DecryptionKeys
from .model import ContainerInfo, Mount, WorkerMount, WorkerSpec
from .readers import READERS
from .readers.base import WorkerSettings
from .readers.worker import KEYS_FOLDER, NAME as WORKER, VOLUME_ROOT, WorkerReader, WorkerSite, volume_mounts
from .storage import STATE_DIR
from .worker.extract import MODULE, write_keys

logger = logging.getLogger(__name__)

WORKER_PATH, ENGINE_API_PATH = "worker", "engine-api"
# Root in the worker with only what writing other users' files takes: give files away
# (CHOWN), write into and set times and modes on what others own (DAC_OVERRIDE,
# DAC_READ_SEARCH, FOWNER), keep a folder's setgid bit whatever its group (FSETID).
CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID")
PURPOSE = "extract"


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
    path: str | None = None  # only this member (a file or folder, sidecar.members.member_path); None: all


@dataclass(frozen=True)
class WorkerPlan:
    """What an extract worker gets: its image, its mounts, the archive as it sees it."""

    site: WorkerSite
    mounts: tuple[WorkerMount, ...]
    archive: str  # the archive's path inside the worker
    timeout: float


class WorkerUnavailable(SidecarError):
    """The worker ran none of our code: nothing was written, another path may run."""


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
    mounts = tuple(dataclasses.replace(m, read_only=False) for m in volume_mounts(request.container, request.mount))
    return WorkerPlan(site, mounts + (store,), inside, request.worker.timeout), ""


def unpack(engine: Engine, request: UnpackRequest, plan: WorkerPlan | None, reason: str = "") -> tuple[Summary, str]:
    """Write the archive into the mount; returns the summary and the path that ran."""
    fields = {"target": request.target, "container": request.container.name, "volume": request.mount.destination,
              "phase": "restore"}
    if plan is not None:
        try:
            return run_worker(engine, request, plan), WORKER_PATH
        except WorkerUnavailable as err:
            reason = str(err)
    logger.warning("restoring through the engine's archive API instead of a worker container",
                   extra={**fields, "path": ENGINE_API_PATH, "reason": reason})
    return engine_api(engine, request), ENGINE_API_PATH


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
    command = [*MODULE, "--archive", plan.archive, "--into", VOLUME_ROOT, "--sha256", request.sha256,
               "--progress-interval=5", *([f"--path={request.path}"] if request.path else [])]
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
                                f"{' | '.join(result.tail[-3:]) or 'no output'})")
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


# --- engine API ---------------------------------------------------------------------------

def engine_api(engine: Engine, request: UnpackRequest) -> Summary:
    """The stream the engine unpacks is re-serialised by the checked extractor from exactly
    the members it accepted, in the same read; the volume root's own entry goes into the
    mount's parent (the engine skips a "." entry)."""
    container, mount = request.container, request.mount
    done: list[Summary] = []
    engine.put_archive(container.id, mount.destination, canonical_tar(request.archive, request.keys,
                                                                      on_done=done.append))
    if not done:
        raise RestoreError("the engine stopped reading before the end of the archive")
    if done[0].root is not None:
        parent, _, base = mount.destination.rstrip("/").rpartition("/")
        engine.put_archive(container.id, parent or "/", root_entry(base, done[0].root))
    return done[0]
