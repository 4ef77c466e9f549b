"""The restic worker's emptying of a restore's volume (sidecar/worker/restic.py, `--empty`)."""

from __future__ import annotations

import os

from sidecar.worker.restic import empty_folder, run_restic


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
    assert events[0]["event"] == "error" and "emptying" in events[0]["message"]
    assert events[-1] == {"event": "exit", "code": 1} and not any(e["event"] == "emptied" for e in events)
