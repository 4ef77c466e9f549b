"""The worker reader: a volume archived next to the data, by a short-lived worker container
from the sidecar's own image (Engine.run_worker) running `python -m sidecar.worker archive`
(native GNU tar | zstd -T0, hashed and encrypted in Python; see sidecar/worker/archive.py).

The worker sees the target's volume read-only (by volume name or bind source, with the
container's mounts nested below it, as the container sees them) and the backup volume
read-write: the mount of the sidecar's own container that holds BACKUP_DIR or, for a
sidecar running as a host process, BACKUP_DIR itself as a bind mount. Nobody adds a host
path. Encryption settings reach the worker in a 0600 file in the state folder that the
worker removes as soon as it has read it (never in its environment or arguments, which
`docker inspect` shows).

Phases: `open` creates the partial file (owned by the sidecar, with its mode); `read` runs
the worker, which writes and fsyncs it; `finish` writes the checksum and renames, as
ArchiveWriter does. The worker is usable when an image is known (BACKUP_WORKER_IMAGE, else
the sidecar's own container's image, else, for a sidecar run on the engine's host, the newest
local image carrying IMAGE_LABEL, which the Dockerfile puts on it) and a probe of that image (once per process) finds
GNU tar, the compressor and the same worker protocol; otherwise `choose` falls back to the
engine-API reader, the reason is logged once per target and said once per process as a
WARNING naming BACKUP_WORKER_IMAGE (unless it is `none`: the user's choice).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..tarball.archive import ArchiveResult, write_checksum
from ..docker.engine import Engine
from ..core.errors import ArchiveError, EngineError
from ..core.fsutil import fsync_dir
from ..core.model import ContainerInfo, Mount, WorkerMount, WorkerResult, WorkerSpec
from ..core.naming import PARTIAL_SUFFIX
from ..store.state import JsonState
from ..store.storage import STATE_DIR
from ..worker import PROTOCOL, record_of
from ..worker.archive import write_keys
from .base import ArchiveRequest, Progress, WorkerSettings

logger = logging.getLogger(__name__)

NAME = "worker"
VOLUME_ROOT = "/volume"  # where the target's volume is mounted in the worker (read-only)
# The backup volume in the worker: the image declares VOLUME /backups, so mounting it there
# also keeps the engine from creating an anonymous volume.
STORE_ROOT = "/backups"
STORE_LABEL = "backup-sidecar.store"  # which backup volume a worker writes to (its key)
TARGET_LABEL = "backup-sidecar.target"
# Root in the worker, with only these: read every file of the volume whatever its owner,
# and write the partial file the sidecar created (owned by the sidecar's user).
CAPABILITIES = ("DAC_READ_SEARCH", "DAC_OVERRIDE")
PYTHON = ("python", "-m", "sidecar.worker")
PROBE_TIMEOUT = 120.0
# Put on the image by the project's Dockerfile: a sidecar outside a container with no
# BACKUP_WORKER_IMAGE takes the newest local image that carries it (and passes the probe).
IMAGE_LABEL = "backup-sidecar.image"
IMAGE_LABEL_VALUE = "sidecar"
FIND_AT_MOST = 3  # labelled images probed, newest first
NO_WORKERS = "none"  # BACKUP_WORKER_IMAGE=none: no worker containers, on purpose
CHOSEN_NONE = f"BACKUP_WORKER_IMAGE={NO_WORKERS}"
KEYS_FOLDER = "workers"  # in the state folder: encryption settings on their way to a worker
STALE_KEYS_SECONDS = 600.0  # a worker reads its file within seconds of starting
PROBES_FILE = "worker-probes.json"  # in the state folder: image ids that passed the probe, with the protocol
PROBES_KEPT = 16  # newest image ids remembered


@dataclass(frozen=True)
class StoreMount:
    """The backup volume as a worker mounts it, and the folder it is in this process."""

    mount: WorkerMount
    root: Path  # the folder of this process's filesystem that the mount's source is

    @property
    def key(self) -> str:
        """Stable per backup volume: labels this store's workers (found again after a crash)."""
        return hashlib.sha256(f"{self.mount.kind}:{self.mount.source}".encode()).hexdigest()[:16]

    def inside(self, path: Path) -> str:
        """`path` (under root) as the worker sees it."""
        return str(PurePosixPath(STORE_ROOT) / path.relative_to(self.root))


