"""run_restore through a worker container (sidecar/readers/unpack.py) against the fake engine, whose
workers run `python -m sidecar.worker.extract` as host processes: the worker's mounts and
rights, one worker per restore (it waits for the stop, reads the archive once into a staging
folder and swaps it in on the sidecar's word; two passes with nested mounts), decryption with
no key in its arguments, no worker no restore (before anything stops, naming
BACKUP_WORKER_IMAGE), the room check, a refusal late in the archive leaving the old data, and
a worker failure once the swap began."""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import tarfile

import pytest

from sidecar import readers
from sidecar.readers import unpack
from sidecar.actions.backup import run_backup
from sidecar.actions.restore import run_restore
from sidecar.tarball.archive import write_checksum
from sidecar.core.errors import EngineError, RestoreError, RestoreLeftStopped
from sidecar.core.model import ContainerInfo, ContainerState, Mount
from sidecar.readers.worker import VOLUME_ROOT, WorkerReader

from .conftest import app_labels, tree

pytestmark = pytest.mark.usefixtures("fresh_worker_reader")  # conftest: one WorkerReader per test

IMAGE = "backup-sidecar:fake"




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
    assert spec.user == "0" and spec.image == IMAGE and "--one-pass" in spec.command  # one worker checks and writes
    assert set(spec.capabilities) == {"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID"}
    volume, store = spec.mounts[0], spec.mounts[-1]
    assert volume.target == VOLUME_ROOT and not volume.read_only
    assert store.read_only and store.source == str(wctx.settings.backup_dir)
    assert _paths(caplog) == ["worker"]
    assert engine.state(app.id) is ContainerState.RUNNING


def test_one_worker_writes_once_and_swaps_and_the_sidecar_reads_no_archive(engine, wctx, data, monkeypatch):
    """Issue 19 (restore speed): no probe worker, no room worker, no helper container to
    empty the volume, no verify pass in the sidecar; the one worker starts before the stop."""
    app, before = _backed_up(engine, wctx, data)
    (data / "junk.txt").write_text("junk\n")
    engine.workers_run.clear()  # the backup's
    monkeypatch.setattr("sidecar.tarball.extract._Pass.__init__", _refused("the sidecar read the archive"))
    run_restore(wctx, "app", "data", force=True)
    assert tree(data) == before and engine.state(app.id) is ContainerState.RUNNING
    assert [spec.purpose for spec in engine.workers_run] == [unpack.PURPOSE]
    order = [c[0] for c in engine.calls if c[0] in ("run_worker", "stop", "run_helper", "start")]
    assert order == ["run_worker", "stop", "start"]
    assert engine.running_workers() == []


def _refused(why):
    def refuse(*args, **kwargs):
        raise AssertionError(why)
    return refuse


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


def test_without_a_usable_image_the_restore_fails_closed_before_stopping_anything(engine, make_ctx, data):
    ctx = make_ctx(BACKUP_WORKER_IMAGE="no-such-image")
    app, before = _backed_up(engine, ctx, data)
    (data / "new.txt").write_text("newer data\n")
    with pytest.raises(RestoreError) as err:
        run_restore(ctx, "app", "data", force=True)
    assert "BACKUP_WORKER_IMAGE" in str(err.value) and "no-such-image" in str(err.value)
    assert (data / "new.txt").exists() and _extract_workers(engine) == []
    assert engine.names("put_archive") == [] and engine.names("stop") == [] and engine.names("run_helper") == []
    assert engine.state(app.id) is ContainerState.RUNNING


def test_a_worker_that_runs_none_of_our_code_writes_nothing_and_names_the_setting(engine, wctx, data, monkeypatch):
    app, _ = _backed_up(engine, wctx, data)
    shutil.rmtree(data)
    data.mkdir()
    monkeypatch.setattr(unpack, "MODULE", ("python", "-m", "sidecar.worker.not_in_this_image"))
    with pytest.raises(RestoreError, match="BACKUP_WORKER_IMAGE"):
        run_restore(wctx, "app", "data")
    assert list(data.iterdir()) == [] and engine.names("put_archive") == []
    assert engine.state(app.id) is ContainerState.RUNNING  # nothing was emptied: the app runs again


