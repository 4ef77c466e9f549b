"""Restore on the real engine: checksum verified first, unsafe members refused before
anything is written (issue 8's NUL-checksum escape included), non-empty volumes protected
unless --force, a failure after emptying leaves the app stopped."""

from __future__ import annotations

import hashlib
import json
import tarfile
import time

import pytest
import zstandard

from sidecar.docker.engine import Engine

from .support import stderr_records, tar_bytes


def _member(name: str, data: bytes | None = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    if kind == tarfile.DIRTYPE:
        info.mode = 0o755
    info.size = len(data) if data is not None and kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


def _write_archive(lab, name: str, members: list[tuple]) -> str:
    """A crafted archive with a valid checksum, so only the member check can refuse it."""
    folder = lab.backup_dir / "daily"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_bytes(zstandard.ZstdCompressor().compress(tar_bytes(members)))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (folder / f"{name}.sha256").write_text(f"{digest}  {name}\n")
    return str(path)


@pytest.mark.parametrize("members, reason", [
    # Every refusal is in the unit tier (tests/unit/test_restore_boundary.py); on the real engine the
    # default run keeps one case per rule, the slow group the rest.
    pytest.param([_member(".", kind=tarfile.DIRTYPE), _member("./ok.txt", b"ok"), _member("../escape.txt", b"pwned")],
                 "'..'", marks=pytest.mark.slow),
    pytest.param([_member("./ok.txt", b"ok"), _member("/escape.txt", b"pwned")], "absolute path",
                 marks=pytest.mark.slow),
    ([_member("./link", kind=tarfile.SYMTYPE, link="/"), _member("./link/escape.txt", b"pwned")], "absolute path"),
    pytest.param([_member("./up", kind=tarfile.SYMTYPE, link=".."), _member("./up/escape.txt", b"pwned")],
                 "through the symlink", marks=pytest.mark.slow),
    ([_member("./lnk", kind=tarfile.SYMTYPE, link="."), _member("./out", kind=tarfile.SYMTYPE, link="lnk/.."),
      _member("./out/escape.txt", b"pwned")], "through the symlink"),
], ids=["dotdot", "absolute", "absolute-symlink", "symlink-up", "symlink-chain"])
def test_crafted_archive_is_refused_and_nothing_is_written(lab, members, reason):
    volume = lab.volume("data")
    lab.populate(volume, "echo original > original.txt")
    before = lab.manifest(volume)
    app = lab.workload("app", {"backup.enable": "true"}, {volume: "/data"})
    archive = _write_archive(lab, "app_data_2026-01-01_daily.tar.zst", members)

    done = lab.cli("restore", "app", "--volume", "data", "--archive", archive, "--force")
    assert done.returncode != 0
    assert "refus" in done.stderr or reason in done.stderr, done.stderr
    assert reason in done.stderr
    # Nothing changed in the volume, nothing appeared beside it, the app still runs.
    assert lab.manifest(volume) == before
    outside = app.exec_run(["sh", "-c", "ls / /data/.. | grep -c escape || true"]).output.decode().strip()
    assert outside == "0"
    assert lab.state(app) == "running"


def test_corrupted_archive_is_refused(lab):
    volume = lab.volume("data")
    lab.populate(volume, "echo v > v")
    lab.workload("app", {"backup.enable": "true", "backup.strategy": "hot"}, {volume: "/data"})
    assert lab.cli("backup", "app").returncode == 0
    [archive] = lab.archives()
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    lab.populate(volume, "rm v")
    done = lab.cli("restore", "app", "--volume", "data")
    assert done.returncode != 0 and "SHA-256" in done.stderr
    assert set(lab.manifest(volume)) == {"."}


def test_non_empty_volume_needs_force(lab):
    volume = lab.volume("data")
    lab.populate(volume, "echo one > a.txt")
    app = lab.workload("app", {"backup.enable": "true", "backup.strategy": "stop"}, {volume: "/data"})
    assert lab.cli("backup", "app").returncode == 0
    backed_up = lab.manifest(volume)
    lab.populate(volume, "echo two > a.txt; echo junk > b.txt; mkdir .hidden; echo h > .hidden/h")

    refused = lab.cli("restore", "app", "--volume", "data")
    assert refused.returncode != 0 and "not empty" in refused.stderr and "--force" in refused.stderr
    assert "./b.txt" in lab.manifest(volume)
    assert lab.state(app) == "running"

    forced = lab.cli("restore", app.name, "--volume", "/data", "--force")
    assert forced.returncode == 0, forced.stderr
    assert lab.manifest(volume) == backed_up
    assert lab.state(app) == "running"


def test_restore_by_archive_name_and_missing_archive(lab):
    volume = lab.volume("data")
    lab.populate(volume, "echo v > v")
    lab.workload("app", {"backup.enable": "true", "backup.strategy": "hot"}, {volume: "/data"})
    missing = lab.cli("restore", "app", "--volume", "data")
    assert missing.returncode == 2 and "no archive" in missing.stderr
    assert lab.cli("backup", "app").returncode == 0
    [archive] = lab.archives()
    lab.populate(volume, "rm v")
    done = lab.cli("restore", "app", "--volume", "data", "--archive", archive.name)
    assert done.returncode == 0, done.stderr
    assert "./v" in lab.manifest(volume)
    unknown = lab.cli("restore", "app", "--volume", "nope")
    assert unknown.returncode == 2 and "no volume 'nope'" in unknown.stderr and "data (/data)" in unknown.stderr



def _helper_volumes(client, since: float, until: float) -> set[str]:
    """Anonymous volumes (64 hex digits) that helper containers mounted in [since, until]."""
    helpers = {e["id"] for e in client.api.events(since=since, until=until, decode=True, filters={
        "type": "container", "event": "create", "label": "backup-sidecar.helper=true"})}
    mounted = client.api.events(since=since, until=until, decode=True, filters={"type": "volume", "event": "mount"})
    return {e["Actor"]["ID"] for e in mounted if e["Actor"]["Attributes"].get("container") in helpers
            and len(e["Actor"]["ID"]) == 64}


def test_forced_restore_leaves_no_anonymous_volume(lab, sidecar_image):
    # The sidecar's image declares VOLUME /backups: a helper from it gets an anonymous volume.
    # A forced restore of a plain volume runs no helper since the one-pass restore (issue 19:
    # the worker swaps the old contents out); a volume with nested mounts still has the helper
    # empty it, run here as that path runs it.
    volume = lab.volume("data")
    lab.populate(volume, "echo one > a.txt")
    app = lab.workload("app", {"backup.enable": "true", "backup.strategy": "hot"}, {volume: "/data"})
    assert lab.cli("backup", "app").returncode == 0
    lab.populate(volume, "echo junk > b.txt")
    volumes_before = len(lab.client.api.volumes().get("Volumes") or [])
    started = time.time() - 1

    forced = lab.cli("restore", "app", "--volume", "data", "--force", BACKUP_HELPER_IMAGE=sidecar_image)
    assert forced.returncode == 0, forced.stderr
    assert "./b.txt" not in lab.manifest(volume)
    assert _helper_volumes(lab.client, started, time.time() + 1) == set()  # no helper ran
    engine = Engine()
    try:
        assert engine.run_helper(sidecar_image, app.id, ["sh", "-c", "true"])[0] == 0
    finally:
        engine.close()
    anonymous = _helper_volumes(lab.client, started, time.time() + 1)
    assert anonymous, "the helper from the sidecar's image should have had an anonymous /backups volume"
    existing = {v["Name"] for v in lab.client.api.volumes().get("Volumes") or []}
    assert anonymous & existing == set()
    print(f"docker volume ls: {volumes_before} before, {len(existing)} after (other tests share the engine)")


def test_the_nul_checksum_escape_is_refused_on_the_real_engine(lab):
    """Issue 8's reproduction: a header whose checksum field starts with NUL ended the archive
    for the check (Python) but not for the engine (Go), which then wrote `d -> /` and
    `d/etc/ESCAPED` outside the volume."""
    volume = lab.volume("data")
    lab.populate(volume, "echo original > original.txt")
    before = lab.manifest(volume)
    app = lab.workload("app", {"backup.enable": "true"}, {volume: "/data"})
    ok, _ = _member("./ok.txt", b"ok")
    blind, _ = _member("./blind.txt", b"")
    link, _ = _member("./d", kind=tarfile.SYMTYPE, link="/")
    escape, _ = _member("./d/etc/ESCAPED", b"pwned")
    blind_header = bytearray(blind.tobuf(tarfile.USTAR_FORMAT))
    blind_header[148:156] = bytes(8)
    raw = (ok.tobuf(tarfile.USTAR_FORMAT) + b"ok".ljust(512, b"\0") + bytes(blind_header)
           + link.tobuf(tarfile.USTAR_FORMAT) + escape.tobuf(tarfile.USTAR_FORMAT) + b"pwned".ljust(512, b"\0")
           + bytes(1024))
    folder = lab.backup_dir / "daily"
    folder.mkdir(exist_ok=True)
    path = folder / "app_data_2026-01-01_daily.tar"
    path.write_bytes(raw)
    (folder / f"{path.name}.sha256").write_text(f"{hashlib.sha256(raw).hexdigest()}  {path.name}\n")

    done = lab.cli("restore", "app", "--volume", "data", "--archive", str(path), "--force")
    assert done.returncode == 1 and "checksum field" in done.stderr, done.stderr
    assert lab.manifest(volume) == before and lab.state(app) == "running"
    found = app.exec_run(["sh", "-c", "ls /etc/ESCAPED /data/d 2>/dev/null | wc -l"]).output.decode().strip()
    assert found == "0"


def test_an_archive_the_writer_would_fail_on_is_refused_before_anything_stops(lab):
    """A hard link to a file the archive does not hold used to pass verify and fail in the
    writer after --force emptied the volume. Since issue 19 what verify accepts the writer
    writes: it is refused before the app is stopped or its volume touched. (A writer that
    fails after emptying, the app left stopped across restarts: tests/actions/test_restore_worker.py.)"""
    volume = lab.volume("data")
    lab.populate(volume, "echo one > a.txt")
    app = lab.workload("app", {"backup.enable": "true", "backup.strategy": "hot"}, {volume: "/data"})
    assert lab.cli("backup", "app").returncode == 0
    backed_up = lab.manifest(volume)
    broken = _write_archive(lab, "app_data_2026-01-01_daily.tar.zst", [
        _member("./first.txt", b"first"), _member("./h", kind=tarfile.LNKTYPE, link="missing"),
        _member("./last.txt", b"last")])

    failed = lab.cli("restore", "app", "--volume", "data", "--archive", broken, "--force")
    assert failed.returncode == 1, failed.stderr
    assert "hard link 'h' -> 'missing'" in failed.stderr
    assert lab.state(app) == "running" and lab.manifest(volume) == backed_up
    journal_file = lab.backup_dir / ".sidecar" / "journal.json"
    assert not journal_file.exists() or json.loads(journal_file.read_text())["interrupted"] == []