def store_mount(backup_dir: Path, own: ContainerInfo | None) -> StoreMount | None:
    """The backup volume's mount for workers: the mount of the sidecar's own container that
    holds backup_dir (None when none does), or backup_dir itself when the sidecar is no container."""
    if own is None:
        return StoreMount(WorkerMount("bind", str(backup_dir), STORE_ROOT, read_only=False), backup_dir)
    best: Mount | None = None
    for m in own.mounts:
        dest = Path(m.destination)
        if (backup_dir == dest or dest in backup_dir.parents) and (best is None or len(m.destination) > len(best.destination)):
            best = m
    if best is None:
        return None
    return StoreMount(WorkerMount(best.kind, best.source, STORE_ROOT, read_only=False), Path(best.destination))


def volume_mounts(container: ContainerInfo, mount: Mount) -> tuple[WorkerMount, ...]:
    """The volume at VOLUME_ROOT, read-only, with the container's mounts nested inside it
    below it (the engine's archive API reads them too)."""
    base = mount.destination.rstrip("/")
    mounts = [WorkerMount(mount.kind, mount.source, VOLUME_ROOT)]
    for other in sorted(container.mounts, key=lambda m: m.destination):
        if other.destination.startswith(base + "/") and other != mount:
            mounts.append(WorkerMount(other.kind, other.source, VOLUME_ROOT + other.destination[len(base):]))
    return tuple(mounts)


@dataclass(frozen=True)
class WorkerSite:
    """Where workers can run: their image (probed) and the backup volume's mount. Other
    workers (e.g. a restore's extractor) start from here too: WorkerReader.site."""

    image: str
    store: StoreMount


@dataclass(frozen=True)
class _Plan(WorkerSite):
    """A site plus the target volume's mounts: what one archive's worker gets."""

    mounts: tuple[WorkerMount, ...]


