"""A stand-in for `restic` on PATH (tests/e2e/test_restic_kill.py): runs the real restic, and
when its subcommand is FREEZE_PHASE, freezes it (SIGSTOP) as soon as its lock is in place in
FREEZE_LOCKS (a repository's locks/ folder), then writes FREEZE_MARKER: the test kills the
sidecar's whole process group (as the death of its container would) while restic holds it.
The watch is a busy loop over the folder (no sleep): a lock renamed into place is seen within
microseconds, while restic still holds it."""

import os
import re
import signal
import subprocess
import sys

REAL = os.environ.get("FREEZE_REAL", "/usr/bin/restic")
LOCK = re.compile(r"[0-9a-f]{64}")


def main(argv: list[str]) -> int:
    phase, locks, marker = (os.environ.get(k) for k in ("FREEZE_PHASE", "FREEZE_LOCKS", "FREEZE_MARKER"))
    proc = subprocess.Popen([REAL, *argv])
    if phase and phase in argv and locks and marker:
        before = set(os.listdir(locks)) if os.path.isdir(locks) else set()
        while proc.poll() is None:
            try:
                names = os.listdir(locks)
            except FileNotFoundError:
                continue
            if any(LOCK.fullmatch(n) and n not in before for n in names):
                os.kill(proc.pid, signal.SIGSTOP)
                with open(marker, "w") as out:
                    out.write(str(proc.pid))
                break
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
