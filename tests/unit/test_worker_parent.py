"""A worker ends when its sidecar is gone (sidecar/worker/__init__.py, watch_parent): its
stdin is the sidecar's connection to the engine, closed when that connection drops. Here
with a pipe, and a real `python -m sidecar.worker mirror --go` process that waits for a go
that never comes."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

from sidecar.core.model import WORKER_PARENT_ENV
from sidecar.worker import EXIT_ORPHANED, watch_parent

REPO = Path(__file__).resolve().parents[2]


def test_the_end_of_stdin_ends_the_worker():
    read, write = os.pipe()
    ended = threading.Event()
    codes = []

    def fake_exit(code):
        codes.append(code)
        ended.set()

    try:
        assert watch_parent({WORKER_PARENT_ENV: "stdin"}, read, fake_exit) is not None
        assert not ended.wait(0.2)  # the sidecar is there: nothing happens
        os.close(write)
        assert ended.wait(10) and codes == [EXIT_ORPHANED]
    finally:
        os.close(read)


def test_the_sidecars_lines_are_handed_over_whole():
    read, write = os.pipe()
    lines: queue.Queue[str] = queue.Queue()
    try:
        assert watch_parent({WORKER_PARENT_ENV: "stdin"}, read, lambda code: None, lines) is not None
        os.write(write, b"room\ng")  # a line may come in pieces
        assert lines.get(timeout=10) == "room"
        os.write(write, b"o\n")
        assert lines.get(timeout=10) == "go" and lines.empty()
    finally:
        os.close(write)
        os.close(read)


def test_without_the_setting_stdin_is_left_alone():
    assert watch_parent({}, 0, lambda code: None) is None


def test_a_worker_that_ends_by_itself_ends_cleanly_while_its_stdin_is_open(tmp_path):
    """The watcher thread blocked on stdin must not break the interpreter's shutdown
    (a buffered reader's lock held at exit is a fatal error, exit 139)."""
    proc = subprocess.Popen([sys.executable, "-m", "sidecar.worker", "probe"], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, WORKER_PARENT_ENV: "stdin"})
    try:
        out, err = proc.stdout.read(), proc.stderr.read()  # to their end: the worker exited
        assert proc.wait(timeout=60) == 0, err
        assert '"event": "probe"' in out
    finally:
        proc.stdin.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_waiting_mirror_worker_exits_when_its_stdin_closes(tmp_path):
    (tmp_path / "volume").mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "sidecar.worker", "mirror", "--root", str(tmp_path / "volume"),
                             "--mirror", str(tmp_path / "mirror"), "--go", "--wait-timeout=600"],
                            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, WORKER_PARENT_ENV: "stdin"})
    try:
        assert '"ready"' in proc.stdout.readline()  # waiting for its go
        proc.stdin.close()  # the sidecar's connection dropped
        assert proc.wait(timeout=10) == EXIT_ORPHANED
        assert "the sidecar that started this worker is gone" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