class WorkerArchive:
    def __init__(self, engine: Engine, request: ArchiveRequest, plan: _Plan):
        self.engine, self.request, self.plan = engine, request, plan
        self.partial_path = request.final_path.with_name(request.final_path.name + PARTIAL_SUFFIX)
        self._outcome: dict | None = None
        self._error: str | None = None
        self._done = False

    def __enter__(self) -> "WorkerArchive":
        self.request.final_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.partial_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.request.file_mode)
        try:
            os.fchmod(fd, self.request.file_mode)  # the umask must not change the chosen mode
        finally:
            os.close(fd)
        return self

    def __exit__(self, *exc_info) -> None:
        if not self._done:
            self.abort()

    def prepare(self, progress: Progress | None = None) -> None:
        """Nothing to do before the container is quiesced."""

    def read(self, progress: Progress | None = None, root: str = VOLUME_ROOT,
             mounts: tuple[WorkerMount, ...] | None = None, special: str | None = None) -> int:
        """Archive the volume; or, given `root` (a folder of the backup volume as workers see
        it) and `mounts` (those besides the backup volume's), that folder; `special`: a
        staging mirror's special.json (set-id bits and devices its tree does not hold)."""
        plan = self.plan
        keys_path = self.keys_path()
        try:
            if keys_path is not None:
                self.write_keys(keys_path)
            spec = self._spec(keys_path, root, plan.mounts if mounts is None else mounts, special)
            result = self.engine.run_worker(spec, lambda line: self.on_line(line, progress))
        finally:
            if keys_path is not None:
                keys_path.unlink(missing_ok=True)
        return self.archived(result, spec.timeout)

    def archived(self, result: WorkerResult, timeout: float) -> int:
        """The tar bytes of the archive a worker wrote into the partial file (its `result`
        read by on_line), checked; raises ArchiveError."""
        request, plan = self.request, self.plan
        where = f"the worker container {result.name} (image {plan.image})"
        if result.timed_out:
            raise ArchiveError(f"{where} ran past BACKUP_WORKER_TIMEOUT ({timeout:g} s) and was killed")
        if not result.ok or self._outcome is None:
            detail = self._error or " | ".join(result.tail[-5:]) or "no output"
            raise ArchiveError(f"{where} failed (exit {result.exit_code}): {detail}")
        size = self.partial_path.stat().st_size
        if size != self._outcome["size"]:  # the worker wrote somewhere else: a wrong store mount
            raise ArchiveError(f"{where} reported {self._outcome['size']} bytes but {self.partial_path} holds {size}")
        reused = {"same_as": self._outcome["reused"]} if self._outcome.get("reused") else {}
        if self._outcome.get("frames"):  # a mirror's framed archive: how many frames came from the last one
            reused.update(frames=self._outcome["frames"], frames_reused=self._outcome.get("frames_reused", 0))
        logger.info("volume archived by a worker container" if "same_as" not in reused else
                    "volume unchanged since an archive made from its staging mirror: that archive copied", extra={
                        "target": request.target, "volume": request.mount.destination, "worker": result.name,
                        "tar_bytes": self._outcome["tar_bytes"], "bytes": size, "seconds": round(result.seconds, 3),
                        **reused})
        return int(self._outcome["tar_bytes"])

    def _spec(self, keys_path: Path | None, root: str, mounts: tuple[WorkerMount, ...],
              special: str | None = None) -> WorkerSpec:
        request, plan = self.request, self.plan
        command = [*PYTHON, "archive", "--root", root, "--output", plan.store.inside(self.partial_path),
                   f"--compression={request.compression.value}", "--progress-interval=1"]
        command += [f"--special={special}"] if special is not None else []
        command += [f"--exclude={pattern}" for pattern in request.exclude]
        if keys_path is not None:
            command.append(f"--keys-file={plan.store.inside(keys_path)}")
        timeout = request.worker.timeout if request.worker is not None else WorkerSettings.timeout
        return WorkerSpec(plan.image, tuple(command), "archive", mounts + (plan.store.mount,),
                          labels={STORE_LABEL: plan.store.key, TARGET_LABEL: request.target}, user="0",
                          capabilities=CAPABILITIES, timeout=timeout)

    def keys_path(self) -> Path | None:
        """Where this archive's encryption settings go for its worker (None: not encrypted)."""
        if self.request.encryption is None:
            return None
        assert self.request.worker is not None
        folder = self.request.worker.backup_dir / STATE_DIR / KEYS_FOLDER
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return folder / f"{uuid.uuid4().hex}.keys"

    def write_keys(self, path: Path) -> None:
        assert self.request.encryption is not None
        write_keys(path, self.request.encryption)

    def on_line(self, line: str, progress: Progress | None) -> bool:
        record = record_of(line)
        if not record:
            return False  # not ours (e.g. Python's own traceback): logged as it is
        event = record.get("event")
        if event == "progress":
            if progress is not None:
                progress(int(record.get("tar_bytes") or 0))  # raises BackupAborted on shutdown
        elif event == "result":
            self._outcome = record
        elif event == "error":
            self._error = str(record.get("message"))
        elif event in ("tar", "warning"):
            logger.warning("worker: " + str(record.get("line") or record.get("message")),
                           extra={"target": self.request.target, "volume": self.request.mount.destination})
        else:
            return False
        return True

    def finish(self) -> ArchiveResult:
        """Checksum first, then the rename: a visible archive always has its checksum."""
        assert self._outcome is not None
        final = self.request.final_path
        digest = str(self._outcome["sha256"])
        write_checksum(final, digest, self.request.file_mode)
        os.replace(self.partial_path, final)
        fsync_dir(final.parent)
        self._done = True
        return ArchiveResult(final, int(self._outcome["size"]), int(self._outcome["tar_bytes"]), digest)

    def abort(self) -> None:
        self._done = True
        self.partial_path.unlink(missing_ok=True)


def fix_for(reason: str) -> str:
    """What to do when no worker can run for `reason` ("" when the reason says it already, or
    it was the user's choice)."""
    if reason == CHOSEN_NONE or "image" not in reason:
        return ""
    return f"; set BACKUP_WORKER_IMAGE to this sidecar's image (or to `{NO_WORKERS}` to choose this)"


def remove_stale_keys(backup_dir: Path, now: float | None = None) -> list[Path]:
    """Key files a killed sidecar left behind (its worker never read them)."""
    folder = backup_dir / STATE_DIR / KEYS_FOLDER
    now = time.time() if now is None else now
    removed = []
    for path in folder.glob("*.keys") if folder.is_dir() else ():
        try:
            if now - path.stat().st_mtime > STALE_KEYS_SECONDS:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:
            pass
    return removed


