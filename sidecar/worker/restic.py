"""The restic worker: `restic` run next to the data (`python -m sidecar.worker restic
--repo PATH -- ARGS...`), its JSON lines passed through as they come, its stderr lines as
`{"event": "restic-stderr"}` records, and an `{"event": "exit"}` record last.

restic runs as root in the worker (to read every file of the volume, or to restore owners),
so the files it adds to a repository on the backup volume would be root's: afterwards every
entry of the repository is given the owner of the repository's folder (the sidecar's user),
which keeps reading it without root. Its temporary pack files go to a folder of their own
on the backup volume (the worker's root filesystem is read-only), removed at the end.

With `--go FOLDER` (a `stop`/`pause` target's backup) restic is started before the stop and
held at a gate: restic 0.14 opens the repository (key derivation), takes its lock and then
reads its `--exclude-file`s before it loads the index and reads the volume, so an exclude
file that is a FIFO holds it there. Once restic has opened the FIFO the worker says `ready`
and waits for the sidecar's go file (sidecar/mirror/worker.py, wait_for_go); `go` closes the
FIFO's writing end (no patterns: the real excludes are arguments) and restic goes on. Any
other word, or no go in time: SIGINT, on which restic removes its lock before it exits.

With `--staged` (a restore, started before anything stops: its container's and Python's
start-up run beside the sidecar's choice of the snapshot and the app's stop) the worker
says `{"event": "staged", "protocol": N}` and waits for the sidecar's line on stdin
(sidecar/worker/__init__.py, COMMANDS): `go SNAPSHOT_ID` appends that id to restic's
arguments and goes on; `quit` (or anything else, or no line in time) ends it having
written nothing. The protocol in that record is the check the sidecar's image probe
would make, so a restore starts no probe container.

With `--empty FOLDER` (a whole-volume restore) the worker first empties the folder, the
volume it sees read-write, and says how many entries it removed (`{"event": "emptied"}`);
restic does not run when that fails. Emptying is a rename of each top-level entry into a
folder of its own in the volume (`.sidecar-emptying-ID`, a name no snapshot of ours holds),
whose removal runs while restic restores (restic writes only the snapshot's paths); the
worker ends once both are done, the volume's root given back the times restic set. A
killed worker's leftover folder goes with the next `--force` restore's emptying (the
container stays stopped meanwhile, journalled). No helper container is started for it,
and the worker sees nothing but that volume and the backup volume (read-only).
"""

from __future__ import annotations

import errno
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from ..core.errors import ArchiveError
from ..mirror.worker import wait_for_go
from . import COMMANDS, PROTOCOL

TMP_FOLDER = ".sidecar/restic-tmp"  # under the backup volume's root
GATE = "gate"  # the FIFO in the run's temporary folder
GATE_POLL = 0.002  # seconds between looks for restic at the gate (before the stop: not in the window)
EXIT_QUIT = 3  # --staged: the sidecar said quit (or nothing); nothing was written
TRASH_PREFIX = ".sidecar-emptying-"  # a restore's old volume contents on their way out, inside the volume
SNAPSHOT_ID = re.compile(r"[0-9a-f]{8,64}")  # what a `go` line may name


