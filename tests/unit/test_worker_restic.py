"""The restic worker's restore side (sidecar/worker/restic.py): `--empty` (the volume emptied
aside while restic restores) and `--staged` (the go on stdin naming the snapshot)."""

from __future__ import annotations

import os
import queue
from datetime import datetime

import pytest

from sidecar.worker import PROTOCOL
from sidecar.worker.restic import EXIT_QUIT, TRASH_PREFIX, empty_folder, run_restic


def test_empty_folder_removes_everything_below_with_dot_files_and_never_follows_a_link(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "kept.txt").write_text("outside the volume\n")
    volume = tmp_path / "volume"
    (volume / "deep" / "er").mkdir(parents=True)
    (volume / "deep" / "er" / "f").write_text("x")
    (volume / ".hidden").write_text("x")
    (volume / "..odd").write_text("x")
    os.symlink(outside, volume / "link-to-dir")
    os.symlink(outside / "kept.txt", volume / "link-to-file")
    assert empty_folder(volume) == 5
    assert volume.is_dir() and not any(volume.iterdir())
    assert (outside / "kept.txt").read_text() == "outside the volume\n"


def test_a_failed_emptying_runs_no_restic_and_says_why(tmp_path):
    events: list[dict] = []
    code = run_restic(None, None, ["version"], events.append, empty=tmp_path / "missing")
    assert code == 1
    assert events[0] == {"event": "restic-worker", "protocol": PROTOCOL}  # first, whatever follows
    assert events[1]["event"] == "error" and "emptying" in events[1]["message"]
    assert events[-1] == {"event": "exit", "code": 1} and not any(e["event"] == "emptied" for e in events)


def _fake_restic(tmp_path, monkeypatch, script: str):
    """A `restic` first on PATH: a shell script (its arguments in $@)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "restic").write_text("#!/bin/sh\n" + script)
    (bin_dir / "restic").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_a_staged_worker_says_its_protocol_writes_nothing_before_go_and_restores_the_snapshot_named(
        tmp_path, monkeypatch, capsys):
    _fake_restic(tmp_path, monkeypatch, 'echo "{\\"args\\": \\"$*\\"}"\n')
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "old.txt").write_text("old\n")
    commands: queue.Queue[str] = queue.Queue()
    events: list[dict] = []

    def emit(record):
        events.append(record)
        if record.get("event") == "staged":  # nothing touched yet: the go comes now
            assert (volume / "old.txt").read_text() == "old\n"
            commands.put("go 0123456789abcdef")

    code = run_restic(None, None, ["restore", "--target", "/restore"], emit, empty=volume, staged=True,
                      commands=commands)
    assert code == 0, events
    assert events[:2] == [{"event": "restic-worker", "protocol": PROTOCOL}, {"event": "staged", "protocol": PROTOCOL}]
    assert not any(volume.iterdir())  # emptied, the trash folder gone too
    assert events[-1] == {"event": "exit", "code": 0}
    out = capsys.readouterr().out  # restic's stdout is passed through as it comes
    assert '"args": "restore --target /restore 0123456789abcdef"' in out


@pytest.mark.parametrize("line", ["quit", "go ../../etc", "go", "rm -rf /"])
def test_a_staged_worker_told_anything_but_go_id_ends_having_written_nothing(tmp_path, monkeypatch, line):
    _fake_restic(tmp_path, monkeypatch, f'touch "{tmp_path}/restic-ran"\n')
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "old.txt").write_text("old\n")
    commands: queue.Queue[str] = queue.Queue()
    commands.put(line)
    events: list[dict] = []
    code = run_restic(None, None, ["restore"], events.append, empty=volume, staged=True, commands=commands)
    assert code == EXIT_QUIT
    assert (volume / "old.txt").read_text() == "old\n" and not (tmp_path / "restic-ran").exists()
    assert not any(e["event"] == "emptied" for e in events)
    assert any(e["event"] == "error" for e in events) == (line != "quit")


def test_the_old_contents_go_while_restic_restores_and_the_roots_times_stay_restics(tmp_path, monkeypatch):
    """Emptying is a rename aside; restic runs at once, the old files are gone by the
    worker's end, and the volume's root keeps the mtime restic gave it."""
    volume = tmp_path / "volume"
    (volume / "deep").mkdir(parents=True)
    for n in range(50):
        (volume / "deep" / f"f{n}").write_bytes(b"x" * 4096)
    (volume / ".hidden").write_text("old\n")
    # restic: sees the old contents moved aside (not in its way), writes a file, sets the root's mtime
    _fake_restic(tmp_path, monkeypatch, f'ls -A "{volume}" > "{tmp_path}/seen"\n'
                                        f'echo new > "{volume}/new.txt"\n'
                                        f'touch -m -d "2001-02-03 04:05:06" "{volume}"\n')
    events: list[dict] = []
    code = run_restic(None, None, ["restore"], events.append, empty=volume)
    assert code == 0, events
    assert {"event": "emptied", "entries": 2} in events
    # restic's own seconds, then the wait for the removal's end: the sidecar logs both
    said = [e["event"] for e in events if e["event"] in ("emptied", "restic-done", "removed", "exit")]
    assert said == ["emptied", "restic-done", "removed", "exit"]
    assert all(e["seconds"] >= 0 for e in events if e["event"] in ("restic-done", "removed"))
    seen = (tmp_path / "seen").read_text().split()
    assert len(seen) == 1 and seen[0].startswith(TRASH_PREFIX)
    assert [p.name for p in volume.iterdir()] == ["new.txt"]
    assert volume.stat().st_mtime == datetime(2001, 2, 3, 4, 5, 6).timestamp()
