"""The mirror reader against the fake engine (its run_worker runs the real
`python -m sidecar.worker` on this host): the phases around the stop, changes made while
the container still ran, the plain-stop fallbacks and their log lines."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest

from sidecar import readers
from sidecar.actions import mirrors as mirrors_module
from sidecar.actions.backup import BackupResult, run_backup
from sidecar.core.errors import EngineError
from sidecar.core.model import ContainerState, WorkerResult
from sidecar.readers.worker import WorkerReader
from sidecar.mirror.worker import INFO, TREE

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


def _phases(engine) -> list[str]:
    """Quiesce calls, workers (by purpose, "mirror+hold" for the one that does the whole
    backup) and the words said to workers (recorded by _said), in order."""
    found = []
    for call in engine.calls:
        if call[0] == "run_worker":
            spec = call[1]
            found.append(spec.purpose + ("+hold" if "--hold" in spec.command else ""))
        elif call[0] in ("stop", "start", "pause", "unpause", "said"):
            found.append(call[0] if call[0] != "said" else call[1])
    return found


def _said(engine, monkeypatch) -> None:
    """Record each word the sidecar writes to a worker's stdin among the engine's calls."""
    real = engine._send

    def send(proc, purpose, data):
        engine.calls.append(("said", data.decode().strip()))
        return real(proc, purpose, data)

    monkeypatch.setattr(engine, "_send", send)


@pytest.mark.parametrize("strategy, down, up", [("stop", "stop", "start"), ("pause", "pause", "unpause")])
def test_one_worker_runs_the_first_pass_the_stopped_pass_on_go_and_the_archive_as_the_container_starts(
        engine, wctx, data, strategy, down, up, caplog, monkeypatch):
    """`archive` is said as soon as the stopped pass is done, before the start: the archive
    reads the mirror only, so it runs while the engine starts the container (issue 20)."""
    app = engine.add_container("app-1", app_labels(strategy=strategy), {"/data": data})
    _said(engine, monkeypatch)
    with caplog.at_level(logging.INFO):
        outcome = run_backup(wctx, _target(wctx))
    assert outcome.result is BackupResult.SUCCESS, outcome.error
    assert _phases(engine) == ["probe", "mirror+hold", down, "go", "archive", up]
    [archive] = outcome.archives
    assert archive_members(archive.path) == tree(data)
    folder = wctx.store.state_dir / "mirror"
    assert stat_mode(folder) == 0o700 and (folder / "app" / "data" / TREE / "a.txt").read_text() == "alpha\n"
    assert not (folder / "app" / "data" / "go").exists()
    assert [r for r in caplog.records if r.getMessage() == "staging mirror caught up with the stopped volume"]
    assert engine.state(app.id) is ContainerState.RUNNING
    assert list(wctx.store.root.rglob("*.partial")) == []


def stat_mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_changes_while_the_container_ran_are_in_the_archive(engine, wctx, data, monkeypatch):
    engine.add_container("app-1", app_labels(strategy="stop"), {"/data": data})
    real_stop = engine.stop

    def change_then_stop(container_id, timeout):
        # Between the first pass and the stop: what the app wrote in the meantime.
        st = os.lstat(data / "a.txt")
        (data / "a.txt").write_text("ALPHA\n")
        os.utime(data / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
        (data / "sub" / "b.bin").rename(data / "moved.bin")
        (data / "link").unlink()
        os.chmod(data / "sub", 0o700)
        return real_stop(container_id, timeout)

    monkeypatch.setattr(engine, "stop", change_then_stop)
    outcome = run_backup(wctx, _target(wctx))
    assert outcome.ok, outcome.error
    members = archive_members(outcome.archives[0].path)
    assert members == tree(data)
    assert members["a.txt"] == b"ALPHA\n" and "link" not in members and "sub/b.bin" not in members


def test_backup_mirror_false_is_a_plain_stop_said_in_the_log(engine, wctx, data, caplog):
    engine.add_container("app-1", app_labels(strategy="stop", mirror="false"), {"/data": data})
    with caplog.at_level(logging.INFO):
        outcome = run_backup(wctx, _target(wctx))
    assert outcome.ok and archive_members(outcome.archives[0].path) == tree(data)
    assert _phases(engine) == ["probe", "stop", "archive", "start"]
    assert [r for r in caplog.records if "backup.mirror=false" in r.getMessage()]
    assert not (wctx.store.state_dir / "mirror").exists()


def test_hot_targets_have_no_mirror(engine, wctx, data):
    engine.add_container("app-1", app_labels(strategy="hot"), {"/data": data})
    assert run_backup(wctx, _target(wctx)).ok
    assert _phases(engine) == ["probe", "archive"]


def test_no_room_is_a_plain_stop_said_in_the_log(engine, wctx, data, monkeypatch, caplog):
    engine.add_container("app-1", app_labels(strategy="stop"), {"/data": data})
    real = engine.run_worker

    def no_room(spec, on_line=None, on_start=None):
        if spec.purpose != "mirror":
            return real(spec, on_line, on_start)
        engine.calls.append(("run_worker", spec))
        on_line('{"event": "no-room", "needed": 300, "free": 100, "volume": 200, "to_copy": 50, "stage": "first"}')
        return WorkerResult("w1", 0, (), 0.1)

    monkeypatch.setattr(engine, "run_worker", no_room)
    with caplog.at_level(logging.INFO):
        outcome = run_backup(wctx, _target(wctx))
    assert outcome.ok and archive_members(outcome.archives[0].path) == tree(data)
    assert _phases(engine) == ["probe", "mirror+hold", "stop", "archive", "start"]
    [said] = [r for r in caplog.records if r.getMessage().startswith("no staging mirror: plain stop")]
    assert "no room" in said.reason and said.needed == 300


def test_a_failed_stopped_pass_reads_the_volume_while_still_down(engine, wctx, data, monkeypatch, caplog):
    app = engine.add_container("app-1", app_labels(strategy="stop"), {"/data": data})
    real = engine.run_worker

    def failing_second(spec, on_line=None, on_start=None):
        if "--hold" not in spec.command:
            return real(spec, on_line, on_start)

        def failing(line):  # the stopped pass fails (the first went through)
            if '"stage": "stopped"' in line and ('"event": "synced"' in line or '"event": "result"' in line):
                line = '{"event": "error", "message": "OSError: disk full", "stage": "stopped"}'
            return on_line(line)
        return real(spec, failing, on_start)

    monkeypatch.setattr(engine, "run_worker", failing_second)
    with caplog.at_level(logging.INFO):
        outcome = run_backup(wctx, _target(wctx))
    assert outcome.ok and archive_members(outcome.archives[0].path) == tree(data)
    assert _phases(engine) == ["probe", "mirror+hold", "stop", "archive", "start"]
    [said] = [r for r in caplog.records if r.getMessage().startswith("no staging mirror: plain stop")]
    assert "disk full" in said.reason
    assert engine.state(app.id) is ContainerState.RUNNING


def test_a_failed_stop_calls_the_waiting_worker_off(engine, wctx, data):
    app = engine.add_container("app-1", app_labels(strategy="stop"), {"/data": data})
    engine.fail("stop", EngineError("cannot stop"))
    outcome = run_backup(wctx, _target(wctx))
    assert outcome.result is BackupResult.FAILURE
    assert _phases(engine)[-1] == "stop" and "archive" not in _phases(engine)
    assert not (wctx.store.state_dir / "mirror" / "app" / "data" / "go").exists()
    assert list(wctx.store.root.rglob("*.partial")) == [] and engine.state(app.id) is ContainerState.RUNNING


def test_a_mirror_worker_that_cannot_start_is_a_plain_stop(engine, wctx, data, monkeypatch, caplog):
    engine.add_container("app-1", app_labels(strategy="stop"), {"/data": data})
    real = engine.run_worker

    def refused(spec, on_line=None, on_start=None):
        if spec.purpose == "mirror":
            raise EngineError("create worker container: no space left on device")
        return real(spec, on_line, on_start)

    monkeypatch.setattr(engine, "run_worker", refused)
    with caplog.at_level(logging.INFO):
        outcome = run_backup(wctx, _target(wctx))
    assert outcome.ok and archive_members(outcome.archives[0].path) == tree(data)
    [said] = [r for r in caplog.records if r.getMessage().startswith("no staging mirror: plain stop")]
    assert "could not start" in said.reason


@pytest.mark.parametrize("label, mirrored", [(None, False), ("true", True), ("false", False)])
def test_with_local_encryption_the_mirror_is_off_unless_the_label_asks_for_it(engine, make_ctx, data, caplog,
                                                                              label, mirrored):
    """The mirror is a plaintext copy kept between runs: with local encryption on, only a
    target labelled backup.mirror=true keeps one (issue 19)."""
    engine.worker_images.add(IMAGE)
    ctx = make_ctx(BACKUP_WORKER_IMAGE=IMAGE, BACKUP_AGE_PASSPHRASE="correct horse battery staple 20")
    labels = app_labels(strategy="stop") | ({"backup.mirror": label} if label else {})
    engine.add_container("app-1", labels, {"/data": data})
    with caplog.at_level(logging.INFO):
        outcome = run_backup(ctx, _target(ctx))
    assert outcome.result is BackupResult.SUCCESS, outcome.error
    assert ("mirror+hold" in _phases(engine)) is mirrored
    assert (ctx.store.state_dir / "mirror" / "app" / "data" / TREE).exists() is mirrored
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("no staging mirror: plain stop (")]
    if label is None:
        assert said == ["no staging mirror: plain stop (local encryption is on and the mirror would be a plaintext "
                        "copy; label backup.mirror=true keeps one)"]


def test_plan_shows_mirrors_no_target_volume_uses(run, engine, env, data, capsys):
    """A mirror whose target or volume is gone stays until removed by hand; `plan` says so,
    with its size and last pass, beside each target's MIRROR column."""
    engine.add_container("app-1", app_labels(strategy="stop"), {"/data": data})
    mirrors = Path(env["BACKUP_DIR"]) / ".sidecar" / "mirror"
    for target, volume, size in (("app", "data", 4096), ("gone", "olddata", 123 << 20)):
        (mirrors / target / volume).mkdir(parents=True)
        (mirrors / target / volume / INFO).write_text(json.dumps({"bytes": size, "entries": 3, "updated": 1.8e9}))
    assert run("plan") == 0
    out = capsys.readouterr().out
    assert "UNUSED MIRROR gone/olddata: 123.0 MiB, last pass 2027-01-15T08:00:00+00:00" in out
    assert "UNUSED MIRROR app/" not in out and "4.0 KiB" in out  # the used one is in the app's row
    assert run("plan", "--json") == 0
    [unused] = json.loads(capsys.readouterr().out)["unused_mirrors"]
    assert (unused["target"], unused["volume"], unused["mirror_bytes"]) == ("gone", "olddata", 123 << 20)


