"""actions/prune.py on a real backup folder: promotion by hard links, deletion, dry run,
refusal, busy targets. No Docker: the engine is never used."""

from __future__ import annotations

import hashlib
import logging
import os
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from sidecar.actions.context import Context
from sidecar.actions.prune import promote, run_prune
from sidecar.tarball.archive import write_checksum
from sidecar.core.naming import ArchiveName
from sidecar.core.retention import DEFAULT_KEEP, Keep, parse_keep
from sidecar.core.schedule import Frequency
from sidecar.core.settings import load_settings
from sidecar.store.storage import BackupStore, Journal, StoredArchive


@pytest.fixture
def ctx(tmp_path) -> Context:
    settings = load_settings({"BACKUP_DIR": str(tmp_path / "backups")})
    store = BackupStore(settings.backup_dir, settings.file_mode)
    store.prepare()
    return Context(settings, None, store, Journal(store.state_dir / "journal.json"))  # type: ignore[arg-type]


def write(ctx: Context, backup_name: str, volume_name: str, day: date, checksum: bool = True,
          frequency: Frequency = Frequency.DAILY) -> StoredArchive:
    """A finished archive with distinct contents (and its checksum), as a backup leaves it."""
    name = ArchiveName(datetime(day.year, day.month, day.day), backup_name, volume_name, frequency, ".tar.zst")
    path = ctx.store.path(name.relpath)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = f"{name.filename}\n".encode() * 2000  # several blocks
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, ctx.settings.file_mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    if checksum:
        write_checksum(path, hashlib.sha256(data).hexdigest(), ctx.settings.file_mode)
    return ctx.store.archive_at(path)


def backup(ctx: Context, backup_name: str, volume_name: str, day: date, keep: Keep, checksum: bool = True):
    archive = write(ctx, backup_name, volume_name, day, checksum)
    return archive, promote(ctx, archive, keep)


def days(first: date, count: int) -> list[date]:
    return [first + timedelta(days=i) for i in range(count)]


def tree(ctx: Context) -> set[str]:
    """Every file under BACKUP_DIR but the sidecar's own state."""
    root = ctx.store.root
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".sidecar" not in p.parts}


def used_bytes(ctx: Context) -> int:
    """Disk space of the archive files, each inode counted once (as du does)."""
    seen, total = set(), 0
    for p in ctx.store.root.rglob("*.tar.zst"):
        st = p.stat()
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def fixed(keep: Keep):
    return lambda _service: keep


# --- promote ------------------------------------------------------------------------------

def test_promote_links_the_first_of_each_week_and_month(ctx):
    made = {}
    for day in days(date(2026, 2, 27), 5):  # Friday 02-27 .. Tuesday 03-03
        archive, links = backup(ctx, "app", "data", day, DEFAULT_KEEP)
        made[day.isoformat()] = [str(link.path.relative_to(ctx.store.root)) for link in links]
        for link in links:
            assert link.path.stat().st_ino == archive.path.stat().st_ino
            assert link.path.stat().st_dev == archive.path.stat().st_dev
            assert link.has_checksum and link.size == archive.size
    assert made == {
        "2026-02-27": ["weekly/app_data_2026-02-27_weekly.tar.zst", "monthly/app_data_2026-02-27_monthly.tar.zst"],
        "2026-02-28": [],
        "2026-03-01": ["monthly/app_data_2026-03-01_monthly.tar.zst"],
        "2026-03-02": ["weekly/app_data_2026-03-02_weekly.tar.zst"],
        "2026-03-03": [],
    }


def test_promoted_links_use_no_extra_space(ctx):
    write(ctx, "app", "data", date(2026, 2, 28))
    archive = write(ctx, "app", "data", date(2026, 3, 2))
    before = used_bytes(ctx)
    assert before > 0
    links = promote(ctx, archive, DEFAULT_KEEP)
    assert len(links) == 2  # first of the ISO week and of March
    assert used_bytes(ctx) == before
    assert archive.path.stat().st_nlink == 3


