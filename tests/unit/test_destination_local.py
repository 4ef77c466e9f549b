"""The "local" destination (a mounted second disk, issue 12): verified copies through a
partial file, the backup volume's layout, modes nobody else can read, hard links for
promotions, a missing mount reported as unreachable (and never created), tampering
caught on the way back."""

from __future__ import annotations

import hashlib

import pytest

from sidecar.core.config import LocalConfig
from sidecar.destinations import Destination, create
from sidecar.core.errors import ChecksumMismatch, DestinationError, DestinationUnreachable

from .helpers import daily_archive

NAME = "app_data_2026-11-26_daily.tar.zst"


@pytest.fixture
def archive(tmp_path):
    return daily_archive(tmp_path, NAME, 5000)


def test_upload_copy_list_download_delete(tmp_path, archive):
    path, digest = archive
    disk = tmp_path / "disk"
    disk.mkdir()
    local = create("local", LocalConfig(str(disk), file_mode=0o640))
    assert isinstance(local, Destination) and local.name == "local"

    obj = local.upload(path, f"daily/{NAME}", digest)
    assert (obj.relpath, obj.size, obj.sha256, obj.key) == (f"daily/{NAME}", 5000, digest, str(disk / "daily" / NAME))
    assert (disk / "daily" / NAME).read_bytes() == path.read_bytes()
    assert (disk / "daily" / (NAME + ".sha256")).read_text() == f"{digest}  {NAME}\n"
    assert sorted(p.name for p in (disk / "daily").iterdir()) == [NAME, NAME + ".sha256"]  # no partial left
    assert (disk / "daily").stat().st_mode & 0o777 == 0o700
    assert {(disk / "daily" / n).stat().st_mode & 0o777 for n in (NAME, NAME + ".sha256")} == {0o640}

    weekly = "weekly/" + NAME.replace("_daily", "_weekly")
    copied = local.copy(f"daily/{NAME}", weekly)
    assert copied.sha256 == digest and (disk / weekly).stat().st_ino == (disk / "daily" / NAME).stat().st_ino
    (disk / "daily" / "half.tar.zst").write_bytes(b"no checksum: an interrupted copy")
    assert [o.relpath for o in local.list()] == [f"daily/{NAME}", weekly]
    assert [o.relpath for o in local.list("weekly/")] == [weekly]
    assert local.head(f"daily/{NAME}").sha256 == digest and local.head("daily/none.tar.zst") is None

    back = tmp_path / "restore" / NAME
    assert local.download(weekly, back).sha256 == digest and back.read_bytes() == path.read_bytes()
    local.delete([weekly, "weekly/missing.tar.zst"])
    assert not (disk / weekly).exists() and not (disk / (weekly + ".sha256")).exists()


def test_a_missing_mount_is_unreachable_and_never_created(tmp_path, archive):
    path, digest = archive
    local = create("local", LocalConfig(str(tmp_path / "not-mounted")))
    for call in (lambda: local.upload(path, f"daily/{NAME}", digest), local.list, local.check):
        with pytest.raises(DestinationUnreachable, match="is the disk mounted"):
            call()
    assert not (tmp_path / "not-mounted").exists()


def test_a_changed_archive_is_not_copied_and_a_tampered_copy_not_restored(tmp_path, archive):
    path, digest = archive
    disk = tmp_path / "disk"
    disk.mkdir()
    local = create("local", LocalConfig(str(disk)))
    with pytest.raises(ChecksumMismatch, match="not copying it"):
        local.upload(path, f"daily/{NAME}", hashlib.sha256(b"other").hexdigest())
    assert list(disk.rglob("*.tar.zst*")) == []

    local.upload(path, f"daily/{NAME}", digest)
    (disk / "daily" / NAME).write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatch):
        local.download(f"daily/{NAME}", tmp_path / "back" / NAME)
    assert list((tmp_path / "back").iterdir()) == []
    with pytest.raises(DestinationError, match="does not exist"):
        local.download("daily/none.tar.zst", tmp_path / "back" / "none.tar.zst")
