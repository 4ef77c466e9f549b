"""The restic worker: `restic` run next to the data (`python -m sidecar.worker restic
--repo PATH -- ARGS...`), its JSON lines passed through as they come, its stderr lines as
`{"event": "restic-stderr"}` records, and an `{"event": "exit"}` record last.

restic runs as root in the worker (to read every file of the volume, or to restore owners),
so the files it adds to a repository on the backup volume would be root's: afterwards every
entry of the repository is given the owner of the repository's folder (the sidecar's user),
which keeps reading it without root. Its temporary pack files go to a folder of their own
on the backup volume (the worker's root filesystem is read-only), removed at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Callable

TMP_FOLDER = ".sidecar/restic-tmp"  # under the backup volume's root


def run_restic(repo: Path | None, store_root: Path | None, args: list[str], emit: Callable[[dict], None]) -> int:
    """Run `restic ARGS` (the caller gives `-r`, `--password-file` ...); returns its exit code.
    `store_root`, `repo`: a backup volume mounted read-write and the repository restic
    writes to (None: read-only, a restore: no temporary folder, no owners to mend)."""
    tmp = store_root / TMP_FOLDER / uuid.uuid4().hex if store_root is not None else None
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    if tmp is not None:
        env["TMPDIR"] = str(tmp)
    code = -1
    try:
        if tmp is not None:
            tmp.mkdir(parents=True, mode=0o700)
        proc = subprocess.Popen(["restic", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        errors = threading.Thread(target=_stderr, args=(proc, emit), daemon=True)
        errors.start()
        for raw in proc.stdout:
            sys.stdout.write(raw.decode("utf-8", "replace"))
            sys.stdout.flush()
        code = proc.wait()
        errors.join()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if repo is not None and tmp is not None and repo.is_dir():
            chown_like(repo)
    emit({"event": "exit", "code": code})
    return code


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
