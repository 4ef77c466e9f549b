"""The off-site actions against FakeDestinations, without Docker: run_sync (upload,
promotion as a server-side copy, verification, an outage that heals, two destinations
with one down), run_remote_prune, fetch_from_remote, run_list_remote and copy_states."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import pyrage
import pytest

from sidecar.actions import sync
from sidecar.actions.backup import run_backup
from sidecar.actions.context import Context
from sidecar.actions.listing import run_list, run_list_remote
from sidecar.actions.restore import fetch_from_remote
from sidecar.actions.status import copy_states
from sidecar.actions.sync import copy_index, run_remote_prune, run_sync
from sidecar.tarball.archive import read_checksum, sha256_file, write_checksum
from sidecar.destinations import Destination
from sidecar.core.errors import ChecksumMismatch, ConfigError, NotFound
from sidecar.core.retention import parse_keep
from sidecar.core.settings import load_settings
from sidecar.store.storage import BackupStore, Journal
from tests.fakes.destination import FakeDestination
from tests.unit.helpers import container


def daily(day: int, backup_name: str = "app", volume: str = "data") -> str:
    return f"daily/{backup_name}_{volume}_2026-11-{day:02d}_daily.tar.zst"


@pytest.fixture
def make_ctx(tmp_path):
    def make(*destinations: FakeDestination) -> Context:
        settings = load_settings({"BACKUP_DIR": str(tmp_path / "backups")})
        store = BackupStore(settings.backup_dir, settings.file_mode)
        store.prepare()
        return Context(settings, None, store, Journal(store.state_dir / "journal.json"),
                       destinations=tuple(destinations))
    return make


def write_archive(ctx: Context, relpath: str, data: bytes | None = None) -> Path:
    path = ctx.store.path(relpath)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if data is not None else os.urandom(100) + relpath.encode())
    write_checksum(path, sha256_file(path))
    return path


def promote(ctx: Context, relpath: str, frequency: str) -> str:
    """A promoted copy as backup writes it: a hard link in the other folder, its own checksum."""
    src = ctx.store.path(relpath)
    rel = f"{frequency}/{src.name.replace('_daily', '_' + frequency)}"
    dst = ctx.store.path(rel)
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.link(src, dst)
    write_checksum(dst, read_checksum(src))
    return rel


def test_fake_destination_satisfies_the_protocol():
    assert isinstance(FakeDestination(), Destination)


def test_sync_uploads_what_is_missing_once_and_records_it(make_ctx):
    s3 = FakeDestination("s3")
    ctx = make_ctx(s3)
    a, b = write_archive(ctx, daily(1)), write_archive(ctx, daily(2))

    report = run_sync(ctx)

    assert report.ok and not report.skipped
    result = report.result("s3")
    assert result.uploaded == (daily(1), daily(2)) and result.copied == ()
    assert s3.objects[daily(1)].data == a.read_bytes() and s3.objects[daily(2)].sha256 == read_checksum(b)
    entries = copy_index(ctx, "s3").entries()
    assert set(entries) == {daily(1), daily(2)} and entries[daily(1)].local_sha256 == read_checksum(a)
    assert (ctx.store.state_dir / "remote.json").exists()  # the "s3" index keeps its old file name

    again = run_sync(ctx)
    assert again.ok and again.result("s3").uploaded == () and s3.calls["upload"] == 2


def test_promoted_copy_becomes_a_server_side_copy(make_ctx):
    s3 = FakeDestination()
    ctx = make_ctx(s3)
    write_archive(ctx, daily(1))
    weekly = promote(ctx, daily(1), "weekly")

    result = run_sync(ctx).result("s3")

    assert result.uploaded == (daily(1),) and result.copied == (weekly,)
    assert s3.calls["upload"] == 1 and s3.calls["copy"] == 1
    assert s3.objects[weekly].data == s3.objects[daily(1)].data


def test_an_object_already_there_is_verified_not_uploaded_again(make_ctx):
    s3 = FakeDestination()
    ctx = make_ctx(s3)
    good = write_archive(ctx, daily(1))
    write_archive(ctx, daily(2))
    s3.put(daily(1), good.read_bytes())  # a lost index: the copy is there
    s3.put(daily(2), b"another host's bytes")  # same name, other content: replaced

    result = run_sync(ctx).result("s3")

    assert result.verified == (daily(1),) and result.uploaded == (daily(2),)
    assert s3.objects[daily(2)].data == ctx.store.path(daily(2)).read_bytes()
    assert set(copy_index(ctx, "s3").entries()) == {daily(1), daily(2)}


def test_an_archive_that_does_not_match_its_checksum_is_not_sent(make_ctx):
    s3 = FakeDestination()
    ctx = make_ctx(s3)
    path = write_archive(ctx, daily(1))
    path.write_bytes(b"damaged after the checksum was written")

    report = run_sync(ctx)

    assert not report.ok
    [(relpath, error)] = report.result("s3").failed
    assert relpath == daily(1) and "not uploading" in error
    assert s3.objects == {} and copy_index(ctx, "s3").entries() == {}


def test_an_outage_leaves_archives_pending_then_the_next_sync_catches_up(make_ctx):
    s3 = FakeDestination()
    ctx = make_ctx(s3)
    write_archive(ctx, daily(1))
    write_archive(ctx, daily(2))
    s3.down = True

    down = run_sync(ctx).result("s3")

    assert not down.ok and "could not connect" in down.error
    assert down.pending == (daily(1), daily(2)) and s3.objects == {}
    assert all(ctx.store.path(r).exists() for r in down.pending)  # the local archives are untouched

    s3.down = False
    healed = run_sync(ctx)
    assert healed.ok and healed.result("s3").uploaded == (daily(1), daily(2))


def test_unreachable_during_uploads_stops_that_destination_only(make_ctx):
    flaky, steady = FakeDestination("s3"), FakeDestination("nas")
    ctx = make_ctx(flaky, steady)
    for day in (1, 2, 3):
        write_archive(ctx, daily(day))
    original = flaky.upload

    def upload_then_fall_over(path, relpath, sha256):
        obj = original(path, relpath, sha256)
        flaky.down = True  # the store goes away after the first archive
        return obj

    flaky.upload = upload_then_fall_over
    report = run_sync(ctx)

    first = report.result("s3")
    assert first.uploaded == (daily(1),) and [r for r, _ in first.failed] == [daily(2)]
    assert first.pending == (daily(3),)  # not tried: the store was unreachable
    assert report.result("nas").uploaded == (daily(1), daily(2), daily(3)) and report.result("nas").ok


def test_two_destinations_one_down_the_other_gets_its_copies(make_ctx):
    s3, nas = FakeDestination("s3"), FakeDestination("nas")
    ctx = make_ctx(s3, nas)
    write_archive(ctx, daily(1))
    nas.down = True

    report = run_sync(ctx)

    assert not report.ok
    assert report.result("s3").ok and report.result("s3").uploaded == (daily(1),)
    assert report.result("nas").pending == (daily(1),)
    assert set(copy_index(ctx, "s3").entries()) == {daily(1)} and copy_index(ctx, "nas").entries() == {}
    assert (ctx.store.state_dir / "remote-nas.json").exists() is False

    target = ctx.discover([container()]).targets[0]
    state = copy_states(ctx, [target])[(target.backup_name, "data")]
    assert state.copies == 2 and state.offsite["s3"] is not None and state.offsite["nas"] is None
    [row] = run_list(ctx)
    assert row.offsite == "verified: s3"

    nas.down = False
    healed = run_sync(ctx)
    assert healed.ok and healed.result("nas").uploaded == (daily(1),) and healed.result("s3").uploaded == ()
    state = copy_states(ctx, [target])[(target.backup_name, "data")]
    assert state.copies == 3 and set(state.offsite) == {"s3", "nas"} and all(state.offsite.values())
    assert run_list(ctx)[0].offsite == "verified"


def test_no_destination_means_nothing_to_sync(make_ctx):
    ctx = make_ctx()
    write_archive(ctx, daily(1))
    report = run_sync(ctx)
    assert report.skipped and report.results == ()
    assert run_remote_prune(ctx, lambda _s: parse_keep("daily=1")) == ()
    assert run_list(ctx)[0].offsite == "-"
    target = ctx.discover([container()]).targets[0]
    assert copy_states(ctx, [target])[(target.backup_name, "data")].offsite == {}


def test_an_index_written_before_destinations_is_still_read(make_ctx):
    s3 = FakeDestination()
    ctx = make_ctx(s3)
    path = write_archive(ctx, daily(1))
    s3.put(daily(1), path.read_bytes())
    old = {"copies": [{"relpath": daily(1), "local_relpath": daily(1), "sha256": read_checksum(path),
                       "local_sha256": read_checksum(path), "size": path.stat().st_size, "verified_at": 1.0}]}
    (ctx.store.state_dir / "remote.json").write_text(json.dumps(old))

    result = run_sync(ctx).result("s3")

    assert result.ok and result.uploaded == result.verified == ()
    assert s3.calls["head"] == 0 and s3.calls["upload"] == 0  # nothing checked again after the upgrade


# --- rotation --------------------------------------------------------------------------

def test_remote_prune_applies_the_local_rules_on_each_destination(make_ctx):
    s3, nas = FakeDestination("s3"), FakeDestination("nas")
    ctx = make_ctx(s3, nas)
    for day in (1, 2, 3, 4):
        write_archive(ctx, daily(day))
    run_sync(ctx)
    s3.put(daily(1, backup_name="other"), b"someone else's")
    keep = parse_keep("daily=2,weekly=0,monthly=0,hourly=0")

    dry = run_remote_prune(ctx, lambda s: keep if s == "app" else None, dry_run=True)
    assert [(r.destination, r.deleted, r.dry_run) for r in dry] == [("s3", (daily(1), daily(2)), True),
                                                                     ("nas", (daily(1), daily(2)), True)]
    assert len(s3.objects) == 5 and len(nas.objects) == 4

    nas.down = True
    results = run_remote_prune(ctx, lambda s: keep if s == "app" else None)

    by_name = {r.destination: r for r in results}
    assert by_name["s3"].ok and by_name["s3"].deleted == (daily(1), daily(2))
    assert set(s3.objects) == {daily(3), daily(4), daily(1, backup_name="other")}
    assert set(copy_index(ctx, "s3").entries()) == {daily(3), daily(4)}
    assert not by_name["nas"].ok and "could not connect" in by_name["nas"].error
    assert len(nas.objects) == 4  # untouched while down; its index too
    assert len(copy_index(ctx, "nas").entries()) == 4

    nas.down = False
    [only] = run_remote_prune(ctx, lambda s: keep, backup_name="app", destinations=["nas"])
    assert only.destination == "nas" and only.deleted == (daily(1), daily(2))


def test_remote_prune_refuses_to_delete_everything(make_ctx):
    s3 = FakeDestination()
    ctx = make_ctx(s3)
    s3.put("daily/app_data_2026-11-01_daily.tar.zst", b"x")
    [result] = run_remote_prune(ctx, lambda _s: parse_keep("daily=0,weekly=1,monthly=0,hourly=0"))
    assert result.refused == ("app",) and not result.ok and s3.objects


# --- restore --from --------------------------------------------------------------------

def test_fetch_from_remote_downloads_the_newest_with_its_checksum(make_ctx, tmp_path):
    s3 = FakeDestination("s3")
    ctx = make_ctx(s3)
    s3.put(daily(1), b"old")
    s3.put(daily(3), b"newest")
    s3.put(daily(2, volume="other"), b"another volume")

    path = fetch_from_remote(ctx, "app", "data", "latest", "s3")

    assert path == ctx.store.path(daily(3)) and path.read_bytes() == b"newest"
    assert read_checksum(path) == hashlib.sha256(b"newest").hexdigest()
    assert fetch_from_remote(ctx, "app", "data", "latest") == path and s3.calls["download"] == 1  # there already
    named = fetch_from_remote(ctx, "app", "data", daily(1).split("/")[1])
    assert named.read_bytes() == b"old"


def test_fetch_from_remote_by_destination_name_and_its_errors(make_ctx):
    s3, nas = FakeDestination("s3"), FakeDestination("nas")
    ctx = make_ctx(s3, nas)
    nas.put(daily(1), b"only on the nas")
    with pytest.raises(NotFound, match="no off-site archive of app volume data in fake://s3/"):
        fetch_from_remote(ctx, "app", "data", "latest", "s3")
    assert fetch_from_remote(ctx, "app", "data", "latest", "nas").read_bytes() == b"only on the nas"
    with pytest.raises(ConfigError, match="no off-site destination named 'usb'; configured: s3, nas"):
        fetch_from_remote(ctx, "app", "data", "latest", "usb")
    with pytest.raises(ConfigError, match="set S3_BUCKET"):
        fetch_from_remote(make_ctx(), "app", "data", "latest", "s3")
    with pytest.raises(NotFound, match="not an archive name"):
        fetch_from_remote(ctx, "app", "data", "nonsense.txt", "nas")


def test_fetch_from_remote_refuses_bytes_that_do_not_match(make_ctx):
    s3 = FakeDestination()
    ctx = make_ctx(s3)
    s3.put(daily(1), b"tampered", sha256=hashlib.sha256(b"original").hexdigest())
    with pytest.raises(ChecksumMismatch):
        fetch_from_remote(ctx, "app", "data", "latest")
    assert not ctx.store.path(daily(1)).exists()


# --- list --remote -----------------------------------------------------------------------

def test_list_remote_rows_per_destination_with_verified_flags(make_ctx):
    s3, nas = FakeDestination("s3"), FakeDestination("nas")
    ctx = make_ctx(s3, nas)
    write_archive(ctx, daily(2))
    run_sync(ctx)
    s3.put(daily(1), b"uploaded by another host")
    s3.put("images/app_latest_2026-11-26.tar.zst", b"image")
    s3.put("notes.txt", b"not ours")

    rows = run_list_remote(ctx)

    assert [(r.destination, r.path, r.verified) for r in rows] == [
        ("s3", daily(1), False), ("nas", daily(2), True), ("s3", daily(2), True),
        ("s3", "images/app_latest_2026-11-26.tar.zst", False)]
    assert rows[0].key == f"fake/{daily(1)}" and (rows[0].target, rows[0].volume, rows[0].frequency) == (
        "app", "data", "daily")
    assert [r.path for r in run_list_remote(ctx, destination="nas")] == [daily(2)]
    with pytest.raises(ConfigError, match="set S3_BUCKET"):
        run_list_remote(make_ctx())


@pytest.fixture
def encrypt_outgoing(tmp_path):
    """A context whose archives are plain on the backup volume and encrypted on their way out."""
    def make(engine=None, *destinations: FakeDestination) -> Context:
        settings = load_settings({"BACKUP_DIR": str(tmp_path / "backups"), "TZ": "UTC",
                                  "BACKUP_AGE_RECIPIENTS": str(pyrage.x25519.Identity.generate().to_public()),
                                  "BACKUP_ENCRYPT_LOCAL": "false"})
        ctx = Context.create(settings, engine)
        ctx.destinations = tuple(destinations)
        ctx.store.prepare()
        return ctx
    return make


def _disk_full_for(monkeypatch, relpath: str) -> None:
    """Encrypting `relpath`'s outgoing copy fails as on a full disk."""
    real = sync.iter_raw

    def iter_raw(path, *args):
        if str(path).endswith(relpath):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *args)
    monkeypatch.setattr(sync, "iter_raw", iter_raw)


