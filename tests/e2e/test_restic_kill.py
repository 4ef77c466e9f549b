"""A sidecar SIGKILLed in each phase of a restic run (backup, copy, forget, prune), with its
restic children, as the death of its container would take them: the repositories pass
`restic check`, the journal puts the stopped container back, and the next run clears the
stale lock (of the sidecar's own restic, or of its killed worker's, which restic alone would
keep for 30 minutes) and succeeds. The kill comes while restic holds its lock: the worker's
restic holds it from before the stop (it waits at its gate), the others are frozen by a
stand-in `restic` on PATH the moment their lock is in place (restic_freeze.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.docker.engine import WORKER_LABEL
from sidecar.readers.worker import STORE_LABEL, store_mount

from .support import REPO, wait_for

PASSWORD = "e2e-restic-kill-Pw-5"
DATA = "dd if=/dev/urandom of=blob bs=1M count=4 2>/dev/null; echo one > notes.txt"

pytestmark = pytest.mark.skipif(subprocess.run(["sh", "-c", "command -v restic"], capture_output=True).returncode,
                                reason="restic is not installed (scripts/test installs it)")


def _restic(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["restic", "-r", str(repo), "--no-cache", *args], capture_output=True, text=True,
                          env={**os.environ, "RESTIC_PASSWORD": PASSWORD})


def _locks(repo: Path) -> list[str]:
    folder = repo / "locks"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# About 35 to 55 s each on the loaded 2-core machine: the backup phase (the held worker's lock,
# the journal) runs by default, the sidecar's own restic commands in the slow group.
@pytest.mark.parametrize("phase", ["backup", *(pytest.param(p, marks=pytest.mark.slow) for p in ("forget", "copy",
                                                                                                  "prune"))])
@pytest.mark.slow  # every phase is in the kill group; the actions tier covers recovery of a killed worker's lock
def test_a_sidecar_killed_in_each_phase_leaves_a_sound_repository_and_the_next_run_clears_its_lock(
        lab, worker_image, tmp_path, phase):
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    disk = tmp_path / "disk"
    disk.mkdir()
    env = {"BACKUP_WORKER_IMAGE": worker_image, "BACKUP_FORMAT": "restic", "RESTIC_PASSWORD_FILE": str(secret),
           "BACKUP_DESTINATIONS": str(disk)}
    volume = lab.volume("data")
    lab.populate(volume, DATA)
    app = lab.workload("app", {"backup.enable": "true", "backup.strategy": "stop",
                               "backup.keep": "daily=1,weekly=0,monthly=0"}, {volume: "/data"})
    local, copy = lab.backup_dir / "restic", disk / "restic"
    first = lab.cli("backup", "app", **env)
    assert first.returncode == 0, first.stderr
    lab.populate(volume, "echo two > notes.txt")

    # The run to kill: the stand-in restic freezes the phase's restic once it holds its lock.
    stand_in = tmp_path / "bin"
    stand_in.mkdir()
    (stand_in / "restic").write_text(f"#!/bin/sh\nexec {sys.executable} {REPO / 'tests/e2e/restic_freeze.py'} \"$@\"\n")
    (stand_in / "restic").chmod(0o755)
    marker = tmp_path / "frozen"
    freeze = {"PATH": f"{stand_in}:{os.environ['PATH']}", "FREEZE_REAL": _which("restic"),
              "FREEZE_PHASE": phase, "FREEZE_LOCKS": str((copy if phase == "copy" else local) / "locks"),
              "FREEZE_MARKER": str(marker)}
    args = ("prune",) if phase == "prune" else ("backup", "app")
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", *args], cwd=REPO, env=lab.env(**env, **freeze),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        if phase == "backup":  # the worker's restic took its lock before the stop, and waits at its gate
            wait_for(lambda: lab.state(app) == "exited" or proc.poll() is not None, timeout=60, interval=0.005,
                     what="the container to be stopped")
        else:
            wait_for(lambda: marker.exists() or proc.poll() is not None, timeout=60, interval=0.005,
                     what=f"restic {phase} to hold its lock")
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
        held = _locks(copy if phase == "copy" else local)
        os.killpg(proc.pid, signal.SIGKILL)  # the sidecar and its restic children, as its container's death
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        proc.stderr.close()
    assert held, "no lock was held at the kill"
    if phase == "backup":
        assert lab.state(app) == "exited"  # nobody put it back: the journal names it
        mine = {"label": [f"{WORKER_LABEL}=restic-backup", f"{STORE_LABEL}={store_mount(lab.backup_dir, None).key}"]}
        wait_for(lambda: not lab.client.containers.list(all=True, filters=mine, sparse=True), timeout=30,
                 what="the worker to end with its sidecar")
        assert set(_locks(local)) >= set(held)  # its restic died holding its lock
    for repo in (local, copy) if copy.exists() else (local,):
        checked = _restic(repo, "check", "--no-lock")  # the stale lock is still there: check beside it
        assert checked.returncode == 0, checked.stdout + checked.stderr

    # The next run: the container is put back first, the stale lock goes, the run succeeds.
    again = lab.cli(*args, **env)
    assert again.returncode == 0, again.stderr
    assert lab.state(app) == "running"
    assert json.loads((lab.backup_dir / ".sidecar" / "journal.json").read_text())["interrupted"] == []
    for repo in (local, copy) if copy.exists() else (local,):
        assert _locks(repo) == [], (repo, again.stderr[-3000:])
        checked = _restic(repo, "check")
        assert checked.returncode == 0, checked.stdout + checked.stderr


def _which(name: str) -> str:
    found = subprocess.run(["sh", "-c", f"command -v {name}"], capture_output=True, text=True).stdout.strip()
    assert found, f"{name} is not installed"
    return found
