"""Encrypted archives end to end: written encrypted (never plaintext on disk), unreadable
without the key, restored with it."""

from __future__ import annotations

import pyrage
import pytest

from .support import wait_for

MARKER = "plaintext-marker-7f3a9c"


def _keys(tmp_path):
    identity = pyrage.x25519.Identity.generate()
    key_file = tmp_path / "key.txt"
    key_file.write_text(f"# test key\n{identity}\n")
    key_file.chmod(0o600)
    return str(identity.to_public()), key_file


def test_encrypted_backup_restores_with_the_key_only(lab, tmp_path):
    public, key_file = _keys(tmp_path)
    volume = lab.volume("data")
    # Incompressible data makes the write last long enough to look at the partial file.
    lab.populate(volume, f"echo {MARKER} > secret.txt; dd if=/dev/urandom of=blob bs=1M count=120 2>/dev/null")
    original = lab.manifest(volume)
    lab.workload("app", {"backup.enable": "true", "backup.strategy": "hot", "backup.compression": "gzip"},
                 {volume: "/data"})

    proc, _log = lab.start_cli("backup", "app", BACKUP_AGE_RECIPIENTS=public)
    partial = wait_for(lambda: [p for p in lab.backup_dir.rglob("*.partial") if p.stat().st_size > 64] or
                       (proc.poll() is not None and ["done"]), timeout=60, interval=0.01, what="a partial file")
    if partial != ["done"]:
        assert partial[0].name.endswith(".tar.gz.age.partial")
        assert partial[0].read_bytes()[:21] == b"age-encryption.org/v1"  # encrypted from the first byte
    assert proc.wait(120) == 0

    [archive] = lab.archives()
    assert archive.name.endswith("_daily.tar.gz.age")
    data = archive.read_bytes()
    assert data.startswith(b"age-encryption.org/v1") and MARKER.encode() not in data
    # Everything in the backup folder is encrypted or a checksum/state file.
    for path in lab.backup_dir.rglob("*"):
        if path.is_file() and ".sidecar" not in path.parts and not path.name.endswith(".sha256"):
            assert path.name.endswith(".age"), path

    lab.populate(volume, "rm -rf -- * .[!.]* ..?* || true")
    without = lab.cli("restore", "app", "--volume", "data")
    assert without.returncode != 0 and "BACKUP_AGE_IDENTITY_FILE" in without.stderr
    assert set(lab.manifest(volume)) == {"."}

    (tmp_path / "other").mkdir()
    _, other_key = _keys(tmp_path / "other")
    wrong = lab.cli("restore", "app", "--volume", "data", BACKUP_AGE_IDENTITY_FILE=str(other_key))
    assert wrong.returncode != 0
    assert set(lab.manifest(volume)) == {"."}

    done = lab.cli("restore", "app", "--volume", "data", BACKUP_AGE_IDENTITY_FILE=str(key_file))
    assert done.returncode == 0, done.stderr
    assert lab.manifest(volume) == original


@pytest.mark.slow  # the passphrase mode; the default run keeps the key-only round trip
def test_passphrase_mode_round_trips_and_hides_the_passphrase(lab, tmp_path):
    secret_file = tmp_path / "pass"
    secret_file.write_text("correct horse battery staple\n")
    volume = lab.volume("data")
    lab.populate(volume, f"echo {MARKER} > s.txt")
    lab.workload("app", {"backup.enable": "true", "backup.strategy": "hot"}, {volume: "/data"})
    done = lab.cli("backup", "app", BACKUP_AGE_PASSPHRASE_FILE=str(secret_file), LOG_LEVEL="DEBUG")
    assert done.returncode == 0, done.stderr
    assert "correct horse" not in done.stderr + done.stdout
    [archive] = lab.archives()
    assert archive.name.endswith(".tar.zst.age") and MARKER.encode() not in archive.read_bytes()
    lab.populate(volume, "rm s.txt")
    restored = lab.cli("restore", "app", "--volume", "data", BACKUP_AGE_PASSPHRASE_FILE=str(secret_file))
    assert restored.returncode == 0, restored.stderr
    assert "./s.txt" in lab.manifest(volume)
    plan = lab.cli("plan", BACKUP_AGE_PASSPHRASE_FILE=str(secret_file))
    assert "correct horse" not in plan.stdout + plan.stderr
