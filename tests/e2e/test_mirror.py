"""The staging mirror on the real engine (worker containers from an image of this tree):
its archive equals a plain stop's member by member; changes made while the container
still ran are caught in the stopped pass; `backup.mirror=false` and a backup volume too
small for the mirror are plain stops, said in the log. The stop window (the outcome's
downtime) is printed, never asserted: no test asserts on a time.

The change detection itself (a same-size same-mtime rewrite caught by the ctime, the
racy margin) is proven in tests/unit/test_mirror.py, where the test can see the ctime move."""

from __future__ import annotations

import hashlib
import json
import stat
import tarfile
from pathlib import Path

import pytest

from sidecar.docker.engine import Engine
from sidecar.core.model import Compression
from sidecar.readers.base import ArchiveRequest, WorkerSettings
from sidecar.readers.mirror import MirrorReader
from sidecar.readers.worker import WorkerReader
from sidecar.mirror.worker import TREE

from .support import IDLE, extract_archive, host_manifest, stderr_records
from .test_roundtrip import VARIED_TREE
from .test_worker import EXTRA_TREE, _members, _set_xattrs

STOP = {"backup.enable": "true", "backup.strategy": "stop"}


def _said(records, start: str) -> list[dict]:
    return [r for r in records if str(r.get("message", "")).startswith(start)]


def _downtime(records) -> float:
    return _said(records, "backup finished")[-1]["downtime_seconds"]


# Set-id files and devices: in the archive exactly, in the mirror as data only (issue 19).
SPECIAL_TREE = r"""
printf '#!/bin/sh' > su-tool && chmod 4755 su-tool && ln su-tool su-again
printf 'g' > sg-tool && chown 1000:50 sg-tool && chmod 2711 sg-tool
mknod null-dev c 1 3 && chmod 666 null-dev
mknod disk-dev b 8 17 && chown 0:6 disk-dev && chmod 640 disk-dev
"""


