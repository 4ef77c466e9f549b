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

With `--empty FOLDER` (a whole-volume restore) the worker first empties the folder, the
volume it sees read-write, and says how many entries it removed (`{"event": "emptied"}`);
restic does not run when that fails. No helper container is started for it, and the
worker sees nothing but that volume and the backup volume (read-only).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from ..core.errors import ArchiveError
from ..mirror.worker import wait_for_go

TMP_FOLDER = ".sidecar/restic-tmp"  # under the backup volume's root
GATE = "gate"  # the FIFO in the run's temporary folder
GATE_POLL = 0.002  # seconds between looks for restic at the gate (before the stop: not in the window)


def run_restic(repo: Path | None, store_root: Path | None, args: list[str], emit: Callable[[dict], None],
               go: Path | None = None, wait_timeout: float = 3600.0, empty: Path | None = None) -> int:
    """Run `restic ARGS` (the caller gives `-r`, `--password-file` ...); returns its exit code.
    `store_root`, `repo`: a backup volume mounted read-write and the repository restic
    writes to (None: read-only, a restore: no temporary folder, no owners to mend). `go`: a
    `backup` held at the gate until the go file in that folder says so (needs `store_root`).
    `empty`: a folder emptied first (a restore's volume); restic does not run when that fails."""
    tmp = store_root / TMP_FOLDER / uuid.uuid4().hex if store_root is not None else None
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    if tmp is not None:
        env["TMPDIR"] = str(tmp)
    code = -1
    if empty is not None:
        try:
            emit({"event": "emptied", "entries": empty_folder(empty)})
        except OSError as exc:
            emit({"event": "error", "message": f"emptying {empty} failed: {exc}"})
            emit({"event": "exit", "code": 1})
            return 1
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
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if repo is not None and tmp is not None and repo.is_dir():
            chown_like(repo)
    emit({"event": "exit", "code": code})
    return code


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
