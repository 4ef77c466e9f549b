"""run_backup against the fake engine: interruption and put back on every path, commands,
the outcome, and the archive's bytes."""

from __future__ import annotations

import errno
from datetime import date

import pytest

from sidecar.tarball import archive
from sidecar.actions.backup import BackupResult, run_backup
from sidecar.core.errors import EngineError
from sidecar.core.model import ContainerState

from tests.fakes.destination import FakeDestination
from tests.unit.test_prune import days, write

from .conftest import app_labels, archive_members, tree


def _target(ctx, name="app"):
    target = ctx.discover().find(name)
    assert target is not None, ctx.discover().skipped
    return target


def _interruptions(engine):
    return [c[0] for c in engine.calls if c[0] in ("stop", "start", "pause", "unpause")]


@pytest.mark.parametrize("strategy, expected", [
    ("stop", ["stop", "start"]), ("pause", ["pause", "unpause"]), ("hot", []),
])
def test_strategy_interrupts_only_as_asked_and_the_archive_holds_the_volume(engine, ctx, data, strategy, expected):
    app = engine.add_container("app-1", app_labels(strategy=strategy), {"/data": data})
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.result is BackupResult.SUCCESS and outcome.ok and outcome.result == "success"
    assert _interruptions(engine) == expected
    assert engine.state(app.id) is ContainerState.RUNNING
    assert outcome.volumes == ("data",)
    [archive] = outcome.archives
    assert archive.path.name.startswith("app_data_") and archive.path.name.endswith("_daily.tar.zst")
    assert (archive.path.parent / (archive.path.name + ".sha256")).exists()
    assert archive_members(archive.path) == tree(data)
    assert ctx.journal.entries() == []
    # The engine's stream was read to its end, while the container was down.
    read_at = next(i for i, c in enumerate(engine.calls) if c[0] == "read_path")
    if expected:
        assert engine.calls.index(next(c for c in engine.calls if c[0] == expected[0])) < read_at
        assert engine.calls.index(next(c for c in engine.calls if c[0] == expected[1])) > read_at
    assert any(c[0] == "stream_end" for c in engine.calls)


@pytest.mark.parametrize("strategy, back", [("stop", "start"), ("pause", "unpause")])
def test_a_read_failure_midway_puts_the_container_back_and_leaves_no_archive(engine, ctx, data, strategy, back):
    app = engine.add_container("app-1", app_labels(strategy=strategy), {"/data": data})
    engine.fail("read_path", EngineError("the stream broke"), after_bytes=4096)
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.result is BackupResult.FAILURE and outcome.phase == "read"
    assert "the stream broke" in outcome.error
    assert _interruptions(engine)[-1] == back
    assert engine.state(app.id) is ContainerState.RUNNING
    assert ctx.journal.entries() == []
    assert list(ctx.store.root.rglob("*.tar.zst*")) == []  # nothing partial, nothing that looks finished


def test_a_failing_stop_is_a_failed_run_with_the_container_running(engine, ctx, data):
    app = engine.add_container("app-1", app_labels(), {"/data": data})
    engine.fail("stop", EngineError("cannot stop"))
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.result is BackupResult.FAILURE and "cannot stop" in outcome.error
    assert engine.state(app.id) is ContainerState.RUNNING
    assert engine.names("read_path") == []
    assert list(ctx.store.root.rglob("*.tar.zst*")) == []


def test_a_failing_start_keeps_the_journal_entry_for_recovery(engine, ctx, data, monkeypatch):
    monkeypatch.setattr("sidecar.actions.interrupt.time.sleep", lambda _s: None)  # no backoff between retries
    app = engine.add_container("app-1", app_labels(), {"/data": data})
    engine.fail("start", EngineError("cannot start"))
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.result is BackupResult.FAILURE and "cannot start" in outcome.error
    assert engine.state(app.id) is ContainerState.EXITED
    assert [e.container_id for e in ctx.journal.entries()] == [app.id]
    assert [e.action for e in ctx.journal.entries()] == ["stopped"]  # the journal keeps the string


def test_a_failing_pre_command_stops_nothing(engine, ctx, data):
    app = engine.add_container("app-1", app_labels(exec_pre="dump"), {"/data": data})
    engine.containers[app.id].exec_results["dump"] = (3, "no space")
    outcome = run_backup(ctx, _target(ctx))
    assert (outcome.result, outcome.phase) == (BackupResult.FAILURE, "pre")
    assert "exited with 3: no space" in outcome.error
    assert _interruptions(engine) == [] and engine.names("read_path") == []


def test_a_failing_post_command_fails_the_run_but_keeps_the_archives(engine, ctx, data):
    app = engine.add_container("app-1", app_labels(exec_post="cleanup"), {"/data": data})
    engine.containers[app.id].exec_results["cleanup"] = (1, "oops")
    outcome = run_backup(ctx, _target(ctx))
    assert (outcome.result, outcome.phase) == (BackupResult.FAILURE, "post")
    [archive] = outcome.archives
    assert archive.path.exists() and archive_members(archive.path) == tree(data)
    assert outcome.downtime >= 0 and _interruptions(engine) == ["stop", "start"]
    assert engine.state(app.id) is ContainerState.RUNNING


