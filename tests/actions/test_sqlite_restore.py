"""The sqlite preset's restore on the fake engine (workers run `python -m
sidecar.worker.extract` as host processes): the archive's members come from a listing
worker (`--list`, the backup volume read-only and nothing else), the sidecar decides from
those records which volume the writing worker gets, and never parses the archive itself
(issue 19); a member that is no database is refused before anything stops; no worker, no
restore (naming BACKUP_WORKER_IMAGE)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile

import pytest
import zstandard

from sidecar.actions.sources.base import RestoreRequest
from sidecar.actions.sources.presets import sqlite
from sidecar.core.errors import RestoreError, UnsafeArchive
from sidecar.core.model import ContainerState, WorkerMount
from sidecar.readers import unpack
from sidecar.tarball.archive import write_checksum

from .conftest import app_labels

pytestmark = pytest.mark.usefixtures("fresh_worker_reader")  # conftest: one WorkerReader per test

IMAGE = "backup-sidecar:fake"
DB = b"SQLite format 3\0" + bytes(range(256)) * 16


def _refused(*args, **kwargs):
    raise AssertionError("the sidecar parsed the archive")


def _archive(ctx, members: dict[str, tuple[bytes, int]]):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, (data, mode) in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    packed = zstandard.ZstdCompressor().compress(raw.getvalue())
    folder = ctx.store.root / "daily"
    folder.mkdir(exist_ok=True)
    path = folder / "app_sqlite+dump_2026-12-08_daily.tar.zst"
    path.write_bytes(packed)
    write_checksum(path, hashlib.sha256(packed).hexdigest())
    return path


@pytest.fixture
def app(engine, tmp_path, monkeypatch):
    data = tmp_path / "root" / "data"  # the volume's folder at /data: its parent stands for the worker's /restore
    data.mkdir(parents=True)
    (data / "app.db").write_bytes(b"the newer database")
    container = engine.add_container("app-1", app_labels(preset="sqlite", sqlite_paths="/data/*.db"),
                                     {"/data": data})
    removed: list[list[str]] = []
    # The -wal/-shm removal is a helper container in the app's image (not the archive's business).
    monkeypatch.setattr(sqlite, "_remove_sidecars", lambda ctx, c, names: removed.append(names))
    return container, data, removed


def _request(engine, container, path):
    return RestoreRequest(engine.inspect(container.id), "app", sqlite.ITEM, path, force=True)


def test_the_databases_are_listed_and_written_by_workers_never_parsed_in_the_sidecar(engine, make_ctx, app,
                                                                                      monkeypatch):
    engine.worker_images.add(IMAGE)
    ctx = make_ctx(BACKUP_WORKER_IMAGE=IMAGE)
    container, data, removed = app
    path = _archive(ctx, {"data/app.db": (DB, 0o640)})
    monkeypatch.setattr("sidecar.tarball.extract._Pass.__init__", _refused)
    plans, real = [], unpack.unpack

    def through_a_root(engine_, how, plan):
        """The fake runs workers as host processes: /restore (a folder holding the volumes'
        mounts in a real worker) is the volume folder's parent here."""
        plans.append((how, plan))
        root = WorkerMount("bind", str(data.parent), sqlite.RESTORE_ROOT, read_only=False)
        return real(engine_, how, dataclasses.replace(plan, mounts=(root, plan.mounts[-1])))

    monkeypatch.setattr(unpack, "unpack", through_a_root)
    outcome = sqlite.restore(ctx, _request(engine, container, path))
    assert (data / "app.db").read_bytes() == DB and (data / "app.db").stat().st_mode & 0o777 == 0o640
    assert outcome.members == 1 and removed == [["data/app.db"]]
    listing, _writer = [s for s in engine.workers_run if s.purpose == unpack.PURPOSE]
    assert "--list" in listing.command and "--only=data/*.db" in listing.command
    assert [(m.source, m.read_only) for m in listing.mounts] == [(str(ctx.settings.backup_dir), True)]
    [(how, plan)] = plans  # the writer's mounts, chosen from the listing's records
    assert len(plan.mounts) == 2 and plan.mounts[-1].read_only  # the volume and the backup volume, nothing else
    assert plan.mounts[0].target == sqlite.RESTORE_ROOT + "/data" and not plan.mounts[0].read_only
    assert how.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert engine.state(container.id) is ContainerState.RUNNING and engine.running_workers() == []


def test_a_member_that_is_no_database_is_refused_before_anything_stops(engine, make_ctx, app, monkeypatch):
    engine.worker_images.add(IMAGE)
    ctx = make_ctx(BACKUP_WORKER_IMAGE=IMAGE)
    container, data, removed = app
    path = _archive(ctx, {"data/app.db": (DB, 0o640), "usr/local/bin/backdoor": (b"#!/bin/sh\n", 0o4755)})
    monkeypatch.setattr("sidecar.tarball.extract._Pass.__init__", _refused)
    with pytest.raises(UnsafeArchive, match="usr/local/bin/backdoor"):
        sqlite.restore(ctx, _request(engine, container, path))
    assert (data / "app.db").read_bytes() == b"the newer database" and removed == []
    assert engine.names("stop") == [] and engine.state(container.id) is ContainerState.RUNNING
    assert [s for s in engine.workers_run if s.purpose == unpack.PURPOSE and "--list" not in s.command] == []


def test_without_a_worker_the_restore_fails_closed_naming_the_setting(engine, make_ctx, app, monkeypatch):
    ctx = make_ctx(BACKUP_WORKER_IMAGE="no-such-image")
    container, data, removed = app
    path = _archive(ctx, {"data/app.db": (DB, 0o640)})
    monkeypatch.setattr("sidecar.tarball.extract._Pass.__init__", _refused)
    with pytest.raises(RestoreError) as err:
        sqlite.restore(ctx, _request(engine, container, path))
    assert "BACKUP_WORKER_IMAGE" in str(err.value) and "no-such-image" in str(err.value)
    assert (data / "app.db").read_bytes() == b"the newer database" and removed == []
    assert engine.names("stop") == []


def test_more_members_than_databases_are_refused_and_a_listed_name_is_bounded(engine, make_ctx, app, monkeypatch):
    engine.worker_images.add(IMAGE)
    ctx = make_ctx(BACKUP_WORKER_IMAGE=IMAGE)
    container, data, removed = app
    path = _archive(ctx, {"data/a.db": (DB, 0o640), "data/b.db": (DB, 0o640)})
    monkeypatch.setattr(sqlite, "MAX_DATABASES", 1)
    with pytest.raises(RestoreError, match="more than 1 members"):
        sqlite.restore(ctx, _request(engine, container, path))
    assert engine.names("stop") == [] and not (data / "a.db").exists() and engine.running_workers() == []
    record = {"name": "x" * 5000, "kind": "file", "mode": 0o644, "uid": 0, "gid": 0, "mtime_ns": 0, "size": 0,
              "realsize": 0}
    with pytest.raises(RestoreError, match="MAX_PATH"):
        unpack._member(record, path.name)
    with pytest.raises(RestoreError, match="cannot read"):
        unpack._member({**record, "name": "a", "kind": "device"}, path.name)
