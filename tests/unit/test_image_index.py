"""image_index.py: exported image IDs kept on the backup volume through JsonState."""

from __future__ import annotations

import stat

from sidecar.store.image_index import ImageIndex


def test_recorded_export_is_found_while_its_file_exists(tmp_path):
    index_path = tmp_path / ".sidecar" / "images.json"
    export = tmp_path / "images" / "app_latest_2026-01-01.tar.zst"
    export.parent.mkdir()
    export.write_bytes(b"x")
    ImageIndex(index_path).record("sha256:abc", "images/app_latest_2026-01-01.tar.zst")
    again = ImageIndex(index_path)  # another process on the same backup volume
    assert again.get("sha256:abc") == "images/app_latest_2026-01-01.tar.zst"
    assert again.get("sha256:other") is None
    assert stat.S_IMODE(index_path.stat().st_mode) == 0o600
    export.unlink()
    assert again.get("sha256:abc") is None


def test_unreadable_index_is_moved_aside(tmp_path):
    index_path = tmp_path / ".sidecar" / "images.json"
    index_path.parent.mkdir()
    index_path.write_text("[")
    index = ImageIndex(index_path)
    assert index.get("sha256:abc") is None
    assert list(index_path.parent.glob("images.json.unreadable-*"))
