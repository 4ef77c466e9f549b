"""The CLI with a mounted disk as the destination "local" (issue 12), against the fake
engine: a backup copies there, `restore --from local` then fetches from that disk onto an
empty backup volume, and without such a destination `--from local` still means the
backup volume (as before destinations had names)."""

from __future__ import annotations

import pytest

from .conftest import app_labels, tree


@pytest.mark.usefixtures("restore_worker")
def test_restore_from_the_local_destination_and_from_the_backup_volume(run, engine, data, tmp_path, monkeypatch,
                                                                      capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    monkeypatch.setenv("BACKUP_DESTINATIONS", str(disk))
    engine.add_container("app-1", app_labels(), {"/data": data})
    original = tree(data)
    assert run("backup", "app") == 0
    [copy] = [p for p in disk.glob("daily/*.tar.zst")]
    backups = tmp_path / "backups"
    assert copy.read_bytes() == (backups / "daily" / copy.name).read_bytes()
    assert (disk / "daily" / (copy.name + ".sha256")).exists()

    new_host = tmp_path / "new-host"
    monkeypatch.setenv("BACKUP_DIR", str(new_host))
    (data / "a.txt").write_text("changed\n")
    assert run("restore", "app", "--volume", "data", "--from", "local", "--force") == 0
    assert tree(data) == original
    assert (new_host / "daily" / copy.name).read_bytes() == copy.read_bytes()

    monkeypatch.delenv("BACKUP_DESTINATIONS")
    monkeypatch.setenv("BACKUP_DIR", str(backups))
    capsys.readouterr()
    (data / "a.txt").write_text("changed again\n")
    assert run("restore", "app", "--volume", "data", "--from", "local", "--force") == 0  # the backup volume
    assert tree(data) == original
    assert run("restore", "app", "--volume", "data", "--from", "nas", "--force") == 64
    assert "set S3_BUCKET (and S3_ENDPOINT_URL, credentials) or BACKUP_DESTINATIONS" in capsys.readouterr().err