class WorkerReader:
    name = NAME

    def __init__(self) -> None:
        self._probes: dict[str, str | None] = {}  # image -> why it cannot serve (None: it can)
        self._reported: set[tuple[str, str]] = set()
        self._warned: set[str] = set()  # reasons already said as a WARNING (once per process)
        self._lock = threading.Lock()
        self._find_lock = threading.Lock()
        self._found: tuple[str | None, str] | None = None  # the labelled image's lookup (once per process)
        self._found_by: dict[str, str] = {}  # image id -> how it was found

    def usable(self, engine: Engine, request: ArchiveRequest) -> bool:
        plan, reason = self.plan(engine, request)
        if plan is None:
            key = (request.target or request.container_id, reason)
            with self._lock:
                first = key not in self._reported
                self._reported.add(key)
                warn = request.worker is not None and reason not in self._warned and reason != CHOSEN_NONE
                self._warned.add(reason)
            if first:
                logger.info("reading through the engine's archive API instead of a worker container",
                            extra={"target": request.target, "volume": request.mount.destination, "reason": reason})
            if warn:  # once per process: what the user can change, where they look
                logger.warning(f"volumes are read through the engine's archive API, with no worker container and no "
                               f"staging mirror (slower; a `stop` target stays down longer): {reason}{fix_for(reason)}",
                               extra={"setting": "BACKUP_WORKER_IMAGE", "reason": reason})
        return plan is not None

    def open(self, engine: Engine, request: ArchiveRequest) -> WorkerArchive:
        plan, reason = self.plan(engine, request)
        if plan is None:
            raise ArchiveError(f"no worker container can read {request.mount.destination}: {reason}")
        return WorkerArchive(engine, request, plan)

    def plan(self, engine: Engine, request: ArchiveRequest) -> tuple[_Plan | None, str]:
        """How a worker would read `request`, or why none can."""
        if request.worker is None:
            return None, "worker containers are not configured for this request"
        site, reason = self.site(engine, request.worker)
        if site is None:
            return None, reason
        try:
            container = engine.inspect(request.container_id)
        except EngineError as err:
            return None, f"cannot inspect the target: {err}"
        return _Plan(site.image, site.store, volume_mounts(container, request.mount)), ""

    def site(self, engine: Engine, settings: WorkerSettings, probe: bool = True) -> tuple[WorkerSite | None, str]:
        """The image and backup-volume mount of workers here, or why no worker can run.
        `probe=False`: an image named by BACKUP_WORKER_IMAGE or the sidecar's own container
        is taken unprobed (the caller's worker must say its protocol itself); one found by
        its label is always probed (that is how it is chosen)."""
        if settings.image == NO_WORKERS:
            return None, CHOSEN_NONE
        own = engine.own_container()
        image = settings.image or (own.image_id if own is not None else None)
        if image is None and engine.is_local:
            image, reason = self._labelled_image(engine, settings.backup_dir)
            if image is None:
                return None, reason
        if image is None:
            return None, "the sidecar runs outside a container and BACKUP_WORKER_IMAGE is unset"
        if own is None and not engine.is_local:
            return None, "the sidecar runs outside a container and the engine on another machine (DOCKER_HOST)"
        store = store_mount(settings.backup_dir, own)
        if store is None:
            return None, f"BACKUP_DIR ({settings.backup_dir}) is on no mount of the sidecar's container"
        failure = self._probe(engine, image, settings.backup_dir) if probe else None
        if failure is not None:
            return None, failure
        return WorkerSite(image, store), ""

    def describe(self, engine: Engine, settings: WorkerSettings) -> tuple[WorkerSite | None, str]:
        """site(), with how its image was chosen (or why there is none), for people (`plan`)."""
        site, reason = self.site(engine, settings)
        if site is None:
            return None, reason
        if settings.image:
            return site, f"image {settings.image} (BACKUP_WORKER_IMAGE)"
        if site.image in self._found_by:
            return site, self._found_by[site.image]
        return site, "the sidecar's own image"

    def _labelled_image(self, engine: Engine, backup_dir: Path) -> tuple[str | None, str]:
        """A sidecar outside a container with no BACKUP_WORKER_IMAGE: the newest local image
        built from this project's Dockerfile (its label) that passes the probe; looked up once."""
        with self._find_lock:
            if self._found is None:
                self._found = self._find_labelled(engine, backup_dir)
            return self._found

    def _find_labelled(self, engine: Engine, backup_dir: Path) -> tuple[str | None, str]:
        unset = "the sidecar runs outside a container and BACKUP_WORKER_IMAGE is unset"
        try:
            images = engine.labelled_images(f"{IMAGE_LABEL}={IMAGE_LABEL_VALUE}")
        except EngineError as err:
            return None, f"{unset}, and the images cannot be listed ({err})"
        if not images:
            return None, (f"{unset}, and no local image carries the label {IMAGE_LABEL}={IMAGE_LABEL_VALUE} (an "
                          "image built from this project's Dockerfile)")
        refused = []
        for info in images[:FIND_AT_MOST]:
            name = info.tags[0] if info.tags else info.id[:19]
            failure = self._probe(engine, info.id, backup_dir)
            if failure is None:
                self._found_by[info.id] = (f"image {name}, the newest of {len(images)} labelled "
                                           f"{IMAGE_LABEL}={IMAGE_LABEL_VALUE} (BACKUP_WORKER_IMAGE unset)")
                logger.info("worker image found by its label", extra={
                    "image": name, "id": info.id, "label": f"{IMAGE_LABEL}={IMAGE_LABEL_VALUE}",
                    "candidates": len(images), "setting": "BACKUP_WORKER_IMAGE"})
                return info.id, ""
            refused.append(f"{name}: {failure}")
        return None, f"{unset}, and no labelled image can serve ({'; '.join(refused)})"

    def _probe(self, engine: Engine, image: str, backup_dir: Path) -> str | None:
        with self._lock:  # one probe per image and process; others wait for its answer
            if image not in self._probes:
                self._probes[image] = _probe_once(engine, image, backup_dir)
            return self._probes[image]


