"""The mirror reader: a `stop` or `pause` target's volume is quiesced only for what changed.

A staging mirror per volume lives on the backup volume (ArchiveRequest.mirror, a folder in
the state folder, 0700, never listed, rotated or copied off-site) and is kept between runs.
Phases (see base.py), all in one worker container of the worker reader's site
(`python -m sidecar.worker mirror --hold`, sidecar/mirror/worker.py and worker/cli.py),
started once, so no container's start-up (about 0.75 s each) is inside the stop window:

- `prepare` (the container still runs): the worker's first pass brings the mirror up to
  date from the volume mounted read-only; then it says `ready` and waits on its stdin;
- `read` (stopped or paused): `go` on its stdin; it copies only what changed since the
  first pass; the container may run again as soon as it says so;
- `read`, once the stopped pass is done: `archive` on its stdin; it archives the mirror (the
  same `archive` code and layout as the plain path) into the partial file while the
  container starts again (the archive reads only the mirror);
- `finish` (running again): waits for the archive, then the checksum and the rename.

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
from ..core.model import WorkerLink, WorkerResult, WorkerSpec
from ..mirror.worker import GO, INFO
from .base import ArchiveRequest, Progress, WorkerSettings
from .worker import CAPABILITIES, PYTHON, STORE_LABEL, TARGET_LABEL, VOLUME_ROOT, WorkerArchive, WorkerReader, _Plan
from ..worker import record_of

logger = logging.getLogger(__name__)

NAME = "mirror"
# Besides reading everything: make the mirror's copies with the volume's owners, modes,
# times and file capabilities (security.capability). No MKNOD: devices are placeholders
# and set-id bits are kept as data (special.json), never on disk (FSETID: set-gid folders).
MIRROR_CAPABILITIES = CAPABILITIES + ("CHOWN", "FOWNER", "FSETID", "SETFCAP")
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
        record = record_of(line)
        event = record.get("event")
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
            self.done.set()
        elif event == "error":  # the pass is over (its worker ends)
            self.error = str(record.get("message"))
            self.done.set()
        else:
            return False
        return True


class _Held:
    """The held worker's output, routed by stage: its first pass, its stopped pass (each a
    _Pass) and its archive (the plain archive's own handler); and the worker's end."""

    def __init__(self, request: ArchiveRequest, archive: WorkerArchive):
        self.first, self.stopped, self.archive = _Pass(request), _Pass(request), archive
        self.archive_bytes = 0
        self.link: WorkerLink | None = None
        self.result: WorkerResult | None = None
        self.failure: BaseException | None = None  # raised by run_worker in its thread
        self.ended = threading.Event()

    def on_line(self, line: str) -> bool:
        record = record_of(line)
        stage = record.get("stage")
        if stage == "first":
            return self.first.on_line(line)
        if stage == "stopped":
            return self.stopped.on_line(line)
        if stage == "archive":
            if record.get("event") == "progress":
                self.archive_bytes = int(record.get("tar_bytes") or 0)
                return True
            return self.archive.on_line(line, None)
        return False

    def end(self) -> None:
        for event in (self.first.ready, self.first.done, self.stopped.ready, self.stopped.done, self.ended):
            event.set()

    def until(self, event: threading.Event, progress: Progress | None, copied: Callable[[], int]) -> None:
        """Until `event` (or the worker's end), telling `progress` (which raises BackupAborted
        on shutdown) what was copied so far."""
        while not event.wait(WAIT_SLICE) and not self.ended.is_set():
            if progress is not None:
                progress(copied())


class MirrorArchive:
    """A PendingArchive through a staging mirror; `plain` is the worker reader's archive of
    the same request, which publishes (and reads the volume itself after a fallback).

    One worker container does it all (`mirror --hold`, PROTOCOL 9): `prepare` starts it
    and waits for its first pass, `read` says `go` on its stdin and waits for its stopped
    pass and says `archive` (the worker archives while the container starts), `finish` waits for it. A worker exits when
    its stdin ends (this process gone) or on any other word (`abort`)."""

    def __init__(self, engine: Engine, request: ArchiveRequest, plan: _Plan):
        assert request.mirror is not None
        self.engine, self.request, self.plan, self.folder = engine, request, plan, request.mirror
        self.plain = WorkerArchive(engine, request, plan)
        self.use_mirror = True
        self._held: _Held | None = None
        self._thread: threading.Thread | None = None
        self._progress: Progress | None = None
        self._keys: Path | None = None
        self._archive_said = False
        self._timeout = 0.0
        self._fields = {"target": request.target, "volume": request.mount.destination, "mirror": str(self.folder)}

    def __enter__(self) -> "MirrorArchive":
        self.plain.__enter__()
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.folder.parent.parent, 0o700)  # .sidecar/mirror: never world-readable
        return self

    def __exit__(self, *exc_info) -> None:
        self._end_worker()
        self.plain.__exit__(*exc_info)

    # --- while the container runs ------------------------------------------------------
    def prepare(self, progress: Progress | None = None) -> None:
        """The worker started and its first pass done; it waits for `go`."""
        self._progress = progress
        (self.folder / GO).unlink(missing_ok=True)  # left by a worker of an earlier protocol
        self._held = held = _Held(self.request, self.plain)
        self._keys = self.plain.keys_path()
        spec = self._spec(self._keys)
        self._timeout = spec.timeout

        def started(link: WorkerLink) -> None:
            held.link = link

        def run() -> None:
            try:
                held.result = self.engine.run_worker(spec, held.on_line, on_start=started)
            except BaseException as exc:  # noqa: BLE001 - handed to the thread that waits for it
                held.failure = exc
            finally:
                held.end()

        self._thread = threading.Thread(target=run, name=f"mirror-{self.request.target}", daemon=True)
        self._thread.start()
        held.until(held.stopped.ready, progress, lambda: held.first.copied)
        first = held.first
        if first.outcome is not None and not held.ended.is_set():
            logger.info("staging mirror brought up to date", extra={**self._fields, **_counts(first.outcome)})
            return
        self._join()
        if isinstance(held.failure, EngineError):  # no worker could start: the plain path says so again if it fails too
            return self._fall_back(f"the mirror pass could not start: {held.failure}")
        if held.failure is not None:
            raise held.failure
        if first.refused is not None:
            return self._fall_back(f"the staging mirror cannot hold an exact copy: {first.refused}", once=True)
        if first.no_room is not None:
            return self._fall_back("the backup volume has no room for the staging mirror and the archive", **{
                k: first.no_room.get(k) for k in ("needed", "free", "volume", "to_copy")})
        result = held.result
        code = result.exit_code if result is not None else None
        tail = " | ".join(result.tail[-3:]) if result is not None else ""
        return self._fall_back(f"the mirror pass failed (exit {code}): {first.error or tail or 'no output'}")

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

    # --- while the container is down -----------------------------------------------------------
    def read(self, progress: Progress | None = None) -> int:
        if not self.use_mirror:
            return self.plain.read(progress)
        held = self._held
        assert held is not None, "prepare() comes before read()"
        stopped = held.stopped
        sent = self._send("go")
        logger.debug("go given to the stopped pass", extra=self._fields)
        if sent:
            held.until(stopped.done, progress, lambda: stopped.copied)
        synced = stopped.synced or stopped.outcome
        if synced is None:
            reason = stopped.error or (str(held.failure) if held.failure else None) or \
                (f"exit {held.result.exit_code}: {' | '.join(held.result.tail[-3:]) or 'no output'}"
                 if held.result is not None else "no result")
            self._end_worker()
            self._fall_back(f"the stopped mirror pass failed ({reason}); reading the volume itself")
            return self.plain.read(progress)
        logger.info("stopped pass done", extra={**self._fields, **_counts(synced)})
        self._archive_now()  # while the container starts again: the archive reads the mirror only
        return int(synced["copied_bytes"])

    def _archive_now(self) -> None:
        """`archive` said once the mirror is whole (the worker starts it when the stopped pass's
        manifest is on disk), with the encryption settings written first."""
        if self._archive_said:
            return
        self._archive_said = True
        if self._keys is not None:
            self.plain.write_keys(self._keys)
        self._send("archive")

    # --- running again --------------------------------------------------------------------------
    def finish(self) -> ArchiveResult:
        """Archive the mirror (when it was used), then publish. Raises ArchiveError, OSError."""
        if self.use_mirror:
            held = self._held
            assert held is not None
            try:
                self._archive_now()
                held.until(held.ended, self._progress, lambda: held.archive_bytes)
            finally:
                self._join()
                if self._keys is not None:
                    self._keys.unlink(missing_ok=True)
            if held.failure is not None and not isinstance(held.failure, EngineError):
                raise held.failure
            if held.stopped.outcome is None:  # synced, then failed writing its manifest
                detail = held.stopped.error or (str(held.failure) if held.failure else "no result")
                raise ArchiveError(f"the stopped mirror pass of {self.request.mount.destination} failed: {detail}")
            logger.info("staging mirror caught up with the stopped volume",
                        extra={**self._fields, **_counts(held.stopped.outcome)})
            if held.result is None:
                raise ArchiveError(f"the mirror's archive of {self.request.mount.destination} failed: {held.failure}")
            self.plain.archived(held.result, self._timeout)
        return self.plain.finish()

    def abort(self) -> None:
        self._end_worker()
        self.plain.abort()

    # --- helpers ---------------------------------------------------------------------------------
    def _spec(self, keys: Path | None) -> WorkerSpec:
        plan, request = self.plan, self.request
        settings = request.worker or WorkerSettings(self.folder)
        command = [*PYTHON, "mirror", "--root", VOLUME_ROOT, "--mirror", plan.store.inside(self.folder),
                   "--progress-interval=1", *(f"--exclude={pattern}" for pattern in request.exclude),
                   "--hold", f"--wait-timeout={settings.timeout:g}",
                   "--output", plan.store.inside(self.plain.partial_path),
                   f"--compression={request.compression.value}"]
        command += [f"--keys-file={plan.store.inside(keys)}"] if keys is not None else []
        # BACKUP_WORKER_TIMEOUT bounds the whole worker, both waits (a long graceful stop) included.
        return WorkerSpec(plan.image, tuple(command), "mirror", plan.mounts + (plan.store.mount,),
                          labels={STORE_LABEL: plan.store.key, TARGET_LABEL: request.target}, user="0",
                          capabilities=MIRROR_CAPABILITIES, timeout=settings.timeout)

    def _send(self, word: str) -> bool:
        """A word on the worker's stdin; False when it cannot be said (the worker is gone)."""
        held = self._held
        if held is None or held.link is None or held.ended.is_set():
            return False
        try:
            held.link.send((word + "\n").encode())
            return True
        except (EngineError, OSError) as exc:
            logger.warning("could not talk to the mirror's worker", extra={**self._fields, "word": word,
                                                                            "error": str(exc)})
            return False

    def _end_worker(self) -> None:
        """Call the worker off (`abort`; removed when it is busy) and wait for its end."""
        held = self._held
        if self._thread is not None and self._thread.is_alive() and held is not None:
            self._send("abort")
            if not held.ended.wait(WAIT_SLICE) and held.link is not None:
                self.engine.remove_worker(held.link.name)
        self._join()

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None


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