def test_a_full_disk_while_encrypting_fails_that_archive_only(encrypt_outgoing, monkeypatch):
    s3 = FakeDestination("s3")
    ctx = encrypt_outgoing(None, s3)
    write_archive(ctx, daily(1)), write_archive(ctx, daily(2))
    _disk_full_for(monkeypatch, daily(1))

    result = run_sync(ctx).result("s3")

    assert [rel for rel, _ in result.failed] == [daily(1)] and "No space left" in result.failed[0][1]
    assert result.uploaded == (daily(2),) and set(s3.objects) == {daily(2) + ".age"}
    assert list((ctx.store.state_dir / "outgoing").iterdir()) == []


def test_a_stale_outgoing_partial_does_not_block_the_next_sync(encrypt_outgoing):
    s3 = FakeDestination("s3")
    ctx = encrypt_outgoing(None, s3)
    write_archive(ctx, daily(1))
    outgoing = ctx.store.state_dir / "outgoing"
    outgoing.mkdir()
    stale = outgoing / (Path(daily(1)).name + ".age.partial")
    stale.write_bytes(b"half an encrypted copy from a killed sync")
    (outgoing / "other_data_2026-01-01_daily.tar.zst.age").write_bytes(b"left over")

    report = run_sync(ctx)

    assert report.ok and report.result("s3").uploaded == (daily(1),)
    assert list(outgoing.iterdir()) == []


def test_rotation_runs_after_a_backup_whose_encrypted_copy_could_not_be_written(engine, encrypt_outgoing,
                                                                               monkeypatch, tmp_path):
    """The disk is full: rotation, which frees space, must still run after the backup."""
    s3 = FakeDestination("s3")
    ctx = encrypt_outgoing(engine, s3)
    engine.add_container("app-1", {"backup.enable": "true", "backup.name": "app",
                                   "backup.keep": "daily=1,weekly=0,monthly=0"}, {"/data": tmp_path / "v" / "data"})
    old = write_archive(ctx, daily(1))
    _disk_full_for(monkeypatch, ".tar.zst")  # every outgoing copy

    outcome = run_backup(ctx, ctx.discover().find("app"))

    assert outcome.ok and not old.exists()  # rotated although no copy went out
    assert [a.name.stamp.date() for a in ctx.store.archives("app")] == [ctx.now().date()]
    assert s3.objects == {}