def test_promote_skips_levels_kept_0_and_other_targets_do_not_count(ctx):
    write(ctx, "db", "data", date(2026, 3, 1), frequency=Frequency.MONTHLY)
    archive = write(ctx, "app", "data", date(2026, 3, 2))
    links = promote(ctx, archive, parse_keep("weekly=0"))
    assert [link.path.parent.name for link in links] == ["monthly"]
    assert "weekly" not in {p.split("/")[0] for p in tree(ctx)}


def test_promote_logs_a_link_it_cannot_make_and_goes_on(ctx, caplog):
    archive = write(ctx, "app", "data", date(2026, 3, 2))
    stray = ctx.store.path("weekly/app_data_2026-03-02_weekly.tar.zst.sha256")
    stray.parent.mkdir(mode=0o700)
    stray.write_text("not ours\n")
    with caplog.at_level(logging.INFO, logger="sidecar.actions.prune"):
        links = promote(ctx, archive, DEFAULT_KEEP)
    assert [link.path.parent.name for link in links] == ["monthly"]
    assert stray.read_text() == "not ours\n"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].getMessage() == "archive not promoted"
    assert (errors[0].target, errors[0].volume, errors[0].frequency) == ("app", "data", "weekly")
    assert "already exists" in errors[0].error


# --- run_prune ---------------------------------------------------------------------------

TEN_DAYS = days(date(2026, 2, 26), 10)  # Thursday 02-26 .. Saturday 03-07


def fill(ctx: Context, keep: Keep, backup_names=("app",)) -> None:
    for day in TEN_DAYS:
        for backup_name in backup_names:
            backup(ctx, backup_name, "data", day, keep)


KEPT_3_2_2 = {
    "daily/app_data_2026-03-05_daily.tar.zst", "daily/app_data_2026-03-06_daily.tar.zst",
    "daily/app_data_2026-03-07_daily.tar.zst",
    "weekly/app_data_2026-02-26_weekly.tar.zst", "weekly/app_data_2026-03-02_weekly.tar.zst",
    "monthly/app_data_2026-02-26_monthly.tar.zst", "monthly/app_data_2026-03-01_monthly.tar.zst",
}


def with_checksums(relpaths) -> set[str]:
    return set(relpaths) | {p + ".sha256" for p in relpaths}


def test_run_prune_deletes_archive_and_checksum_and_logs_each(ctx, caplog):
    keep = parse_keep("daily=3,weekly=2,monthly=2")
    fill(ctx, keep)
    before = tree(ctx)
    with caplog.at_level(logging.INFO, logger="sidecar.actions.prune"):
        result = run_prune(ctx, fixed(keep))
    assert tree(ctx) == with_checksums(KEPT_3_2_2)
    assert result.ok and not result.dry_run
    [target] = result.targets
    assert target.target == "app" and target.result == "success"
    assert {str(a.path.relative_to(ctx.store.root)) for a in target.kept} == KEPT_3_2_2
    deleted = {str(a.path.relative_to(ctx.store.root)) for a in target.deleted}
    assert with_checksums(deleted) == before - tree(ctx)
    assert len(deleted) == 7  # daily 02-26 .. 03-04
    logged = [r for r in caplog.records if r.getMessage() == "archive deleted"]
    assert sorted(r.path for r in logged) == sorted(str(a.path) for a in target.deleted)
    assert all((r.target, r.volume, r.phase) == ("app", "data", "prune") for r in logged)
    assert not any("would delete" in r.getMessage() for r in caplog.records)
    # The data of a deleted daily archive that is also a weekly stays, under the weekly name.
    weekly = ctx.store.path("weekly/app_data_2026-03-02_weekly.tar.zst")
    assert weekly.stat().st_nlink == 1
    assert weekly.read_bytes().startswith(b"app_data_2026-03-02_daily.tar.zst\n")
    # A second run has nothing left to do.
    assert run_prune(ctx, fixed(keep)).deleted == ()


