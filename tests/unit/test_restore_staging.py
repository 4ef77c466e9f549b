"""The one-pass restore's staging folder and swap (sidecar/tarball/staging.py) on local
folders, no Docker: the staged tree replaces every old entry (dot files, symlinks, folders),
the root gets the archive's root entry, nothing hidden is left, a swap cut short says where
the old and the new entries are, and removal never follows a symlink."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sidecar.tarball import staging
from sidecar.tarball.extract import Kind, Member


def _tree(root: Path) -> dict[str, str]:
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = path.read_text()
    return out


@pytest.fixture
def volume(tmp_path):
    root = tmp_path / "volume"
    (root / "old" / "deep").mkdir(parents=True)
    (root / "old" / "deep" / "f").write_text("old f")
    (root / ".hidden").write_text("old dot file")
    (root / "same.txt").write_text("old same")
    os.symlink("old", root / "link")
    return root


def _staged(volume: Path) -> Path:
    folder = staging.make_staging(volume)
    (folder / "new").mkdir()
    (folder / "new" / "g").write_text("new g")
    (folder / "same.txt").write_text("new same")
    (folder / ".dot").write_text("new dot")
    os.symlink("new/g", folder / "link")
    return folder


def test_the_staging_folder_is_hidden_random_and_private(volume):
    a, b = staging.make_staging(volume), staging.make_staging(volume)
    assert a.name != b.name and a.name.startswith(staging.STAGING_PREFIX) and len(a.name) > len(staging.STAGING_PREFIX) + 8
    assert stat.S_IMODE(os.stat(a).st_mode) == 0o700 and a.parent == volume


def test_the_swap_replaces_every_old_entry_and_applies_the_root_entry(volume):
    folder = _staged(volume)
    root = Member("", Kind.DIR, 0o751, os.getuid(), os.getgid(), "", "", 1_600_000_000 * 10**9, 0, 0, "", (), None)
    staging.swap(volume, folder.name, root)
    assert _tree(volume) == {"new": "dir", "new/g": "new g", "same.txt": "new same", ".dot": "new dot",
                             "link": "-> new/g"}
    st = os.stat(volume)
    assert stat.S_IMODE(st.st_mode) == 0o751 and st.st_mtime_ns == 1_600_000_000 * 10**9


def test_without_a_root_entry_the_root_keeps_its_mode_and_times(volume):
    os.chmod(volume, 0o705)
    os.utime(volume, ns=(1_500_000_000 * 10**9, 1_500_000_000 * 10**9))
    folder = _staged(volume)
    os.utime(volume, ns=(1_500_000_000 * 10**9, 1_500_000_000 * 10**9))
    staging.swap(volume, folder.name, None)
    st = os.stat(volume)
    assert stat.S_IMODE(st.st_mode) == 0o705 and st.st_mtime_ns == 1_500_000_000 * 10**9
    assert sorted(os.listdir(volume)) == [".dot", "link", "new", "same.txt"]


def test_removing_the_staging_folder_leaves_the_volume_as_it_was(volume, tmp_path):
    before = _tree(volume)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    folder = _staged(volume)
    os.symlink(outside, folder / "escape")  # a symlink in the staged tree is removed, never followed
    staging.remove(volume, folder.name)
    assert _tree(volume) == before and (outside / "keep").read_text() == "keep"
    staging.remove(volume, folder.name)  # gone already: nothing to do


def test_a_swap_cut_short_names_where_the_old_and_the_new_entries_are(volume, monkeypatch):
    folder = _staged(volume)
    real, calls = os.rename, []

    def rename(*args, **kwargs):
        calls.append(args)
        if len(calls) == 6:  # the old entries moved aside (4), one new one in
            raise OSError(5, "Input/output error")
        return real(*args, **kwargs)

    monkeypatch.setattr(staging.os, "rename", rename)
    with pytest.raises(staging.SwapFailed) as err:
        staging.swap(volume, folder.name, None)
    aside = [n for n in os.listdir(volume) if n.startswith(staging.ASIDE_PREFIX)]
    assert len(aside) == 1 and str(volume / aside[0]) in str(err.value) and str(folder) in str(err.value)
    assert sorted(os.listdir(volume / aside[0])) == [".hidden", "link", "old", "same.txt"]  # nothing lost


def test_a_swap_that_fails_before_moving_anything_leaves_no_aside_folder(volume, monkeypatch):
    folder = _staged(volume)
    before = sorted(os.listdir(volume))

    def rename(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(staging.os, "rename", rename)
    with pytest.raises(OSError) as err:
        staging.swap(volume, folder.name, None)
    assert not isinstance(err.value, staging.SwapFailed) and sorted(os.listdir(volume)) == before


def test_empty_removes_dot_files_folders_and_symlinks_without_following_them(volume, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    os.symlink(outside, volume / "escape")
    staging.empty(volume)
    assert os.listdir(volume) == [] and (outside / "keep").read_text() == "keep"


def test_the_staged_data_is_durable_before_the_first_rename_and_the_final_state_before_the_swap_returns(
        volume, monkeypatch):
    """The durability rule the early writeback leaves as it was: a syncfs before anything
    moves, another once the old entries are gone and the root applied."""
    folder = _staged(volume)
    calls: list[str] = []
    real_rename, real_sync, real_rmtree = os.rename, staging.sync, staging.shutil.rmtree
    monkeypatch.setattr(staging, "sync", lambda into: (calls.append("sync"), real_sync(into)))
    monkeypatch.setattr(staging.os, "rename", lambda *a, **kw: (calls.append("rename"), real_rename(*a, **kw)))
    monkeypatch.setattr(staging.shutil, "rmtree", lambda *a, **kw: (calls.append("remove"), real_rmtree(*a, **kw)))
    staging.swap(volume, folder.name, None)
    assert calls[0] == "sync" and calls[-1] == "sync" and calls.count("sync") == 2
    assert "rename" in calls and calls.index("remove") > max(i for i, c in enumerate(calls) if c == "rename")