def test_commands_run_in_order_around_the_stop(engine, ctx, data):
    app = engine.add_container("app-1", app_labels(exec_pre="pre", exec_post="post"), {"/data": data})
    assert run_backup(ctx, _target(ctx)).ok
    order = [c[0] if c[0] != "exec" else c[2] for c in engine.calls
             if c[0] in ("exec", "stop", "start", "read_path")]
    assert order == ["pre", "stop", "read_path", "start", "post"]
    assert engine.state(app.id) is ContainerState.RUNNING


def test_a_stopped_container_is_not_started_and_its_commands_do_not_run(engine, ctx, data):
    app = engine.add_container("app-1", app_labels(exec_pre="pre"), {"/data": data}, state=ContainerState.EXITED)
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.ok
    assert _interruptions(engine) == [] and engine.names("exec") == []
    assert engine.state(app.id) is ContainerState.EXITED


def test_a_bug_raises_with_its_traceback(engine, ctx, data, monkeypatch):
    engine.add_container("app-1", app_labels(), {"/data": data})
    engine.fail("read_path", ZeroDivisionError("a bug"), after_bytes=4096)
    with pytest.raises(ZeroDivisionError):
        run_backup(ctx, _target(ctx))
    # ...and the container was put back on the way out all the same.
    assert _interruptions(engine) == ["stop", "start"]


def test_a_busy_target_is_skipped(engine, ctx, data):
    engine.add_container("app-1", app_labels(), {"/data": data})
    with ctx.store.target_lock("app"):
        outcome = run_backup(ctx, _target(ctx))
    assert outcome.result is BackupResult.SKIPPED and outcome.result == "skipped"
    assert engine.calls and _interruptions(engine) == []


def test_excludes_leave_members_out(engine, ctx, data):
    engine.add_container("app-1", app_labels(exclude="sub"), {"/data": data})
    outcome = run_backup(ctx, _target(ctx))
    members = archive_members(outcome.archives[0].path)
    assert "a.txt" in members and not any(name.startswith("sub") for name in members)


def test_two_volumes_two_archives_one_interruption(engine, ctx, data, tmp_path):
    logs = tmp_path / "volumes" / "logs"
    logs.mkdir(parents=True)
    (logs / "x.log").write_text("line\n")
    engine.add_container("app-1", app_labels(), {"/data": data, "/logs": logs})
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.ok and outcome.volumes == ("data", "logs")
    assert [archive_members(a.path) for a in outcome.archives] == [tree(data), tree(logs)]
    assert _interruptions(engine) == ["stop", "start"]


def test_after_a_backup_local_rotation_does_not_wait_on_an_unreachable_destination(engine, ctx, data):
    """Local archives rotate before the off-site copy is tried; a destination that is down
    gets neither the copy nor a rotation attempt (no second retry ladder)."""
    for day in days(date(2026, 1, 1), 5):
        write(ctx, "app", "data", day)
    engine.add_container("app-1", app_labels(strategy="hot", keep="daily=2,weekly=0,monthly=0"), {"/data": data})
    down = FakeDestination("s3")
    down.down = True
    ctx.destinations = (down,)
    order = []
    original_list = down.list

    def listing(under=""):
        order.append(len(ctx.store.archives()))
        return original_list(under)

    down.list = listing
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.ok
    # Five old days and today's archive, daily=2: four rotated away before the sync listed
    # the destination once; nothing was pruned there.
    assert len(ctx.store.archives()) == 2 and order == [2]
    assert down.calls["delete"] == 0


def test_a_full_disk_at_the_checksum_leaves_no_archive_nor_image_export_without_it(engine, ctx, data, monkeypatch):
    """The volume archive, then (next run) the image export: ENOSPC while the checksum is
    written fails the backup and leaves nothing in daily/ or images/."""
    engine.add_image("built-here:1")  # no digest: exported
    engine.add_container("app-1", app_labels(), {"/data": data}, image="built-here:1",
                         image_id=engine.images["built-here:1"][0].id)
    real = archive.write_checksum

    def full(path, *args, **kwargs):
        if wanted in path.parent.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(archive, "write_checksum", full)
    wanted = "daily"
    outcome = run_backup(ctx, ctx.discover().find("app"))
    assert outcome.result is BackupResult.FAILURE and "No space left" in outcome.error
    assert list((ctx.store.root / "daily").iterdir()) == []
    wanted = "images"
    outcome = run_backup(ctx, ctx.discover().find("app"))
    assert outcome.result is BackupResult.FAILURE and outcome.phase == "image"
    assert list((ctx.store.root / "images").iterdir()) == []
    assert all(a.has_checksum for a in ctx.store.archives())