def test_dry_run_deletes_nothing_and_reports(ctx, caplog):
    keep = parse_keep("daily=3,weekly=2,monthly=2")
    fill(ctx, keep)
    before = tree(ctx)
    with caplog.at_level(logging.INFO, logger="sidecar.actions.prune"):
        result = run_prune(ctx, fixed(keep), dry_run=True)
    assert tree(ctx) == before
    assert result.dry_run and result.ok
    would = {str(a.path.relative_to(ctx.store.root)) for a in result.deleted}
    assert would == {p for p in before if not p.endswith(".sha256")} - KEPT_3_2_2
    logged = [r for r in caplog.records if r.getMessage() == "would delete archive (dry run)"]
    assert sorted(r.path for r in logged) == sorted(str(a.path) for a in result.deleted)
    assert all(r.phase == "prune" and r.target == "app" and r.dry_run is True for r in logged)
    assert not any(r.getMessage() == "archive deleted" for r in caplog.records)


def test_refusal_leaves_that_target_in_place_and_prunes_the_others(ctx, caplog):
    fill(ctx, DEFAULT_KEEP, backup_names=("app", "db"))
    app_before = {p for p in tree(ctx) if p.split("/")[1].startswith("app_")}
    keeps = {"app": parse_keep("daily=0,weekly=0,monthly=0"), "db": parse_keep("daily=1,weekly=0,monthly=0")}
    with caplog.at_level(logging.INFO, logger="sidecar.actions.prune"):
        result = run_prune(ctx, keeps.__getitem__)
    assert not result.ok
    app, db = result.targets
    assert (app.target, app.result, app.deleted) == ("app", "refused", ())
    assert "refusing to prune" in app.error and "app/data" in app.error
    assert {p for p in tree(ctx) if p.split("/")[1].startswith("app_")} == app_before
    assert (db.target, db.result) == ("db", "success")
    assert {p for p in tree(ctx) if p.split("/")[1].startswith("db_")} == with_checksums(
        {"daily/db_data_2026-03-07_daily.tar.zst"})
    refused = [r for r in caplog.records if r.getMessage() == "prune refused"]
    assert len(refused) == 1 and refused[0].levelno == logging.ERROR and refused[0].target == "app"


def test_a_busy_target_is_skipped_but_a_dry_run_is_not(ctx):
    keep = parse_keep("daily=1,weekly=0,monthly=0")
    fill(ctx, keep, backup_names=("app", "db"))
    with ctx.store.target_lock("app"):
        app_before = {p for p in tree(ctx) if "app_" in p}
        dry = run_prune(ctx, fixed(keep), dry_run=True)
        assert [t.result for t in dry.targets] == ["success", "success"]
        assert len(dry.targets[0].deleted) == 9
        result = run_prune(ctx, fixed(keep))
    assert [(t.target, t.result) for t in result.targets] == [("app", "skipped"), ("db", "success")]
    assert result.ok  # busy is not a failure: the next run prunes it
    assert {p for p in tree(ctx) if "app_" in p} == app_before
    assert len(result.targets[1].deleted) == 9


def test_only_the_named_service(ctx):
    keep = parse_keep("daily=1,weekly=0,monthly=0")
    fill(ctx, keep, backup_names=("app", "my_app"))
    asked = []
    result = run_prune(ctx, lambda s: asked.append(s) or keep, backup_name="my_app")
    assert [t.target for t in result.targets] == ["my_app"]
    assert asked == ["my_app"]
    assert len([p for p in tree(ctx) if p.startswith("daily/app_")]) == 20  # untouched, checksums included
    assert {p for p in tree(ctx) if p.startswith("daily/my_app_")} == with_checksums(
        {"daily/my_app_data_2026-03-07_daily.tar.zst"})
    assert run_prune(ctx, fixed(keep), backup_name="nobody").targets == ()