def _probe_once(engine: Engine, image: str, backup_dir: Path) -> str | None:
    """The probe's answer for `image`, run only when this image id has not passed it at this
    protocol before. An image id names its content, so a pass holds for ever: a one-shot
    command (each its own process) no longer pays a container start for it (about a second)."""
    try:
        image_id = engine.image_info(image).id
    except EngineError:
        image_id = None  # not local (yet): the probe says why, or pulls it
    passed = JsonState(backup_dir / STATE_DIR / PROBES_FILE, "worker probe record")
    if image_id is not None:
        try:
            if passed.read().get(image_id) == PROTOCOL:
                logger.debug("worker image passed its probe before", extra={"image": image, "id": image_id})
                return None
        except OSError:
            pass  # an unreadable state folder: probe
    failure = _probe(engine, image)
    if failure is None and image_id is not None:
        try:
            with passed.update() as record:
                record.pop(image_id, None)
                record[image_id] = PROTOCOL
                for old in list(record)[:-PROBES_KEPT]:
                    del record[old]
        except OSError:
            pass  # a read-only backup volume (`list`, `plan`): probed again next time
    return failure


def _probe(engine: Engine, image: str) -> str | None:
    """Run the image's probe once: None when it has GNU tar, zstd, gzip and our protocol."""
    found: dict = {}

    def on_line(line: str) -> bool:
        record = record_of(line)
        if record.get("event") == "probe":
            found.update(record)
            return True
        return False

    spec = WorkerSpec(image, (*PYTHON, "probe"), "probe", timeout=PROBE_TIMEOUT)
    try:
        result = engine.run_worker(spec, on_line)
    except EngineError as err:
        return f"no worker container from image {image} ({err})"
    if not result.ok or not found:
        return (f"image {image} cannot run `python -m sidecar.worker` (exit {result.exit_code}: "
                f"{' | '.join(result.tail[-3:]) or 'no output'}); set BACKUP_WORKER_IMAGE to the sidecar's image")
    if found.get("protocol") != PROTOCOL:
        return f"image {image} speaks worker protocol {found.get('protocol')}, this sidecar {PROTOCOL}"
    missing = [tool for tool in ("zstd", "gzip") if not found.get(tool)]
    if not found.get("gnu_tar"):
        missing.insert(0, "GNU tar")
    if missing:
        return f"image {image} lacks {', '.join(missing)}"
    logger.info("worker image probed", extra={"image": image, "tar": found.get("tar"), "zstd": found.get("zstd")})
    return None