def test_an_archive_larger_than_the_free_space_is_refused_before_emptying(engine, wctx, data):
    """Issue 19 item 5: a tiny archive declaring a huge sparse file; the room it takes is
    compared with the volume's free space (plus what emptying it frees) before it is emptied."""
    app, _ = _backed_up(engine, wctx, data)
    (data / "new.txt").write_text("newer data\n")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        big = tarfile.TarInfo("big")
        big.size, big.pax_headers = 1, {"GNU.sparse.major": "0", "GNU.sparse.minor": "1", "GNU.sparse.map": f"0,1,{1 << 49},0",
                                        "GNU.sparse.numblocks": "2", "GNU.sparse.size": str(1 << 49)}
        tar.addfile(big, io.BytesIO(b"x"))
    path = wctx.settings.backup_dir / "daily" / "app_data_2026-01-01_daily.tar"
    path.write_bytes(raw.getvalue())
    write_checksum(path, hashlib.sha256(raw.getvalue()).hexdigest())
    engine.calls.clear()
    with pytest.raises(RestoreError, match="does not fit") as err:
        run_restore(wctx, "app", "data", archive=str(path), force=True)
    assert str(1 << 49) in str(err.value) and "nothing was emptied" in str(err.value)
    assert engine.running_workers() == []  # the worker that verified was told to quit
    assert (data / "new.txt").exists() and engine.names("run_helper") == [] and len(_extract_workers(engine)) == 1
    assert engine.state(app.id) is ContainerState.RUNNING


def test_read_only_nested_mounts_stay_read_only_and_are_left_out():
    """Issue 19 item 10: the worker mounted every nested mount read-write."""
    volume = Mount("volume", "data", "/srv")
    container = ContainerInfo("c" * 64, "app-1", "img", "sha256:" + "b" * 64, ContainerState.RUNNING, {}, (
        volume, Mount("bind", "/etc/app", "/srv/config", read_only=True), Mount("volume", "cache", "/srv/cache")))
    mounts, skip = unpack.target_mounts(container, volume)
    assert [(m.target, m.read_only) for m in mounts] == [
        (VOLUME_ROOT, False), (VOLUME_ROOT + "/cache", False), (VOLUME_ROOT + "/config", True)]
    assert skip == ("config",)


def test_a_worker_failure_once_the_swap_began_leaves_the_container_stopped(engine, wctx, data):
    app, _ = _backed_up(engine, wctx, data)
    (data / "new.txt").write_text("newer data\n")
    engine.fail("worker:extract:swap", EngineError("the engine went away"))
    with pytest.raises(RestoreLeftStopped, match="worker container"):
        run_restore(wctx, "app", "data", force=True)
    assert engine.state(app.id) is ContainerState.EXITED
    assert [e.action for e in wctx.journal.entries()] == ["left-stopped"]
    assert engine.names("put_archive") == []  # no second unpack after the worker began writing


def test_a_volume_with_a_nested_mount_is_restored_in_two_passes(engine, wctx, data, tmp_path, caplog):
    """A rename cannot cross into a nested mount: verify before the stop, empty, write."""
    caplog.set_level(logging.INFO)
    sub = tmp_path / "sub"
    sub.mkdir()
    app = engine.add_container("app-1", app_labels(), {"/data": data, "/data/sub": sub})
    assert run_backup(wctx, wctx.discover().find("app")).ok
    engine.workers_run.clear()
    engine.calls.clear()
    run_restore(wctx, "app", "data", force=True)
    [spec] = _extract_workers(engine)
    assert "--staged" in spec.command and "--one-pass" not in spec.command
    assert any(r.getMessage().startswith("restoring in two passes") for r in caplog.records)
    assert engine.state(app.id) is ContainerState.RUNNING
