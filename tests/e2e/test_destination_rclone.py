"""rclone destinations and a mounted disk end to end (issue 12): `rclone serve sftp` and
`rclone serve webdav` over local folders on free ports (real protocols), the remote "nas"
defined by RCLONE_CONFIG_NAS_* variables (its password as a _FILE), "dav" by a mounted
rclone.conf, and a folder standing for a second disk. Upload, layout, verification,
rotation with the same result as on disk, restore from each onto an empty backup volume,
one destination down during a backup and caught up afterwards, and the SFTP password in
no output."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import urllib.request
from datetime import date, timedelta
from pathlib import Path

import pytest

from .conftest import tool_unavailable
from .rcloneserver import RcloneServer
from .support import log_records, stderr_records, wait_for, without_node

PASSWORD = "S3cret-SFTP-pw!x"
SEED_DAYS = [date(2025, 3, 1) + timedelta(days=i) for i in range(8)]  # 03-01 (a Saturday) .. 03-08
SEED_WEEKLY = [date(2025, 3, 1), date(2025, 3, 3)]
SEED_MONTHLY = [date(2025, 3, 1)]


def obscure(plain: str) -> str:
    return subprocess.run(["rclone", "obscure", plain], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def servers(tmp_path):
    if not RcloneServer.available():
        tool_unavailable("rclone is not installed")
    nas = RcloneServer("sftp", tmp_path / "nas-root", "backup", PASSWORD, tmp_path / "sftp.log")
    dav = RcloneServer("webdav", tmp_path / "dav-root", "backup", PASSWORD, tmp_path / "webdav.log")
    try:
        nas.start()
        dav.start()
        yield nas, dav
    finally:
        nas.stop()
        dav.stop()


@pytest.fixture
def env(servers, tmp_path):
    """The sidecar's settings for three destinations: nas (SFTP, by variables), dav
    (WebDAV, by rclone.conf) and local (a folder standing for a mounted disk)."""
    nas, dav = servers
    secret = tmp_path / "nas-pass"
    secret.write_text(obscure(PASSWORD) + "\n")
    conf = tmp_path / "rclone.conf"
    conf.write_text(f"[dav]\ntype = webdav\nurl = http://127.0.0.1:{dav.port}/\nvendor = other\n"
                    f"user = backup\npass = {obscure(PASSWORD)}\n")
    disk = tmp_path / "disk"
    disk.mkdir()
    return {"BACKUP_DESTINATIONS": f"nas:backups/host1,dav:host1,{disk}", "RCLONE_CONFIG": str(conf),
            "RCLONE_CONFIG_NAS_TYPE": "sftp", "RCLONE_CONFIG_NAS_HOST": "127.0.0.1",
            "RCLONE_CONFIG_NAS_PORT": str(nas.port), "RCLONE_CONFIG_NAS_USER": "backup",
            "RCLONE_CONFIG_NAS_PASS_FILE": str(secret), "RCLONE_RETRIES": "1", "RCLONE_CONTIMEOUT": "5s"}


def copies(servers, env) -> dict[str, dict[str, bytes]]:
    """What each destination holds: relative path -> bytes."""
    nas, dav = servers
    disk = Path(env["BACKUP_DESTINATIONS"].rsplit(",", 1)[1])
    return {"nas": nas.files("backups/host1"), "dav": dav.files("host1"),
            "local": {str(p.relative_to(disk)): p.read_bytes() for p in sorted(disk.rglob("*")) if p.is_file()}}


def on_disk(backup_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(backup_dir)): p.read_bytes() for p in sorted(backup_dir.glob("[dwmi]*/*"))
            if p.is_file() and not p.name.endswith(".partial")}


def _name(day: date, frequency: str) -> str:
    return f"app_data_{day.isoformat()}_{frequency}.tar.zst"


def seed(backup_dir: Path) -> None:
    for day in SEED_DAYS:
        for frequency, days in (("daily", SEED_DAYS), ("weekly", SEED_WEEKLY), ("monthly", SEED_MONTHLY)):
            if day in days:
                path = backup_dir / frequency / _name(day, frequency)
                path.parent.mkdir(exist_ok=True, mode=0o700)
                data = f"archive of {day}".encode() * 100
                path.write_bytes(data)
                path.with_name(path.name + ".sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")


def test_copies_mirror_the_backup_volume_are_verified_and_rotated_alike(lab, servers, env):
    seed(lab.backup_dir)
    volume = lab.volume("data")
    lab.populate(volume, "echo today > t; dd if=/dev/urandom of=big bs=1M count=3 2>/dev/null")
    lab.workload("app", {"backup.enable": "true", "backup.strategy": "hot",
                         "backup.keep": "daily=3,weekly=1,monthly=1"}, {volume: "/data"})

    synced = lab.cli("sync", **env)
    assert synced.returncode == 0, synced.stderr
    # Every destination holds exactly what the backup volume holds: archives and .sha256 files.
    for name, held in copies(servers, env).items():
        assert held == on_disk(lab.backup_dir), name
    records = stderr_records(synced.stderr)
    uploads = {(r["destination"], r.get("hash")) for r in records if r["message"] in ("archive uploaded",
                                                                                      "archive copied to the local destination")}
    assert uploads == {("nas", "md5"), ("dav", "size"), ("local", None)}  # SFTP has md5, WebDAV no hash
    assert len([r for r in records if r["message"] == "off-site copy verified"]) == 3 * 11
    # The local copy is nobody else's to read.
    disk = Path(env["BACKUP_DESTINATIONS"].rsplit(",", 1)[1])
    assert {p.stat().st_mode & 0o077 for p in disk.rglob("*")} == {0}

    # A slow link (rclone's own RCLONE_BWLIMIT): the upload of the new archive logs its progress.
    done = lab.cli("backup", "app", **env, RCLONE_BWLIMIT="2M", BACKUP_PROGRESS_INTERVAL="0.2")
    assert done.returncode == 0, done.stderr
    progress = [r for r in stderr_records(done.stderr) if r["message"] == "upload progress"]
    assert {r["destination"] for r in progress} == {"nas", "dav"}
    assert all(0 <= r["bytes"] < r["total_bytes"] for r in progress)
    kept = {p for p in on_disk(lab.backup_dir) if p.endswith(".tar.zst") and not p.startswith("images/")}
    today = next(p for p in kept if "2025" not in p).split("_")[2]
    assert kept == {f"daily/app_data_{today}_daily.tar.zst", "daily/" + _name(date(2025, 3, 8), "daily"),
                    "daily/" + _name(date(2025, 3, 7), "daily"), f"weekly/app_data_{today}_weekly.tar.zst",
                    f"monthly/app_data_{today}_monthly.tar.zst"}
    for name, held in copies(servers, env).items():
        assert held == on_disk(lab.backup_dir), name  # the same rotation, the new archive with its checksum
    listed = lab.cli("list", "--remote", "dav", "--json", **env)
    assert listed.returncode == 0, listed.stderr
    rows = [r for r in json.loads(listed.stdout) if r["frequency"] != "image"]
    assert {r["path"] for r in rows} == kept and all(r["verified"] and r["destination"] == "dav" for r in rows)
    assert {r["key"] for r in rows} == {f"dav:host1/{p}" for p in kept}


@pytest.mark.slow  # restore --from nas also runs in the secrets test, --from local in tests/actions
def test_restore_from_each_destination_onto_an_empty_backup_volume(lab, servers, env, tmp_path):
    volume = lab.volume("data")
    lab.populate(volume, "mkdir -p d/e; echo one > d/e/f; ln -s e/f d/link; chown 1000:1000 d/e/f; "
                         "dd if=/dev/urandom of=big bs=1M count=2 2>/dev/null")
    original = lab.manifest(volume)
    lab.workload("app", {"backup.enable": "true", "backup.strategy": "stop"}, {volume: "/data"})
    assert lab.cli("backup", "app", **env).returncode == 0
    [archive] = lab.archives()

    for name in ("nas", "dav", "local"):
        new_host = tmp_path / f"new-host-{name}"
        new_host.mkdir()
        lab.populate(volume, "rm -rf -- * .[!.]* ..?* || true")
        done = lab.cli("restore", "app", "--volume", "data", "--from", name, BACKUP_DIR=str(new_host), **env)
        assert done.returncode == 0, (name, done.stderr)
        assert lab.manifest(volume) == original, name
        fetched = new_host / "daily" / archive.name
        assert fetched.read_bytes() == archive.read_bytes(), name
        assert fetched.with_name(fetched.name + ".sha256").read_text().split()[0] == \
            hashlib.sha256(archive.read_bytes()).hexdigest()


def scrape(lab) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{lab.metrics_port}/metrics", timeout=5) as r:
        return without_node(r.read().decode())


def offsite_stamp(text: str, destination: str) -> float | None:
    found = re.search(r'backup_sidecar_offsite_last_success_timestamp_seconds\{destination="%s",target="app",'
                      r'volume="data"\} (\S+)' % destination, text)
    return float(found.group(1)) if found else None


@pytest.mark.slow  # outage and catch-up of a remote; the default run keeps test_copies_mirror_the_backup_volume_are_verified_and_rotated_alike
def test_one_destination_stopped_during_a_backup_the_others_get_their_copy_and_it_catches_up(lab, servers, env):
    nas, dav = servers
    env = {**env, "S3_SYNC_INTERVAL": "1"}
    volume = lab.volume("data")
    lab.populate(volume, "dd if=/dev/urandom of=big bs=1M count=3 2>/dev/null")
    lab.workload("app", {"backup.enable": "true", "backup.strategy": "hot"}, {volume: "/data"})

    # A slow link, so the WebDAV server can be stopped while the archive goes up to it.
    backup, log = lab.start_cli("backup", "app", log_name="backup.log", RCLONE_BWLIMIT="1M",
                                BACKUP_PROGRESS_INTERVAL="0.2", **env)
    wait_for(lambda: any(r["message"] == "upload progress" and r.get("destination") == "dav"
                         for r in log_records(log)), timeout=120, what="the upload to dav to be under way")
    dav.stop()
    try:
        assert backup.wait(120) == 0, log.read_text()[-3000:]  # the backup and two of three copies succeeded
        [archive] = lab.archives()
        rel = f"daily/{archive.name}"
        held = copies(servers, env)
        assert held["nas"][rel] == held["local"][rel] == archive.read_bytes()
        assert rel + ".sha256" not in held["dav"]  # at most a cut-off upload: never counted, listed or restored
        failed = [r for r in log_records(log) if r["message"].startswith("off-site copy failed")]
        assert failed and {r["destination"] for r in failed} == {"dav"}
        plan = json.loads(lab.cli("plan", "--json", **env).stdout)
        [row] = plan["targets"]
        assert row["copies"] == 3 and row["destinations"]["dav"] == "missing"
        assert row["destinations"]["nas"].startswith("verified") and row["destinations"]["local"].startswith("verified")
        table = lab.cli("plan", **env).stdout
        assert "dav: missing" in table and "nas: verified" in table

        daemon, log = lab.start_cli("run", log_name="daemon.log", **env)
        wait_for(lambda: 'backup_sidecar_copies{target="app"} 3.0' in _try_scrape(lab), timeout=60,
                 what="the metrics to count the backup volume, nas and local")
        text = scrape(lab)
        assert offsite_stamp(text, "nas") > 0 and offsite_stamp(text, "local") > 0
        assert offsite_stamp(text, "dav") == 0
    finally:
        dav.start()

    wait_for(lambda: rel + ".sha256" in dav.files("host1"), timeout=90, what="the daemon's next cycle to catch dav up")
    wait_for(lambda: 'backup_sidecar_copies{target="app"} 4.0' in _try_scrape(lab), timeout=60,
             what="the metrics to count dav's copy")
    assert offsite_stamp(scrape(lab), "dav") > 0
    assert dav.files("host1")[rel] == archive.read_bytes()
    plan = json.loads(lab.cli("plan", "--json", **env).stdout)
    assert all(s.startswith("verified") for s in plan["targets"][0]["destinations"].values())
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    assert any(r["message"] == "off-site copy verified" and r.get("destination") == "dav" for r in log_records(log))


def _try_scrape(lab) -> str:
    try:
        return scrape(lab)
    except OSError:
        return ""


@pytest.mark.slow  # a secrets grep (the secrets group); test_offsite's and test_secrets' run in CI too
def test_the_sftp_password_is_in_no_output_nor_log(lab, servers, env, tmp_path):
    nas, _dav = servers
    obscured = Path(env["RCLONE_CONFIG_NAS_PASS_FILE"]).read_text().strip()
    volume = lab.volume("data")
    lab.populate(volume, "echo secret-test > s.txt")
    lab.workload("app", {"backup.enable": "true", "backup.strategy": "hot"}, {volume: "/data"})
    outputs = []
    debug = {**env, "LOG_LEVEL": "DEBUG"}
    for args in (("backup", "app"), ("sync",), ("list", "--remote"), ("list",), ("plan",), ("prune", "--dry-run"),
                 ("restore", "app", "--volume", "data", "--from", "nas", "--force")):
        done = lab.cli(*args, **debug)
        assert done.returncode == 0, (args, done.stderr)
        outputs.append(done.stdout + done.stderr)
    # Failures quote rclone's errors: a refused connection and a refused login.
    nas.stop()
    down = lab.cli("sync", **debug)
    nas.start()
    wrong = tmp_path / "wrong-pass"
    wrong.write_text(obscure("not-the-password") + "\n")
    refused = lab.cli("list", "--remote", "nas", **{**debug, "RCLONE_CONFIG_NAS_PASS_FILE": str(wrong)})
    assert down.returncode != 0 and "nas" in down.stderr and "connection refused" in down.stderr
    assert refused.returncode != 0 and "unable to authenticate" in refused.stderr
    outputs += [down.stdout + down.stderr, refused.stdout + refused.stderr]
    for text in outputs:
        assert PASSWORD not in text and obscured not in text