def _specials_on_disk(tree: Path) -> list[str]:
    found = []
    for path in [tree, *tree.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or (not stat.S_ISDIR(mode) and mode & (stat.S_ISUID | stat.S_ISGID)):
            found.append(str(path.relative_to(tree)))
    return found


def test_the_mirror_archive_equals_a_plain_stop_archive_member_by_member(lab, worker_image, tmp_path):
    volume = lab.volume("appdata")
    lab.populate(volume, VARIED_TREE + EXTRA_TREE + SPECIAL_TREE)
    has_xattrs = _set_xattrs(lab, volume, worker_image)
    lab.workload("plain", {**STOP, "backup.mirror": "false"}, {volume: "/data"})
    app = lab.workload("app", STOP, {volume: "/data"})

    plain = lab.cli("backup", "plain", BACKUP_WORKER_IMAGE=worker_image)
    assert plain.returncode == 0, plain.stderr
    plain_records = stderr_records(plain.stderr)
    assert _said(plain_records, "no staging mirror: plain stop (label backup.mirror=false)")
    assert not _said(plain_records, "staging mirror")

    runs, reused = [], []
    # The first fills the mirror, the second finds nothing changed (it copies again what the
    # first saw too soon after it was written: the racy rule); the third finds the very tree
    # the second archived, and copies that archive (checked below like the others).
    for _ in range(3):
        done = lab.cli("backup", "app", BACKUP_WORKER_IMAGE=worker_image)
        assert done.returncode == 0, done.stderr
        records = stderr_records(done.stderr)
        assert _said(records, "staging mirror brought up to date")
        [caught] = _said(records, "staging mirror caught up with the stopped volume")
        runs.append((caught, _downtime(records)))
        reused.append([r["same_as"] for r in _said(records, "volume unchanged since an archive")])
    print(f"stop windows: plain {_downtime(plain_records):.2f} s, "
          "mirror " + ", ".join(f"{d:.2f} s ({c['copied']} copied)" for c, d in runs))
    assert runs[1][0]["removed"] == 0 and runs[2][0]["copied"] == 0
    assert lab.state(app) == "running"

    [plain_archive] = lab.archives("plain_*", folder="daily")
    mirror_archives = lab.archives("app_*", folder="daily")
    assert len(mirror_archives) == 3
    assert reused[0] == [] and reused[2] and reused[2][0] in {a.name for a in mirror_archives}
    expected = _members(plain_archive)
    for archive in mirror_archives:
        got = _members(archive)
        assert list(got) == list(expected)  # the same members in the same order
        assert got == expected  # name, type, mode, owner, mtime, link target, content hash, xattrs
    if has_xattrs:
        assert expected["secret.txt"][7] == {"SCHILY.xattr.user.note": "hello"}
    assert [expected[n][1] for n in ("su-tool", "su-again", "sg-tool")] == [0o4755, 0o4755, 0o2711]
    assert [expected[n][0:2] for n in ("null-dev", "disk-dev")] == [(tarfile.CHRTYPE, 0o666), (tarfile.BLKTYPE, 0o640)]

    mirror = lab.backup_dir / ".sidecar" / "mirror"
    assert mirror.stat().st_mode & 0o777 == 0o700
    assert (mirror / "app" / "appdata" / TREE / "big.bin").exists()
    assert _specials_on_disk(mirror / "app" / "appdata" / TREE) == []
    assert not list(lab.backup_dir.rglob("*.partial")) and not (mirror / "app" / "appdata" / "go").exists()

    plan = lab.cli("plan", "--json", BACKUP_WORKER_IMAGE=worker_image)
    assert plan.returncode == 0, plan.stderr
    rows = {row["target"]: row for row in json.loads(plan.stdout)["targets"]}
    assert rows["app"]["mirror_bytes"] > 50_000_000 and rows["plain"]["mirror_bytes"] is None


# Between the first pass and the stop: a same-size rewrite with its mtime set back, a
# deletion, a rename, a mode and an owner changed, a new empty folder.
HOT_CHANGES = r"""
python - <<'EOF'
import os
st = os.stat('same.txt')
with open('same.txt', 'w') as f:
    f.write('54321')
os.utime('same.txt', ns=(st.st_atime_ns, st.st_mtime_ns))
EOF
rm gone.txt
mv old-name.txt new-name.txt
chmod 600 mode.txt
chown 1234:4321 owner.txt
mkdir made-while-running
"""


def test_changes_made_while_the_container_ran_are_caught_in_the_stopped_pass(lab, worker_image, tmp_path):
    volume = lab.volume("appdata")
    lab.populate(volume, "printf 12345 > same.txt; printf bye > gone.txt; printf moved > old-name.txt; "
                         "printf m > mode.txt; printf o > owner.txt; mkdir -p sub && printf s > sub/s.txt; "
                         "dd if=/dev/urandom of=big.bin bs=1M count=5 2>/dev/null")
    app = lab.workload("app", STOP, {volume: "/data"})
    engine = Engine()
    container = engine.inspect(app.id)
    [mount] = [m for m in container.mounts if m.destination == "/data"]
    request = ArchiveRequest(container.id, mount, lab.backup_dir / "daily" / "app_appdata.tar.zst", Compression.ZSTD,
                             worker=WorkerSettings(lab.backup_dir, image=worker_image), target="app",
                             mirror=lab.backup_dir / ".sidecar" / "mirror" / "app" / "appdata")
    lab.backup_dir.joinpath(".sidecar").mkdir()
    worker = WorkerReader()
    reader = MirrorReader(lambda: worker)
    assert reader.usable(engine, request)
    with reader.open(engine, request) as pending:  # the phases, driven one by one
        pending.prepare()
        lab.run_oneshot(HOT_CHANGES, {volume: "/data"}, image=worker_image)
        engine.stop(container.id, 10)
        copied = pending.read()
        engine.start(container.id)
        result = pending.finish()
    assert copied > 0 and pending.use_mirror
    assert lab.state(app) == "running"

    now = lab.manifest(volume)
    extracted = tmp_path / "extracted"
    extract_archive(result.path, extracted)
    assert host_manifest(extracted) == now
    members = _members(result.path)
    assert "gone.txt" not in members and "old-name.txt" not in members and "made-while-running" in members
    assert members["new-name.txt"][6] == hashlib.sha256(b"moved").hexdigest()
    assert extracted.joinpath("same.txt").read_bytes() == b"54321"
    assert members["mode.txt"][1] == 0o600 and members["owner.txt"][2:4] == (1234, 4321)
    engine.close()


@pytest.fixture
def small_backup_volume(lab):
    """A 4 MiB tmpfs volume, kept mounted by an idle container, whose folder is BACKUP_DIR."""
    name = f"{lab.project}_small"
    lab.client.volumes.create(name, driver_opts={"type": "tmpfs", "device": "tmpfs", "o": "size=4m"})
    lab._volumes.append(name)
    lab.container("backup-sidecar-test/busybox:latest", command=["sh", "-c", IDLE], network_mode="none",
                  volumes={name: {"bind": "/b", "mode": "rw"}})
    return lab.client.api.inspect_volume(name)["Mountpoint"]


@pytest.mark.slow  # the actions tier covers no room for the mirror
def test_a_backup_volume_too_small_for_the_mirror_is_a_plain_stop(lab, worker_image, small_backup_volume, tmp_path):
    volume = lab.volume("appdata")
    lab.populate(volume, "dd if=/dev/zero of=zeros.bin bs=1M count=3 2>/dev/null; printf x > x.txt")
    app = lab.workload("app", STOP, {volume: "/data"})
    done = lab.cli("backup", "app", BACKUP_WORKER_IMAGE=worker_image, BACKUP_DIR=small_backup_volume)
    assert done.returncode == 0, done.stderr
    records = stderr_records(done.stderr)
    [said] = _said(records, "no staging mirror: plain stop for this volume")
    assert "no room" in said["reason"] and said["needed"] > said["free"]
    assert not _said(records, "staging mirror caught up")
    print(f"stop window (plain, no room): {_downtime(records):.2f} s")
    [archive] = sorted(Path(small_backup_volume).glob("daily/app_*.tar.zst"))
    extracted = tmp_path / "extracted"
    extract_archive(archive, extracted)
    assert host_manifest(extracted) == lab.manifest(volume)
    assert lab.state(app) == "running"
