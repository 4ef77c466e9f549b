"""The worker reader against the fake engine, whose run_worker runs the real
`python -m sidecar.worker` as a host process with the mounts' folders in place of their
paths: the archive, its checksum and encryption, the phases around the interruption, the
fallback and its log line, failures, and leftover workers at start-up."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tarfile
import time

import pytest
import zstandard

from sidecar import readers
from sidecar.actions.backup import BackupResult, run_backup
from sidecar.actions.recover import remove_leftover_workers, run_recovery
from sidecar.tarball.archive import iter_tar
from sidecar.tarball.extract import verify_file as check_archive
from sidecar.core.errors import ArchiveError
from sidecar.core.keys import DecryptionKeys
from sidecar.core.model import Compression, ContainerInfo, ContainerState, WorkerResult
from sidecar.readers.worker import STORE_LABEL, TARGET_LABEL, WorkerReader, store_mount
from sidecar.worker.archive import ArchiveJob, run_archive

from .conftest import app_labels, archive_members, tree

pytestmark = pytest.mark.usefixtures("fresh_worker_reader")  # conftest: one WorkerReader per test

IMAGE = "backup-sidecar:fake"




@pytest.fixture
def wctx(make_ctx, engine):
    engine.worker_images.add(IMAGE)
    return make_ctx(BACKUP_WORKER_IMAGE=IMAGE)


def _target(ctx, name="app"):
    target = ctx.discover().find(name)
    assert target is not None, ctx.discover().skipped
    return target


def _workers(engine, purpose):
    return [spec for spec in engine.workers_run if spec.purpose == purpose]


@pytest.mark.parametrize("strategy", ["stop", "pause", "hot"])
def test_the_worker_archives_the_volume_while_the_container_is_down(engine, wctx, data, strategy):
    # The plain path (tests/actions/test_mirror.py: the staging mirror that is the default).
    app = engine.add_container("app-1", app_labels(strategy=strategy, mirror="false"), {"/data": data})
    outcome = run_backup(wctx, _target(wctx))
    assert outcome.result is BackupResult.SUCCESS, outcome.error
    [archive] = outcome.archives
    assert archive_members(archive.path) == tree(data)
    assert check_archive(archive.path).sha256 == archive.sha256
    assert oct(archive.path.stat().st_mode & 0o777) == "0o600"
    assert engine.names("read_path") == []  # nothing went through the engine's archive API
    [spec] = _workers(engine, "archive")
    assert spec.user == "0" and spec.image == IMAGE and spec.mounts[0].read_only
    assert spec.labels[TARGET_LABEL] == "app" and spec.labels[STORE_LABEL] == store_mount(wctx.settings.backup_dir,
                                                                                          None).key
    assert len(_workers(engine, "probe")) == 1
    calls = [c[0] for c in engine.calls if c[0] in ("stop", "start", "pause", "unpause", "run_worker")]
    if strategy != "hot":
        assert calls[-3][0:5] in ("stop", "pause") and calls[-1] in ("start", "unpause")
        assert calls[-2] == "run_worker"
    assert engine.state(app.id) is ContainerState.RUNNING


def test_one_probe_per_image_for_many_volumes(engine, wctx, data, tmp_path):
    logs = tmp_path / "volumes" / "logs"
    logs.mkdir(parents=True)
    (logs / "x.log").write_text("line\n")
    engine.add_container("app-1", app_labels(), {"/data": data, "/logs": logs})
    outcome = run_backup(wctx, _target(wctx))
    assert outcome.ok and [archive_members(a.path) for a in outcome.archives] == [tree(data), tree(logs)]
    # one worker per volume writes its archive: a held mirror worker for a stop target (the default)
    assert len(_workers(engine, "probe")) == 1 and len(_workers(engine, "mirror") + _workers(engine, "archive")) == 2


def test_excludes_through_the_worker(engine, wctx, data):
    engine.add_container("app-1", app_labels(exclude="sub"), {"/data": data})
    outcome = run_backup(wctx, _target(wctx))
    members = archive_members(outcome.archives[0].path)
    assert "a.txt" in members and not any(name.startswith("sub") for name in members)
    [worker] = _workers(engine, "mirror") + _workers(engine, "archive")  # a held mirror worker for a stop target
    assert "--exclude=sub" in worker.command


def test_encrypted_by_the_worker_with_no_key_in_its_arguments(engine, make_ctx, data):
    engine.worker_images.add(IMAGE)
    ctx = make_ctx(BACKUP_WORKER_IMAGE=IMAGE, BACKUP_AGE_PASSPHRASE="correct horse battery")
    engine.add_container("app-1", app_labels(strategy="hot"), {"/data": data})
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.ok, outcome.error
    [archive] = outcome.archives
    assert archive.path.name.endswith(".tar.zst.age")
    keys = DecryptionKeys(passphrase="correct horse battery")
    assert check_archive(archive.path, keys=keys).sha256 == archive.sha256
    with tarfile.open(fileobj=io.BytesIO(b"".join(iter_tar(archive.path, keys=keys))), mode="r:") as tar:
        assert tar.extractfile("./a.txt").read() == b"alpha\n"
    [spec] = _workers(engine, "archive")
    assert not any("correct horse" in arg for arg in spec.command)
    assert list((ctx.store.state_dir / "workers").iterdir()) == []  # the key file is gone


@pytest.mark.parametrize("setup, local, reason", [
    ({}, True, "outside a container and BACKUP_WORKER_IMAGE is unset"),
    ({"BACKUP_WORKER_IMAGE": "not-there:1"}, True, "no worker container from image not-there:1"),
    ({"BACKUP_WORKER_IMAGE": IMAGE}, False, "the engine on another machine"),
])
def test_no_worker_falls_back_to_the_engine_api_said_once(engine, make_ctx, data, tmp_path, caplog, setup, local,
                                                          reason):
    logs = tmp_path / "volumes" / "logs"
    logs.mkdir(parents=True)
    engine.worker_images.add(IMAGE)
    engine.is_local = local
    ctx = make_ctx(**setup)
    engine.add_container("app-1", app_labels(), {"/data": data, "/logs": logs})
    with caplog.at_level(logging.INFO, logger="sidecar.readers.worker"):
        outcome = run_backup(ctx, _target(ctx))
        run_backup(ctx, _target(ctx))
    assert outcome.ok and archive_members(outcome.archives[0].path) == tree(data)
    assert len(engine.names("read_path")) == 4
    said = [r for r in caplog.records if r.getMessage().startswith("reading through the engine's archive API")]
    assert len(said) == 1 and reason in said[0].reason and said[0].target == "app"


def test_a_failing_worker_is_a_failed_read_with_its_message_and_no_file(engine, wctx, data, monkeypatch):
    app = engine.add_container("app-1", app_labels(strategy="stop", mirror="false"), {"/data": data})
    real = engine.run_worker

    def failing(spec, on_line=None):
        if spec.purpose != "archive":
            return real(spec, on_line)
        on_line('{"event": "error", "message": "tar of /volume failed (exit 2): Cannot open: Permission denied"}')
        return WorkerResult("w1", 1, ("...",), 0.1)

    monkeypatch.setattr(engine, "run_worker", failing)
    outcome = run_backup(wctx, _target(wctx))
    assert outcome.result is BackupResult.FAILURE and outcome.phase == "read"
    assert "Permission denied" in outcome.error and "w1" in outcome.error
    assert engine.state(app.id) is ContainerState.RUNNING
    assert list(wctx.store.root.rglob("*.tar.zst*")) == []


def test_a_timed_out_worker_says_so(engine, wctx, data, monkeypatch):
    engine.add_container("app-1", app_labels(), {"/data": data})
    real = engine.run_worker
    monkeypatch.setattr(engine, "run_worker", lambda spec, on_line=None, on_start=None: real(spec, on_line, on_start)
                        if spec.purpose == "probe" else WorkerResult("w1", 137, (), 5.0, timed_out=True))
    outcome = run_backup(wctx, _target(wctx))
    assert outcome.result is BackupResult.FAILURE and "BACKUP_WORKER_TIMEOUT" in outcome.error


def test_leftover_workers_are_removed_unless_a_live_backup_owns_them(engine, ctx):
    key = store_mount(ctx.settings.backup_dir, None).key

    def worker(name, state, target, store=key):
        return ContainerInfo(name, name, IMAGE, "", state, {STORE_LABEL: store, TARGET_LABEL: target}, ())

    engine.leftover_workers = [worker("dead", ContainerState.EXITED, "app"),
                               worker("orphan", ContainerState.RUNNING, "app"),
                               worker("busy", ContainerState.RUNNING, "db"),
                               worker("probe", ContainerState.RUNNING, ""),
                               worker("elsewhere", ContainerState.EXITED, "app", store="other")]
    with ctx.store.target_lock("db"):
        assert remove_leftover_workers(ctx) == ["dead", "orphan"]
    assert [w.name for w in engine.leftover_workers] == ["busy", "probe", "elsewhere"]
    run_recovery(ctx)  # the lock is free now: nobody owns "busy" any more
    assert [w.name for w in engine.leftover_workers] == ["probe", "elsewhere"]


@pytest.mark.parametrize("compression", list(Compression))
def test_the_archive_worker_on_this_host(data, tmp_path, compression):
    output = tmp_path / "out.partial"
    output.touch()
    lines = []
    outcome = run_archive(ArchiveJob(data, output, compression), lines.append)
    assert output.stat().st_size == outcome.size and outcome.tar_bytes % 10240 == 0
    raw = output.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == outcome.sha256
    mode = {Compression.ZSTD: "r|*", Compression.GZIP: "r:gz", Compression.NONE: "r:"}[compression]
    if compression is Compression.ZSTD:
        raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw), read_across_frames=True).read()
        mode = "r:"
    with tarfile.open(fileobj=io.BytesIO(raw), mode=mode) as tar:
        names = [m.name for m in tar]
    assert names[0] == "./" or names[0] == "."
    assert sorted(n.removeprefix("./") or "." for n in names) == sorted(tree(data))


def test_the_archive_worker_fails_on_a_missing_root(tmp_path):
    output = tmp_path / "out.partial"
    output.touch()
    with pytest.raises(ArchiveError, match="tar of .* failed"):
        run_archive(ArchiveJob(tmp_path / "nope", output, Compression.ZSTD), lambda record: None)


def test_stale_key_files_are_removed_at_start_up(ctx):
    folder = ctx.store.state_dir / "workers"
    folder.mkdir()
    old, fresh = folder / "old.keys", folder / "fresh.keys"
    old.write_text("{}")
    fresh.write_text("{}")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    run_recovery(ctx)
    assert not old.exists() and fresh.exists()  # a fresh one may be on its way to a live worker


def test_an_image_that_passed_its_probe_is_not_probed_again_by_the_next_process(engine, make_ctx, data, monkeypatch):
    """An image id names its content: once it passed the probe at this protocol (recorded on the
    backup volume), a one-shot command in a new process starts no probe container for it."""
    engine.worker_images.add(IMAGE)
    engine.add_image(IMAGE)
    engine.add_container("app-1", app_labels(strategy="hot"), {"/data": data})
    first = make_ctx(BACKUP_WORKER_IMAGE=IMAGE)
    assert run_backup(first, _target(first)).ok
    assert len(_workers(engine, "probe")) == 1
    monkeypatch.setitem(readers.READERS, "worker", WorkerReader())  # a new process: nothing in memory
    second = make_ctx(BACKUP_WORKER_IMAGE=IMAGE)
    outcome = run_backup(second, _target(second))
    assert outcome.ok and archive_members(outcome.archives[0].path) == tree(data)
    assert len(_workers(engine, "probe")) == 1
