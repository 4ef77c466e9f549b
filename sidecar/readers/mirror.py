"""The mirror reader: a `stop` or `pause` target's volume is quiesced only for what changed.

A staging mirror per volume lives on the backup volume (ArchiveRequest.mirror, a folder in
the state folder, 0700, never listed, rotated or copied off-site) and is kept between runs.
Phases (see base.py), each a worker container of the worker reader's site
(`python -m sidecar.worker mirror`, sidecar/mirror/worker.py):

- `prepare` (the container still runs): a pass brings the mirror up to date from the volume
  mounted read-only; then the worker of the stopped pass is started and waits for a go
  file, so its start-up (about 0.75 s) is not inside the stop window;
- `read` (stopped or paused): go; that worker copies only what changed since the first
  pass; the container may run again as soon as it says so (its removal is not waited for);
- `finish` (running again): a worker archives the mirror (the same `archive` command and
  layout as the plain path), then the checksum and the rename.

Plain stop instead (the worker reader's path, said in the log): when the backup volume has
no room for the mirror and the volume's archive besides (the first pass checks it), when the
first pass fails, and, reading the volume itself while the container is still down, when
the stopped pass fails. `choose` passes over this reader when the request has no mirror
(`backup.mirror=false`, the hot strategy) or no worker can run.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Callable
from pathlib import Path

from ..tarball.archive import ArchiveResult
from ..docker.engine import Engine
from ..core.errors import ArchiveError, EngineError
from ..core.model import WorkerSpec
from ..mirror.worker import GO, INFO, SPECIAL, TREE
from .base import ArchiveRequest, Progress, WorkerSettings
from .worker import CAPABILITIES, PYTHON, STORE_LABEL, TARGET_LABEL, VOLUME_ROOT, WorkerArchive, WorkerReader, _Plan

logger = logging.getLogger(__name__)

NAME = "mirror"
# Besides reading everything: make the mirror's copies with the volume's owners, modes,
# times and file capabilities (security.capability). No MKNOD: devices are placeholders
# and set-id bits are kept as data (special.json), never on disk (FSETID: set-gid folders).
MIRROR_CAPABILITIES = CAPABILITIES + ("CHOWN", "FOWNER", "FSETID", "SETFCAP")
READY_TIMEOUT = 120.0  # seconds to wait for the stopped pass's worker to be up before stopping anyway
WAIT_SLICE = 0.5  # seconds between cancellation checks while a pass runs


_REFUSALS_SAID: set[tuple[str, str, str]] = set()  # (target, volume, reason) warned about in this process
_ONCE_LOCK = threading.Lock()

MIRROR_FOLDER = "mirror"  # in the state folder: mirror/<backup_name>/<volume_name>/


def give_go(folder: Path, word: str) -> None:
    """The go file a held worker waits for (sidecar/mirror/worker.py, wait_for_go): `go`, or
    a word that calls its pass off."""
    tmp = folder / (GO + ".tmp")
    tmp.write_text(word + "\n")
    os.replace(tmp, folder / GO)  # whole or not at all: the worker reads it once it exists


def mirror_folder(state_dir: Path, backup_name: str, volume_name: str) -> Path:
    """Where the staging mirror of a target's volume is kept (the state folder is never
    listed, rotated or copied off-site)."""
    return state_dir / MIRROR_FOLDER / backup_name / volume_name


def mirror_bytes(folder: Path) -> int | None:
    """The mirror's disk use as its last pass measured it (None: no finished pass)."""
    try:
        return int(json.loads((folder / INFO).read_text())["bytes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def mirror_updated(folder: Path) -> float | None:
    """When the mirror's last pass ended (a Unix time; None: no finished pass)."""
    try:
        return float(json.loads((folder / INFO).read_text())["updated"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def kept_mirrors(state_dir: Path) -> list[tuple[str, str, Path]]:
    """(backup_name, volume_name, folder) of every staging mirror on the backup volume."""
    root = state_dir / MIRROR_FOLDER
    try:
        return sorted((t.name, v.name, v) for t in root.iterdir() if t.is_dir() for v in t.iterdir() if v.is_dir())
    except OSError:
        return []


class _Pass:
    """One mirror worker's output: ready, no-room, result or error."""

    def __init__(self, request: ArchiveRequest):
        self.request = request
        self.ready, self.done = threading.Event(), threading.Event()
        self.outcome: dict | None = None
        self.synced: dict | None = None
        self.no_room: dict | None = None
        self.refused: str | None = None  # the mirror cannot hold an exact copy: why
        self.error: str | None = None
        self.copied = 0
        self.failure: BaseException | None = None  # raised by run_worker in a thread

    def on_line(self, line: str) -> bool:
        try:
            record = json.loads(line)
        except ValueError:
            return False
        event = record.get("event") if isinstance(record, dict) else None
        if event == "progress":
            self.copied = int(record.get("tar_bytes") or 0)
        elif event == "ready":
            self.ready.set()
        elif event == "synced":  # the mirror is whole; its manifest is still being written
            self.synced = record
            self.done.set()
        elif event == "result":
            self.outcome = record
            self.done.set()
        elif event == "no-room":
            self.no_room = record
        elif event == "refused":
            self.refused = self.error = str(record.get("message"))
        elif event == "error":
            self.error = str(record.get("message"))
        else:
            return False
        return True


class MirrorArchive:
    """A PendingArchive through a staging mirror; `plain` is the worker reader's archive of
    the same request, which publishes (and reads the volume itself after a fallback)."""

    def __init__(self, engine: Engine, request: ArchiveRequest, plan: _Plan):
        assert request.mirror is not None
        self.engine, self.request, self.plan, self.folder = engine, request, plan, request.mirror
        self.plain = WorkerArchive(engine, request, plan)
        self.use_mirror = True
        self._stopped: _Pass | None = None
        self._thread: threading.Thread | None = None
        self._progress: Progress | None = None
        self._fields = {"target": request.target, "volume": request.mount.destination, "mirror": str(self.folder)}

    def __enter__(self) -> "MirrorArchive":
        self.plain.__enter__()
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.folder.parent.parent, 0o700)  # .sidecar/mirror: never world-readable
        return self

    def __exit__(self, *exc_info) -> None:
        self._end_waiter("abort")
        self.plain.__exit__(*exc_info)

    # --- while the container runs ------------------------------------------------------
    def prepare(self, progress: Progress | None = None) -> None:
        """The first pass, then the stopped pass's worker, started and waiting."""
        self._progress = progress
        first = _Pass(self.request)

        def on_line(line: str) -> bool:
            handled = first.on_line(line)
            if progress is not None and first.copied:
                progress(first.copied)  # raises BackupAborted on shutdown
            return handled

        try:
            result = self.engine.run_worker(self._spec(waits=False), on_line)
        except EngineError as err:  # no worker could start: the plain path says so again if it fails too
            return self._fall_back(f"the mirror pass could not start: {err}")
        if first.refused is not None:
            return self._fall_back(f"the staging mirror cannot hold an exact copy: {first.refused}", once=True)
        if first.no_room is not None:
            return self._fall_back("the backup volume has no room for the staging mirror and the archive", **{
                k: first.no_room.get(k) for k in ("needed", "free", "volume", "to_copy")})
        if not result.ok or first.outcome is None:
            return self._fall_back(f"the mirror pass failed (exit {result.exit_code}): "
                                   f"{first.error or ' | '.join(result.tail[-3:]) or 'no output'}")
        logger.info("staging mirror brought up to date", extra={**self._fields, **_counts(first.outcome)})
        self._start_waiter()

    def _fall_back(self, reason: str, once: bool = False, **details) -> None:
        """`once`: a lasting reason (the backup filesystem), a warning the first time in
        this process for this volume, then at debug level."""
        self.use_mirror = False
        key = (self.request.target, self.request.mount.destination, reason)
        with _ONCE_LOCK:
            repeated = once and key in _REFUSALS_SAID
            _REFUSALS_SAID.add(key)
        logger.log(logging.DEBUG if repeated else logging.WARNING,"no staging mirror: plain stop for this volume (the container stays down while it is read)",
                       extra={**self._fields, "reason": reason, **details})

    def _start_waiter(self) -> None:
        (self.folder / GO).unlink(missing_ok=True)
        self._stopped = waiter = _Pass(self.request)
        spec = self._spec(waits=True)

        def run() -> None:
            try:
                result = self.engine.run_worker(spec, waiter.on_line)
                if not result.ok and waiter.error is None:
                    waiter.error = f"exit {result.exit_code}: {' | '.join(result.tail[-3:]) or 'no output'}"
            except BaseException as exc:  # noqa: BLE001 - handed to the thread that waits for it
                waiter.failure = exc
            finally:
                waiter.ready.set()
                waiter.done.set()

        self._thread = threading.Thread(target=run, name=f"mirror-{self.request.target}", daemon=True)
        self._thread.start()
        if not waiter.ready.wait(READY_TIMEOUT):
            logger.warning("the stopped pass's worker is not up yet; stopping anyway", extra=self._fields)

    # --- while the container is down -----------------------------------------------------------
    def read(self, progress: Progress | None = None) -> int:
        if not self.use_mirror:
            return self.plain.read(progress)
        waiter = self._stopped
        assert waiter is not None, "prepare() comes before read()"
        self._signal("go")
        logger.debug("go given to the stopped pass", extra=self._fields)
        while not waiter.done.wait(WAIT_SLICE):
            if progress is not None:
                progress(waiter.copied)
        synced = waiter.synced or waiter.outcome
        if synced is None:
            reason = waiter.error or (str(waiter.failure) if waiter.failure else "no result")
            self._join()
            self._fall_back(f"the stopped mirror pass failed ({reason}); reading the volume itself")
            return self.plain.read(progress)
        logger.info("stopped pass done", extra={**self._fields, **_counts(synced)})
        return int(synced["copied_bytes"])

    # --- running again --------------------------------------------------------------------------
    def finish(self) -> ArchiveResult:
        """Archive the mirror (when it was used), then publish. Raises ArchiveError, OSError."""
        self._join()
        if self.use_mirror:
            waiter = self._stopped
            if waiter is None or waiter.outcome is None:  # synced, then failed writing its manifest
                detail = waiter.error if waiter is not None else "no stopped pass"
                raise ArchiveError(f"the stopped mirror pass of {self.request.mount.destination} failed: {detail}")
            logger.info("staging mirror caught up with the stopped volume",
                        extra={**self._fields, **_counts(waiter.outcome)})
            self.plain.read(self._progress, root=self.plan.store.inside(self.folder / TREE), mounts=(),
                            special=self.plan.store.inside(self.folder / SPECIAL))
        return self.plain.finish()

    def abort(self) -> None:
        self._end_waiter("abort")
        self.plain.abort()

    # --- helpers ---------------------------------------------------------------------------------
    def _spec(self, waits: bool) -> WorkerSpec:
        plan, request = self.plan, self.request
        command = [*PYTHON, "mirror", "--root", VOLUME_ROOT, "--mirror", plan.store.inside(self.folder),
                   "--progress-interval=1", *(f"--exclude={pattern}" for pattern in request.exclude)]
        settings = request.worker or WorkerSettings(self.folder)
        # The stopped pass waits at most as long as a worker may run (a long graceful stop included).
        command += ["--go", "--no-room-check", f"--wait-timeout={settings.timeout:g}"] if waits else []
        return WorkerSpec(plan.image, tuple(command), "mirror", plan.mounts + (plan.store.mount,),
                          labels={STORE_LABEL: plan.store.key, TARGET_LABEL: request.target}, user="0",
                          capabilities=MIRROR_CAPABILITIES, timeout=settings.timeout)

    def _signal(self, word: str) -> None:
        give_go(self.folder, word)

    def _end_waiter(self, word: str) -> None:
        if self._thread is not None and self._thread.is_alive() and self._stopped is not None \
                and not self._stopped.done.is_set():
            try:
                self._signal(word)
            except OSError as exc:
                logger.warning("could not call off the stopped pass's worker", extra={**self._fields,
                                                                                     "error": str(exc)})
        self._join()

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            (self.folder / GO).unlink(missing_ok=True)


def _counts(outcome: dict) -> dict:
    return {k: outcome.get(k) for k in ("entries", "copied", "copied_bytes", "removed", "mirror_bytes", "seconds")}


class MirrorReader:
    name = NAME

    def __init__(self, worker: Callable[[], WorkerReader]):
        self._worker = worker  # the registered worker reader: its site and probes, the same checks
        self._reported: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def usable(self, engine: Engine, request: ArchiveRequest) -> bool:
        if request.mirror is None:
            return False
        plan, reason = self._worker().plan(engine, request)
        if plan is None:
            self._report_once(request, reason)
        return plan is not None

    def open(self, engine: Engine, request: ArchiveRequest) -> MirrorArchive:
        plan, reason = self._worker().plan(engine, request)
        if plan is None or request.mirror is None:
            raise ArchiveError(f"no staging mirror for {request.mount.destination}: {reason or 'none asked for'}")
        return MirrorArchive(engine, request, plan)

    def _report_once(self, request: ArchiveRequest, reason: str) -> None:
        key = (request.target or request.container_id, reason)
        with self._lock:
            first = key not in self._reported
            self._reported.add(key)
        if first:
            logger.info("no staging mirror: plain stop (no worker container can run)",
                        extra={"target": request.target, "volume": request.mount.destination, "reason": reason})

