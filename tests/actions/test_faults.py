"""Faults on the actions tier (issue 11): what a SIGKILL leaves on disk at a chosen moment,
taken as a copy of the journal, and what the next start does with it."""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from sidecar.actions.backup import run_backup
from sidecar.actions.daemon import Daemon
from sidecar.actions.recover import run_recovery
from sidecar.actions.restore import run_restore
from sidecar.core.model import ContainerState, WorkerLink
from sidecar.store.storage import JournalEntry

from .conftest import app_labels, tree


@pytest.mark.usefixtures("restore_worker")
def test_a_restore_killed_after_emptying_the_volume_does_not_start_the_app_on_the_next_start(engine, ctx, data,
                                                                                            tmp_path, monkeypatch):
    app = engine.add_container("app-1", app_labels(), {"/data": data})
    assert run_backup(ctx, ctx.discover().find("app")).ok
    before = tree(data)
    (data / "new.txt").write_text("newer data\n")
    killed = tmp_path / "journal-at-the-kill.json"
    real_worker = engine.run_worker

    def run_worker(spec, on_line=None, on_start=None):
        def started(link):
            def send(data):
                if data == b"swap\n":
                    # The staged tree is about to be swapped in: what the journal holds now is
                    # what a SIGKILL would leave.
                    shutil.copy(ctx.journal.path, killed)
                link.send(data)
            on_start(WorkerLink(link.name, send))
        return real_worker(spec, on_line, started if on_start is not None else None)

    monkeypatch.setattr(engine, "run_worker", run_worker)
    run_restore(ctx, "app", "data", force=True)
    assert engine.state(app.id) is ContainerState.RUNNING and ctx.journal.entries() == []

    # The kill: the container stays stopped, the journal as it was during the unpack.
    engine.set_state(app.id, ContainerState.EXITED)
    shutil.copy(killed, ctx.journal.path)
    assert [(e.container_id, e.action) for e in ctx.journal.entries()] == [(app.id, "left-stopped")]
    assert run_recovery(ctx) == []
    assert engine.state(app.id) is ContainerState.EXITED  # not started on a partial volume
    # The next restore (the fault gone) starts it and forgets the entry.
    run_restore(ctx, "app", "data", force=True)
    assert tree(data) == before
    assert engine.state(app.id) is ContainerState.RUNNING and ctx.journal.entries() == []


@pytest.mark.usefixtures("restore_worker")
def test_the_journal_says_left_stopped_before_the_swap_not_while_staging(engine, ctx, data, monkeypatch):
    """One pass: while the worker stages the archive the volume is intact (a kill then starts
    the app on its old data); before the swap the container is journalled left-stopped."""
    engine.add_container("app-1", app_labels(), {"/data": data})
    assert run_backup(ctx, ctx.discover().find("app")).ok
    (data / "new.txt").write_text("newer data\n")
    seen: dict[bytes, list[str]] = {}
    real_worker = engine.run_worker

    def run_worker(spec, on_line=None, on_start=None):
        def started(link):
            def send(data):
                seen[data] = [e.action for e in ctx.journal.entries()]
                link.send(data)
            on_start(WorkerLink(link.name, send))
        return real_worker(spec, on_line, started if on_start is not None else None)

    monkeypatch.setattr(engine, "run_worker", run_worker)
    run_restore(ctx, "app", "data", force=True)
    assert "left-stopped" not in seen[b"go\n"] and seen[b"swap\n"] == ["left-stopped"]
    assert engine.names("run_helper") == []


def test_a_full_backup_volume_when_putting_back_fails_the_backup_cleanly(engine, ctx, data, monkeypatch):
    """The journal cannot be rewritten (ENOSPC) once the container runs again: the backup
    fails as a write failure, not with an OSError out of run_backup; the entry stays for the
    next start, which forgets it (the container runs)."""
    app = engine.add_container("app-1", app_labels(strategy="stop"), {"/data": data})
    target = ctx.discover().find("app")
    real_remove = ctx.journal.remove

    def full(container_id):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ctx.journal, "remove", full)
    engine.fail("read_path", OSError(28, "No space left on device"), after_bytes=10)
    outcome = run_backup(ctx, target)
    assert not outcome.ok and "No space left" in outcome.error
    assert engine.state(app.id) is ContainerState.RUNNING
    assert [e.container_id for e in ctx.journal.entries()] == [app.id]
    monkeypatch.setattr(ctx.journal, "remove", real_remove)
    assert run_recovery(ctx) == [] and ctx.journal.entries() == []


def test_a_journal_that_cannot_be_written_stops_nothing(engine, ctx, data, monkeypatch):
    app = engine.add_container("app-1", app_labels(strategy="stop"), {"/data": data})

    def full(entry):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ctx.journal, "add", full)
    outcome = run_backup(ctx, ctx.discover().find("app"))
    assert not outcome.ok and outcome.phase == "stop" and "nothing was stopped" in outcome.error
    assert engine.names("stop") == [] and engine.state(app.id) is ContainerState.RUNNING


def test_the_daemon_puts_back_what_the_journal_holds_once_the_engine_is_back(engine, ctx, data):
    """A backup running while the engine restarted could not start its container again (the
    journal keeps it). The daemon does not wait for its own next start: when the event
    stream reconnects, the journal is worked through."""
    app = engine.add_container("app-1", app_labels(strategy="stop"), {"/data": data})
    engine.set_state(app.id, ContainerState.EXITED)
    ctx.journal.add(JournalEntry(app.id, app.name, "stopped", "app", time.time()))
    daemon = Daemon(ctx)
    watcher = threading.Thread(target=daemon._follow_events, daemon=True)
    watcher.start()  # the fake's event stream ends at once: a drop, then a reconnect
    try:
        deadline = time.monotonic() + 10
        while engine.state(app.id) is not ContainerState.RUNNING:
            assert time.monotonic() < deadline, "the container was not put back after the reconnect"
            time.sleep(0.02)
        assert ctx.journal.entries() == []
    finally:
        daemon.request_stop()
        watcher.join(5)