def run_restic(repo: Path | None, store_root: Path | None, args: list[str], emit: Callable[[dict], None],
               go: Path | None = None, wait_timeout: float = 3600.0, empty: Path | None = None,
               staged: bool = False, commands: "queue.Queue[str]" = COMMANDS) -> int:
    """Run `restic ARGS` (the caller gives `-r`, `--password-file` ...); returns its exit code.
    `store_root`, `repo`: a backup volume mounted read-write and the repository restic
    writes to (None: read-only, a restore: no temporary folder, no owners to mend). `go`: a
    `backup` held at the gate until the go file in that folder says so (needs `store_root`).
    `empty`: a folder emptied first (a restore's volume); restic does not run when that fails.
    `staged`: wait for the sidecar's `go SNAPSHOT_ID` on `commands` first (see above).
    The first record says the worker's protocol (the sidecar probes no image for restic)."""
    emit({"event": "restic-worker", "protocol": PROTOCOL})
    if staged:
        snapshot = wait_for_snapshot(commands, wait_timeout, emit)
        if snapshot is None:
            emit({"event": "exit", "code": EXIT_QUIT})
            return EXIT_QUIT
        args = [*args, snapshot]
    # Named for this worker's host name (the sidecar gives each restic worker one, and a label
    # saying it): recovery removes the folder of a killed worker (formats.restic.remove_dead_worker_tmp).
    tmp = store_root / TMP_FOLDER / f"{socket.gethostname()}.{uuid.uuid4().hex}" if store_root is not None else None
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    if tmp is not None:
        env["TMPDIR"] = str(tmp)
    code = -1
    trash: _Trash | None = None
    if empty is not None:
        try:
            trash = _Trash(empty)
            emit({"event": "emptied", "entries": trash.fill()})
        except OSError as exc:
            emit({"event": "error", "message": f"emptying {empty} failed: {exc}"})
            emit({"event": "exit", "code": 1})
            return 1
        trash.start()  # removed while restic restores
    try:
        if tmp is not None:
            tmp.mkdir(parents=True, mode=0o700)
        gate = _make_gate(tmp) if go is not None and tmp is not None else None
        if gate is not None:
            args = [*args, "--exclude-file", str(gate)]
        elif go is not None:  # no FIFO on this backup volume: restic starts after the go
            try:
                wait_for_go(go, wait_timeout, emit)
            except ArchiveError as exc:
                emit({"event": "error", "message": str(exc)})
                return code
        began = time.monotonic()
        proc = subprocess.Popen(["restic", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        errors = threading.Thread(target=_stderr, args=(proc, emit), daemon=True)
        errors.start()
        output = threading.Thread(target=_stdout, args=(proc,), daemon=True)  # drained while restic is held too
        output.start()
        if gate is not None and go is not None:
            _hold(proc, gate, go, wait_timeout, emit)
        output.join()
        code = proc.wait()
        errors.join()
        if trash is not None:
            emit({"event": "restic-done", "code": code, "seconds": round(time.monotonic() - began, 3)})
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if repo is not None and tmp is not None and repo.is_dir():
            chown_like(repo)
        if trash is not None:
            waited = time.monotonic()
            failure = trash.finish()
            if failure is not None:
                emit({"event": "error", "message": f"removing the volume's old contents failed: {failure}"})
                code = code or 1
            else:
                emit({"event": "removed", "seconds": round(time.monotonic() - waited, 3)})
    emit({"event": "exit", "code": code})
    return code


class _Trash:
    """A folder's old contents moved aside into a folder of its own inside it, removed in a
    thread (`start`, `finish`)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / f"{TRASH_PREFIX}{uuid.uuid4().hex}"
        self._thread: threading.Thread | None = None
        self._failure: OSError | None = None

    def fill(self) -> int:
        """Move every entry of the folder into the trash; how many top-level entries went."""
        moved = 0
        with os.scandir(self.folder) as entries:
            names = [entry.name for entry in entries]
        os.mkdir(self.path, 0o700)
        for name in names:
            os.rename(self.folder / name, self.path / name)
            moved += 1
        return moved

    def start(self) -> None:
        self._thread = threading.Thread(target=self._remove, name="emptying", daemon=True)
        self._thread.start()

    def _remove(self) -> None:
        try:
            empty_folder(self.path)
        except OSError as exc:
            self._failure = exc

    def finish(self) -> OSError | None:
        """Wait for the removal, remove the trash folder itself and give the volume's root
        back its times (restic set them last; the removal changed its mtime)."""
        if self._thread is not None:
            self._thread.join()
        if self._failure is not None:
            return self._failure
        try:
            st = os.stat(self.folder)
            os.rmdir(self.path)
            os.utime(self.folder, ns=(st.st_atime_ns, st.st_mtime_ns))
        except OSError as exc:
            return exc
        return None


def wait_for_snapshot(commands: "queue.Queue[str]", timeout: float, emit: Callable[[dict], None]) -> str | None:
    """Say `staged` and wait for the sidecar's line: the snapshot id of `go ID`, else None
    (`quit`, a line that names no snapshot id, no line within `timeout`)."""
    emit({"event": "staged", "protocol": PROTOCOL})
    try:
        line = commands.get(timeout=timeout)
    except queue.Empty:
        emit({"event": "error", "message": f"no go from the sidecar within {timeout:g} s"})
        return None
    word, _, snapshot = line.partition(" ")
    if word != "go" or not SNAPSHOT_ID.fullmatch(snapshot):
        if word != "quit":
            emit({"event": "error", "message": f"the sidecar's line {line[:80]!r} is neither `go ID` nor `quit`"})
        return None
    return snapshot


def empty_folder(folder: Path) -> int:
    """Remove every entry below `folder` (dot files too; symlinks themselves, never what they
    point at), keeping `folder`; returns how many top-level entries went."""
    removed = 0
    with os.scandir(folder) as entries:
        for entry in list(entries):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed += 1
    return removed


def _make_gate(tmp: Path) -> Path | None:
    """The FIFO restic is held at; None when the backup volume's filesystem has none (CIFS)."""
    try:
        os.mkfifo(tmp / GATE, 0o600)
    except OSError:
        return None
    return tmp / GATE


def open_gate(proc: subprocess.Popen, gate: Path) -> int | None:
    """The FIFO's writing end, once `proc` has opened it for reading (it waits there);
    None when `proc` ended first (its exit code and output say why)."""
    while True:
        try:
            return os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
        if proc.poll() is not None:
            return None
        time.sleep(GATE_POLL)


def _hold(proc: subprocess.Popen, gate: Path, go: Path, timeout: float, emit: Callable[[dict], None]) -> None:
    """restic waits at the gate until the go file says `go`; otherwise it is interrupted."""
    fd = open_gate(proc, gate)
    if fd is None:
        return
    try:
        wait_for_go(go, timeout, emit)  # says `ready` first
    except ArchiveError as exc:
        emit({"event": "error", "message": str(exc)})
        proc.send_signal(signal.SIGINT)  # restic removes its lock, saves nothing, exits
        proc.wait()  # before the gate opens: an interrupted restic never reads the volume
    finally:
        os.close(fd)  # end of the (empty) exclude file: restic goes on


def _stdout(proc: subprocess.Popen) -> None:
    for raw in proc.stdout:
        sys.stdout.write(raw.decode("utf-8", "replace"))
        sys.stdout.flush()


def _stderr(proc: subprocess.Popen, emit: Callable[[dict], None]) -> None:
    for raw in proc.stderr:
        emit({"event": "restic-stderr", "line": raw.decode("utf-8", "replace").rstrip("\n")})


def chown_like(folder: Path) -> int:
    """Give every entry below `folder` the folder's owner; returns how many changed."""
    if os.geteuid() != 0:
        return 0
    top = os.stat(folder)
    changed = 0
    for path, dirs, files in os.walk(folder):
        for name in dirs + files:
            full = os.path.join(path, name)
            st = os.lstat(full)
            if (st.st_uid, st.st_gid) != (top.st_uid, top.st_gid):
                os.lchown(full, top.st_uid, top.st_gid)
                changed += 1
    return changed
