"""BACKUP_FORMAT=restic on the real engine: a real volume backed up twice by restic in a
worker container from this tree's image (the second run incremental: restic's own JSON
summary says how little was added), listed, restored whole and one file at a time, and the
repository opened by the plain restic CLI."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from .support import stderr_records
from .test_roundtrip import VARIED_TREE

PASSWORD = "e2e-restic-Pw-81"

pytestmark = pytest.mark.skipif(subprocess.run(["sh", "-c", "command -v restic"], capture_output=True).returncode,
                                reason="restic is not installed (scripts/test installs it)")


def _env(lab, worker_image, tmp_path) -> dict[str, str]:
    secret = tmp_path / "restic-password"
    secret.write_text(PASSWORD + "\n")
    # Dry-run rotation: restic keeps one snapshot per period, and both runs fall on one day.
    return {"BACKUP_WORKER_IMAGE": worker_image, "BACKUP_FORMAT": "restic", "RESTIC_PASSWORD_FILE": str(secret),
            "BACKUP_PRUNE_DRY_RUN": "true"}


def _restic(lab, *args: str) -> str:
    """The plain restic CLI, as a person would open the repository."""
    env = {**os.environ, "RESTIC_PASSWORD": PASSWORD}
    return subprocess.run(["restic", "-r", str(lab.backup_dir / "restic"), "--no-cache", *args], env=env,
                          check=True, capture_output=True, text=True).stdout


def _read(records: list[dict]) -> dict:
    [record] = [r for r in records if r.get("message") == "volume read by restic in a worker container"]
    return record


def test_backup_twice_incrementally_then_restore_whole_and_one_file(lab, worker_image, tmp_path):
    volume = lab.volume("data")
    lab.populate(volume, VARIED_TREE + "printf 'version one\\n' > notes.txt\n")
    app = lab.workload("app", {"backup.enable": "true", "backup.strategy": "stop"}, {volume: "/data"})
    env = _env(lab, worker_image, tmp_path)

    first = lab.cli("backup", "app", **env)
    assert first.returncode == 0, first.stderr
    one = _read(stderr_records(first.stderr))
    assert one["bytes"] >= 50 << 20 and one["added_bytes"] >= 50 << 20 and one["parent"] is None

    lab.populate(volume, "printf 'version two\\n' > notes.txt")
    after_change = lab.manifest(volume)
    second = lab.cli("backup", "app", **env)
    assert second.returncode == 0, second.stderr
    two = _read(stderr_records(second.stderr))
    # restic's summary: the 50 MiB file and the rest were not read again; a few KiB were added.
    assert two["parent"] and two["files_changed"] == 1 and two["files_unmodified"] >= 10
    assert two["added_bytes"] < 256 << 10, two
    assert lab.state(app) == "running"
    assert PASSWORD not in first.stderr + first.stdout + second.stderr + second.stdout

    # The plain CLI opens the repository: two snapshots, tagged, of /volume, from this node.
    snapshots = json.loads(_restic(lab, "snapshots", "--json"))
    assert len(snapshots) == 2 and all(s["paths"] == ["/volume"] for s in snapshots)
    assert all({"backup-sidecar", "target=app", "item=data", "frequency=daily"} <= set(s["tags"]) for s in snapshots)
    assert _restic(lab, "dump", snapshots[0]["id"], "/volume/notes.txt") == "version one\n"

    listed = lab.cli("list", "app", "--json", **env)
    assert listed.returncode == 0, listed.stderr
    rows = [r for r in json.loads(listed.stdout) if r.get("kind") == "restic-snapshot"]
    assert [r["id"] for r in rows] == [s["short_id"] for s in snapshots]
    assert rows[0]["name"].startswith("app_data_") and rows[0]["name"].endswith("_daily")

    # Whole volume: refused while it holds data, then replaced with --force.
    refused = lab.cli("restore", "app", "--volume", "data", **env)
    assert refused.returncode != 0 and "not empty" in refused.stderr
    lab.populate(volume, "rm -rf -- ..?* .[!.]* *; echo stray > stray.txt")
    restored = lab.cli("restore", "app", "--volume", "data", "--force", **env)
    assert restored.returncode == 0, restored.stderr
    assert lab.manifest(volume) == after_change and lab.state(app) == "running"

    # One file from the first snapshot (by its name as `list` shows it); the rest stays.
    one_file = lab.cli("restore", "app", "--volume", "data", "--snapshot", rows[0]["name"], "--path", "notes.txt",
                       **env)
    assert one_file.returncode == 0, one_file.stderr
    now = lab.manifest(volume)
    assert lab.run_oneshot("cat notes.txt", {volume: "/data"}) == "version one\n"
    assert {k: v for k, v in now.items() if k != "./notes.txt"} == \
        {k: v for k, v in after_change.items() if k != "./notes.txt"}

    escape = lab.cli("restore", "app", "--volume", "data", "--path", "../../etc/passwd", **env)
    assert escape.returncode != 0 and "inside the volume" in escape.stderr
