"""Grandfather-father-son rotation end to end: the same rules on the backup volume and
in the S3 store, after a real backup."""

from __future__ import annotations

import hashlib
import os
from datetime import date, timedelta

from .test_offsite import objects, s3_env

SEED_DAYS = [date(2025, 3, 1) + timedelta(days=i) for i in range(20)]  # 2025-03-01 .. 03-20
# First archive of each ISO week in that window (03-01 is a Saturday), and of the month.
SEED_WEEKLY = [date(2025, 3, 1), date(2025, 3, 3), date(2025, 3, 10), date(2025, 3, 17)]
SEED_MONTHLY = [date(2025, 3, 1)]


def _name(day: date, frequency: str) -> str:
    return f"app_data_{day.isoformat()}_{frequency}.tar.zst"


def _seed(backup_dir) -> None:
    for folder in ("daily", "weekly", "monthly"):
        (backup_dir / folder).mkdir(exist_ok=True, mode=0o700)
    for day in SEED_DAYS:
        path = backup_dir / "daily" / _name(day, "daily")
        data = os.urandom(256)
        path.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        (path.parent / (path.name + ".sha256")).write_text(f"{digest}  {path.name}\n")
        for frequency, days in (("weekly", SEED_WEEKLY), ("monthly", SEED_MONTHLY)):
            if day in days:
                copy = backup_dir / frequency / _name(day, frequency)
                os.link(path, copy)
                (copy.parent / (copy.name + ".sha256")).write_text(f"{digest}  {copy.name}\n")


def test_same_rules_on_disk_and_in_s3(lab, s3_server, s3_bucket):
    env = s3_env(s3_server, s3_bucket)
    _seed(lab.backup_dir)
    volume = lab.volume("data")
    lab.populate(volume, "echo today > t")
    lab.workload("app", {"backup.enable": "true", "backup.strategy": "hot",
                         "backup.keep": "daily=3,weekly=2,monthly=1"}, {volume: "/data"})

    synced = lab.cli("sync", **env)
    assert synced.returncode == 0, synced.stderr
    assert len(objects(s3_server, s3_bucket)) == len(SEED_DAYS) + len(SEED_WEEKLY) + len(SEED_MONTHLY)
    assert "copied weekly/" in synced.stdout  # promotions went up as server-side copies

    done = lab.cli("backup", "app", **env)
    assert done.returncode == 0, done.stderr
    today = next(p for p in lab.backup_dir.glob("daily/*.tar.zst") if not p.name.startswith("app_data_2025"))
    today_date = today.name.split("_")[2]

    expected = {
        f"daily/app_data_{today_date}_daily.tar.zst",
        "daily/" + _name(date(2025, 3, 20), "daily"),
        "daily/" + _name(date(2025, 3, 19), "daily"),
        f"weekly/app_data_{today_date}_weekly.tar.zst",
        "weekly/" + _name(date(2025, 3, 17), "weekly"),
        f"monthly/app_data_{today_date}_monthly.tar.zst",
    }
    local = {str(p.relative_to(lab.backup_dir)) for p in lab.backup_dir.glob("[dwm]*/*.tar.zst")}
    assert local == expected
    checksums = {str(p.relative_to(lab.backup_dir))[: -len(".sha256")] for p in lab.backup_dir.glob("[dwm]*/*.sha256")}
    assert checksums == expected
    remote = {k.removeprefix("host1/stack/") for k in objects(s3_server, s3_bucket)
              if not k.removeprefix("host1/stack/").startswith("images/")}
    assert remote == expected

    # Every deletion was logged, locally and off site.
    assert done.stderr.count('"message": "archive deleted"') == len(SEED_DAYS) + len(SEED_WEEKLY) + 1 - 3
    assert done.stderr.count('"message": "off-site copy deleted"') == len(SEED_DAYS) + len(SEED_WEEKLY) + 1 - 3


def test_prune_dry_run_deletes_nothing(lab):
    _seed(lab.backup_dir)
    lab.workload("app", {"backup.enable": "true", "backup.keep": "daily=2"}, {lab.volume("data"): "/data"})
    before = sorted(p.name for p in lab.backup_dir.rglob("*.tar.zst"))
    dry = lab.cli("prune", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "app: would delete daily/" + _name(date(2025, 3, 1), "daily") in dry.stdout
    assert "daily/" + _name(date(2025, 3, 20), "daily") not in dry.stdout
    assert sorted(p.name for p in lab.backup_dir.rglob("*.tar.zst")) == before
    real = lab.cli("prune")
    assert real.returncode == 0, real.stderr
    assert sorted(p.name for p in lab.backup_dir.glob("daily/*.tar.zst")) == [
        _name(date(2025, 3, 19), "daily"), _name(date(2025, 3, 20), "daily")]
