"""run_restore through a worker container (sidecar/unpack.py) against the fake engine, whose
workers run `python -m sidecar.worker.extract` as host processes: the worker's mounts and
rights, decryption with no key in its arguments, the fallback to the engine's archive API
(and the log saying which path ran), and a worker failure after emptying."""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import tarfile

import pytest

from sidecar import readers, unpack
from sidecar.actions.backup import run_backup
from sidecar.actions.restore import run_restore
from sidecar.archive import write_checksum
from sidecar.errors import RestoreLeftStopped
from sidecar.model import ContainerState
from sidecar.readers.worker import VOLUME_ROOT, WorkerReader

from .conftest import app_labels, tree

IMAGE = "backup-sidecar:fake"


@pytest.fixture(autouse=True)
def fresh_worker_reader(monkeypatch):
    monkeypatch.setitem(readers.READERS, "worker", WorkerReader())


@pytest.fixture
def wctx(make_ctx, engine):
    engine.worker_images.add(IMAGE)
    return make_ctx(BACKUP_WORKER_IMAGE=IMAGE)


def _backed_up(engine, ctx, data):
    app = engine.add_container("app-1", app_labels(), {"/data": data})
    assert run_backup(ctx, ctx.discover().find("app")).ok
    before = tree(data)
    engine.calls.clear()
    return app, before


def _extract_workers(engine):
    return [spec for spec in engine.workers_run if spec.purpose == unpack.PURPOSE]


def _paths(caplog) -> list[str]:
    return [r.path for r in caplog.records if r.getMessage() == "volume unpacked"]


def test_the_restore_runs_the_checked_extractor_in_a_worker(engine, wctx, data, caplog):
    caplog.set_level(logging.INFO)
    app, before = _backed_up(engine, wctx, data)
    (data / "junk.txt").write_text("junk\n")
    outcome = run_restore(wctx, "app", "data", force=True)
    assert tree(data) == before and outcome.members > 0
    assert engine.names("put_archive") == []  # nothing went through the engine's tar reader
    [spec] = _extract_workers(engine)
    assert spec.user == "0" and spec.image == IMAGE and "--sha256" in spec.command
    assert set(spec.capabilities) == {"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID"}
    volume, store = spec.mounts[0], spec.mounts[-1]
    assert volume.target == VOLUME_ROOT and not volume.read_only
    assert store.read_only and store.source == str(wctx.settings.backup_dir)
    assert _paths(caplog) == ["worker"]
    assert engine.state(app.id) is ContainerState.RUNNING


def test_an_encrypted_archive_is_decrypted_in_the_worker_with_no_key_in_its_arguments(engine, make_ctx, data):
    engine.worker_images.add(IMAGE)
    ctx = make_ctx(BACKUP_WORKER_IMAGE=IMAGE, BACKUP_AGE_PASSPHRASE="correct horse battery")
    _, before = _backed_up(engine, ctx, data)
    shutil.rmtree(data)
    data.mkdir()
    run_restore(ctx, "app", "data")
    assert tree(data) == before
    [spec] = _extract_workers(engine)
    assert "--keys-file" in spec.command and not any("correct horse" in arg for arg in spec.command)
    assert list((ctx.store.state_dir / "workers").iterdir()) == []  # the key file is gone


def test_without_a_usable_image_the_engine_api_path_runs_and_says_why(engine, make_ctx, data, caplog):
    caplog.set_level(logging.INFO)
    ctx = make_ctx(BACKUP_WORKER_IMAGE="no-such-image")
    _, before = _backed_up(engine, ctx, data)
    shutil.rmtree(data)
    data.mkdir()
    run_restore(ctx, "app", "data")
    assert tree(data) == before and _extract_workers(engine) == []
    assert engine.names("put_archive")
    assert _paths(caplog) == ["engine-api"]
    [fallback] = [r for r in caplog.records if getattr(r, "path", None) == "engine-api" and getattr(r, "reason", "")]
    assert "no-such-image" in fallback.reason


def test_a_worker_that_runs_none_of_our_code_falls_back_before_writing(engine, wctx, data, caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    _, before = _backed_up(engine, wctx, data)
    shutil.rmtree(data)
    data.mkdir()
    monkeypatch.setattr(unpack, "MODULE", ("python", "-m", "sidecar.worker.not_in_this_image"))
    run_restore(wctx, "app", "data")
    assert tree(data) == before
    assert len(_extract_workers(engine)) == 1 and engine.names("put_archive")
    assert _paths(caplog) == ["engine-api"]
    assert any("could not run the extractor" in str(getattr(r, "reason", "")) for r in caplog.records)


def test_a_worker_failure_after_emptying_leaves_the_container_stopped(engine, wctx, data):
    app, _ = _backed_up(engine, wctx, data)
    (data / "new.txt").write_text("newer data\n")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        link = tarfile.TarInfo("./h")
        link.type, link.linkname = tarfile.LNKTYPE, "missing"
        tar.addfile(link)
    path = wctx.settings.backup_dir / "daily" / "app_data_2026-01-01_daily.tar"
    path.write_bytes(raw.getvalue())
    write_checksum(path, hashlib.sha256(raw.getvalue()).hexdigest())
    with pytest.raises(RestoreLeftStopped, match="worker container"):
        run_restore(wctx, "app", "data", archive=str(path), force=True)
    assert engine.state(app.id) is ContainerState.EXITED
    assert [e.action for e in wctx.journal.entries()] == ["left-stopped"]
    assert engine.names("put_archive") == []  # no second unpack after the worker began writing
