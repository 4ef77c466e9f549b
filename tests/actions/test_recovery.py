"""put_back and run_recovery: the journal of interrupted containers."""

from __future__ import annotations

import time

import pytest

from sidecar.actions.interrupt import Interruption, InterruptionKind, put_back
from sidecar.actions.recover import run_recovery
from sidecar.errors import EngineError
from sidecar.model import ContainerState
from sidecar.storage import JournalEntry

from .conftest import app_labels


@pytest.mark.parametrize("kind, state, back", [
    (InterruptionKind.STOPPED, ContainerState.EXITED, "start"),
    (InterruptionKind.PAUSED, ContainerState.PAUSED, "unpause"),
])
def test_recovery_puts_back_what_the_journal_holds(engine, ctx, data, kind, state, back):
    app = engine.add_container("app-1", app_labels(), {"/data": data}, state=state)
    ctx.journal.add(JournalEntry(app.id, app.name, kind.value, "app", time.time()))
    assert run_recovery(ctx) == ["app-1"]
    assert [c[0] for c in engine.calls if c[0] in ("start", "unpause")] == [back]
    assert engine.state(app.id) is ContainerState.RUNNING and ctx.journal.entries() == []


def test_recovery_leaves_a_running_container_alone_and_forgets_it(engine, ctx, data):
    app = engine.add_container("app-1", app_labels(), {"/data": data})
    ctx.journal.add(JournalEntry(app.id, app.name, "stopped", "app", time.time()))
    assert run_recovery(ctx) == []
    assert engine.names("start") == [] and ctx.journal.entries() == []


def test_recovery_forgets_a_container_that_is_gone(engine, ctx):
    ctx.journal.add(JournalEntry("f" * 64, "gone", "stopped", "gone", time.time()))
    assert run_recovery(ctx) == [] and ctx.journal.entries() == []


def test_recovery_skips_a_target_whose_backup_is_running(engine, ctx, data):
    app = engine.add_container("app-1", app_labels(), {"/data": data}, state=ContainerState.EXITED)
    ctx.journal.add(JournalEntry(app.id, app.name, "stopped", "app", time.time()))
    with ctx.store.target_lock("app"):
        assert run_recovery(ctx) == []
    assert engine.state(app.id) is ContainerState.EXITED and len(ctx.journal.entries()) == 1


def test_put_back_retries_then_raises_and_keeps_the_entry(engine, ctx, data, monkeypatch):
    monkeypatch.setattr("sidecar.actions.interrupt.time.sleep", lambda _s: None)
    app = engine.add_container("app-1", app_labels(), {"/data": data}, state=ContainerState.EXITED)
    ctx.journal.add(JournalEntry(app.id, app.name, "stopped", "app", time.time()))
    engine.fail("start", EngineError("nope"), times=2)
    assert put_back(ctx, app.id, "stopped", "app") is True  # third attempt succeeds
    assert len(engine.names("start")) == 3 and ctx.journal.entries() == []
    ctx.journal.add(JournalEntry(app.id, app.name, "stopped", "app", time.time()))
    engine.set_state(app.id, ContainerState.EXITED)
    engine.fail("start", EngineError("nope"))
    with pytest.raises(EngineError):
        put_back(ctx, app.id, InterruptionKind.STOPPED, "app")
    assert len(ctx.journal.entries()) == 1


def test_interruption_journals_before_stopping_and_forgets_after_starting(engine, ctx, data):
    app = engine.add_container("app-1", app_labels(), {"/data": data})
    with Interruption(ctx, app, InterruptionKind.STOPPED, "app"):
        assert [(e.container_id, e.action) for e in ctx.journal.entries()] == [(app.id, "stopped")]
        assert engine.state(app.id) is ContainerState.EXITED
    assert engine.state(app.id) is ContainerState.RUNNING and ctx.journal.entries() == []


def test_interruption_puts_back_when_the_body_raises(engine, ctx, data):
    app = engine.add_container("app-1", app_labels(), {"/data": data})
    with pytest.raises(KeyError):
        with Interruption(ctx, app, InterruptionKind.PAUSED, "app"):
            raise KeyError("boom")
    assert engine.state(app.id) is ContainerState.RUNNING and ctx.journal.entries() == []


def test_recovery_never_starts_a_container_left_stopped(engine, ctx, data, caplog):
    app = engine.add_container("app-1", app_labels(), {"/data": data}, state=ContainerState.EXITED)
    ctx.journal.add(JournalEntry(app.id, app.name, "left-stopped", "app", time.time()))
    assert run_recovery(ctx) == []
    assert engine.names("start") == [] and len(ctx.journal.entries()) == 1
    assert any("left stopped by a failed restore" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("state", [ContainerState.RUNNING, None], ids=["started-by-someone", "removed"])
def test_recovery_forgets_a_left_stopped_container_someone_dealt_with(engine, ctx, data, state):
    if state is None:
        cid, name = "f" * 64, "gone"
    else:
        app = engine.add_container("app-1", app_labels(), {"/data": data}, state=state)
        cid, name = app.id, app.name
    ctx.journal.add(JournalEntry(cid, name, "left-stopped", "app", time.time()))
    assert run_recovery(ctx) == [] and ctx.journal.entries() == []
    assert engine.names("start") == []


def test_put_back_refuses_a_container_left_stopped(ctx):
    with pytest.raises(ValueError):
        put_back(ctx, "f" * 64, InterruptionKind.LEFT_STOPPED, "app")