def test_the_newest_good_archive_survives_a_newer_one_without_checksum(ctx):
    keep = parse_keep("daily=1,weekly=0,monthly=0")
    for day in days(date(2026, 3, 2), 3):
        backup(ctx, "app", "data", day, keep)
    backup(ctx, "app", "data", date(2026, 3, 5), keep, checksum=False)  # a crash before the checksum
    run_prune(ctx, fixed(keep))
    assert tree(ctx) == {
        "daily/app_data_2026-03-04_daily.tar.zst", "daily/app_data_2026-03-04_daily.tar.zst.sha256",
        "daily/app_data_2026-03-05_daily.tar.zst",
    }


def test_a_deletion_that_fails_is_reported_and_the_others_go_on(ctx, monkeypatch, caplog):
    keep = parse_keep("daily=1,weekly=0,monthly=0")
    fill(ctx, keep)
    real_delete = BackupStore.delete
    victim = "app_data_2026-02-28_daily.tar.zst"

    def delete(self, archive):
        if archive.path.name == victim:
            raise PermissionError(13, "Permission denied")
        real_delete(self, archive)

    monkeypatch.setattr(BackupStore, "delete", delete)
    with caplog.at_level(logging.INFO, logger="sidecar.actions.prune"):
        result = run_prune(ctx, fixed(keep))
    [target] = result.targets
    assert target.result == "failure" and not result.ok
    assert victim in target.error and "Permission denied" in target.error
    assert len(target.deleted) == 8
    assert tree(ctx) == with_checksums({"daily/" + victim, "daily/app_data_2026-03-07_daily.tar.zst"})
    failed = [r for r in caplog.records if r.getMessage() == "archive could not be deleted"]
    assert len(failed) == 1 and failed[0].path == str(ctx.store.path("daily/" + victim))


def test_prune_reads_dates_from_names_not_file_times(ctx):
    keep = parse_keep("daily=2,weekly=0,monthly=0")
    archives = [backup(ctx, "app", "data", day, keep)[0] for day in days(date(2026, 3, 1), 4)]
    # make the oldest archive look newest on disk and the newest look oldest
    os.utime(archives[0].path, (2_000_000_000, 2_000_000_000))
    os.utime(archives[-1].path, (1_000_000_000, 1_000_000_000))
    run_prune(ctx, fixed(keep))
    assert {p for p in tree(ctx) if not p.endswith(".sha256")} == {
        "daily/app_data_2026-03-03_daily.tar.zst", "daily/app_data_2026-03-04_daily.tar.zst"}


def test_partials_and_foreign_files_are_left_alone(ctx):
    keep = parse_keep("daily=1,weekly=0,monthly=0")
    fill(ctx, keep)
    others = ["daily/app_data_2026-03-08_daily.tar.zst.partial", "daily/notes.txt",
              "daily/app_data_2026-02-01_daily.tar.zst.sha256"]  # an orphan checksum
    for rel in others:
        Path(ctx.store.path(rel)).write_text("x")
    run_prune(ctx, fixed(keep))
    assert tree(ctx) == with_checksums({"daily/app_data_2026-03-07_daily.tar.zst"}) | set(others)


def test_keep_for_none_leaves_a_target_alone(ctx, caplog):
    keep = parse_keep("daily=1,weekly=0,monthly=0")
    fill(ctx, keep, backup_names=("app", "db"))
    app_before = {p for p in tree(ctx) if "/app_" in p}
    with caplog.at_level(logging.INFO, logger="sidecar.actions.prune"):
        result = run_prune(ctx, {"app": None, "db": keep}.__getitem__)
    assert [(t.target, t.result) for t in result.targets] == [("app", "skipped"), ("db", "success")]
    assert result.ok
    assert {p for p in tree(ctx) if "/app_" in p} == app_before
    assert {p for p in tree(ctx) if "/db_" in p} == with_checksums({"daily/db_data_2026-03-07_daily.tar.zst"})
    skipped = [r for r in caplog.records if r.getMessage() == "prune skipped: no keep values for this target"]
    assert [r.target for r in skipped] == ["app"]
