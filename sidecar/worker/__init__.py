"""Code that runs inside a short-lived worker container started by the sidecar from its own
image (see Engine.run_worker): `python -m sidecar.worker COMMAND ...`.

Commands: `archive` (a volume mounted read-only -> a compressed, hashed and optionally
encrypted archive written into a partial file on the backup volume; see archive.py),
`mirror` (a pass bringing a staging mirror on the backup volume up to date with a volume;
see sidecar/mirror/worker.py), `restic` (restic next to the data, for BACKUP_FORMAT=restic; see restic.py) and `probe` (says whether this image can do that). Output is one JSON object per line on
stdout (the sidecar reads it back through the engine's logs endpoint); PROTOCOL changes
whenever the sidecar and the worker must agree on something new. A worker ends when the
sidecar that started it is gone (watch_parent).
"""

import json
import os
import queue
import threading
from typing import Callable

from ..core.model import WORKER_PARENT_ENV

PROTOCOL = 12  # 3: the mirror's vault/, --exclude and `refused`; a worker watches its sidecar; 4: restic;
# 5: restic --go (held at its gate until the go file)
# 6: the extract worker's staged restore (verify, then room and go on stdin)
# 7: restic --empty (a restore empties the volume itself)
# 8: the extract worker's --one-pass restore (ready; go: staged or fallback; swap), and a staged
#    worker's fallback empties the volume itself
# 9: mirror --hold (one worker for a mirrored volume's backup: first pass, `go` on stdin, stopped pass,
#    `archive` on stdin, the mirror's archive; every line with its `stage`)
# 10: restic --staged (a restore's worker started before the stop, `go SNAPSHOT_ID` on stdin; no probe)
#    (8, 9 and 10 were built side by side and landed together: 10 holds all three)
# 11: the extract worker's --list (`member` records, then `result`): the sidecar parses no archive
# 12: the extract worker's --stream (verified, go, the bytes on stdout and every record on stderr): a
#    preset's dump and an image export reach their client from a worker, not from the sidecar's parser

EXIT_ORPHANED = 70  # the sidecar that started this worker is gone


COMMANDS: "queue.Queue[str]" = queue.Queue()  # the sidecar's lines on stdin (watch_parent), e.g. "go"
# Run before a worker whose sidecar is gone ends (e.g. the one-pass restore's staging folder
# removed: the volume as it was); a failing one is skipped.
ON_ORPHAN: "list[Callable[[], None]]" = []


def record_of(line: str) -> dict:
    """A worker's output line as the sidecar reads it: its JSON record, or {} for anything
    else (e.g. Python's own traceback, logged as it is by the caller)."""
    try:
        record = json.loads(line)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def watch_parent(environ=os.environ, stdin_fd: int = 0, exit=os._exit,
                 commands: "queue.Queue[str] | None" = None) -> threading.Thread | None:
    """When the sidecar says so (WORKER_PARENT_ENV=stdin): stdin is the sidecar's connection
    to the engine, which closes it when that connection drops (the sidecar killed, its
    container stopped). Its end ends this worker at once, children (tar, zstd) with it: a
    worker never outlives its sidecar, nor holds a volume `docker-compose down -v` removes.
    Each line the sidecar sends is put on `commands` (COMMANDS; a worker that waits for
    none ignores them). The file descriptor is read, not sys.stdin: a daemon thread
    blocked in a buffered reader's lock makes the interpreter's shutdown fail."""
    if environ.get(WORKER_PARENT_ENV) != "stdin":
        return None
    to = COMMANDS if commands is None else commands

    def wait() -> None:
        pending = b""
        try:
            while data := os.read(stdin_fd, 65536):
                *lines, pending = (pending + data).split(b"\n")
                for line in lines:
                    to.put(line.decode("utf-8", "replace").strip())
                pending = pending[-4096:]  # a line is a short word; nothing else is kept
        except OSError:
            pass
        os.write(1, b'{"event": "error", "message": "the sidecar that started this worker is gone"}\n')
        for cleanup in list(ON_ORPHAN):
            try:
                cleanup()
            except Exception:  # noqa: BLE001 - the exit matters more
                pass
        exit(EXIT_ORPHANED)

    thread = threading.Thread(target=wait, name="watch-parent", daemon=True)
    thread.start()
    return thread