def _mirror(root: Path, target: str, volume: str, updated: float) -> Path:
    folder = root / target / volume
    (folder / TREE).mkdir(parents=True)
    (folder / TREE / "f").write_text("data")
    os.chmod(folder / TREE, 0o500)  # as a copy of a read-only folder is
    (folder / INFO).write_text(json.dumps({"bytes": 8192, "entries": 2, "updated": updated}))
    return folder


@pytest.mark.parametrize("as_root", [True, False], ids=["in-process", "by-a-worker"])
def test_mirrors_of_volumes_gone_longer_than_their_retention_are_removed(run, engine, env, data, capsys,
                                                                        monkeypatch, as_root):
    """BACKUP_KEEP (3 months by default) for a gone target: a mirror last used 100 days ago
    goes, one used yesterday stays (plan says when it goes); a used mirror stays. A sidecar
    that is not root has a worker remove the root-only copy."""
    engine.worker_images.add(IMAGE)
    monkeypatch.setenv("BACKUP_WORKER_IMAGE", IMAGE)
    engine.add_container("app-1", app_labels(strategy="stop"), {"/data": data})
    root = Path(env["BACKUP_DIR"]) / ".sidecar" / "mirror"
    now = time.time()
    old = _mirror(root, "gone", "old", now - 100 * 86400)
    recent = _mirror(root, "gone", "recent", now - 86400)
    used = _mirror(root, "app", "data", now - 200 * 86400)
    if not as_root:
        def refuse(path):  # as for a sidecar that is not root: the vault is root's
            raise PermissionError(13, "Permission denied", str(path))
        monkeypatch.setattr(mirrors_module, "_remove_here", refuse)
    assert run("plan") == 0
    out = capsys.readouterr().out
    assert "UNUSED MIRROR gone/old: 8.0 KiB" in out and "UNUSED MIRROR gone/recent: 8.0 KiB" in out
    assert "removed after" in out
    said: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = said.append
    logger = logging.getLogger(mirrors_module.__name__)
    logger.addHandler(handler)
    monkeypatch.setattr(logger, "level", logging.INFO)
    try:
        assert run("prune") == 0
    finally:
        logger.removeHandler(handler)
    assert "mirrors: deleted gone/old (unused for longer than its retention)" in capsys.readouterr().out
    assert not old.exists() and recent.exists() and used.exists()
    assert [(r.getMessage(), r.target, r.volume, r.bytes) for r in said] == [
        ("unused staging mirror removed: its target volume is gone for longer than its retention", "gone", "old", 8192)]
    assert [spec.purpose for spec in engine.workers_run if spec.purpose == "mirror-remove"] == \
        ([] if as_root else ["mirror-remove"])
    assert run("plan") == 0
    out = capsys.readouterr().out
    assert "gone/old" not in out and "UNUSED MIRROR gone/recent" in out
