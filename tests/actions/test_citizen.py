"""A good citizen of its stack, against the fake engine: someone else's stop wins over the
sidecar's, readiness after the put back, BACKUP_KEEP as given in `plan`, SIGTERM during a
one-shot backup."""

from __future__ import annotations

import json
import logging
import os
import signal

import pytest

from sidecar.actions.backup import BackupResult, run_backup
from sidecar.actions.interrupt import InterruptionKind, user_stop
from sidecar.actions.recover import run_recovery
from sidecar.telemetry.metrics import Metrics, TargetView
from sidecar.notify.sender import decide, render
from sidecar.core.notify_urls import NotifyOn
from sidecar.core.model import ContainerEvent, ContainerState
from sidecar.store.storage import JournalEntry

from .conftest import app_labels


def _target(ctx, name="app"):
    target = ctx.discover().find(name)
    assert target is not None, ctx.discover().skipped
    return target


def _ev(*actions: str, signal: str | None = None) -> list[ContainerEvent]:
    return [ContainerEvent(a, "x", 0.0, signal if a == "kill" else None) for a in actions]


@pytest.mark.parametrize("events, action, stop_returned, hard_killed, expected", [
    (_ev("kill", signal="15") + _ev("die", "stop"), "stopped", True, False, None),  # only ours
    (_ev("kill", signal="15") + _ev("kill", signal="9") + _ev("die", "stop"), "stopped", True, True, None),
    (_ev("kill", signal="15") + _ev("kill", signal="9"), "stopped", False, False, None),  # may be our timeout
    (_ev("kill", signal="15") * 2, "stopped", False, False, "another stop"),  # a second SIGTERM meanwhile
    (_ev("kill", signal="15") + _ev("die", "stop", "stop"), "stopped", True, False, "another stop"),
    (_ev("kill", signal="15") + _ev("kill", signal="9") + _ev("die", "stop"), "stopped", True, False, "another stop"),
    # An image whose STOPSIGNAL is SIGKILL: our stop's one kill is a SIGKILL; a second kill is not ours.
    (_ev("kill", signal="9") + _ev("die", "stop"), "stopped", True, False, None),
    (_ev("kill", signal="9") * 2 + _ev("die", "stop"), "stopped", True, False, "another stop"),
    (_ev("destroy"), "stopped", True, False, "removed"),
    (_ev("pause"), "paused", True, False, None),
    (_ev("pause", "kill", "die", "stop"), "paused", True, False, "while paused"),
])
def test_someone_elses_stop_is_told_from_ours_by_the_engines_events(events, action, stop_returned, hard_killed,
                                                                     expected):
    reason = user_stop(events, action, stop_returned=stop_returned, hard_killed=hard_killed)
    assert (reason is None) if expected is None else (expected in reason)


def test_a_stop_during_the_sidecars_stop_leaves_the_container_stopped_and_aborts(engine, ctx, data, caplog):
    app = engine.add_container("app-1", app_labels(), {"/data": data})
    engine.on_stop = engine.someone_stops  # `docker-compose stop` lands while our stop is in flight
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.result is BackupResult.ABORTED and "someone else stopped" in outcome.error
    assert engine.state(app.id) is ContainerState.EXITED and engine.names("start") == []
    assert ctx.journal.entries() == []  # forgotten: a restart does not start it either
    assert list(ctx.store.root.rglob("*.tar.zst*")) == []
    assert any(r.message.startswith("container left stopped: someone else stopped it") for r in caplog.records)


def test_a_container_removed_while_paused_is_not_waited_for(engine, ctx, data):
    engine.add_container("app-1", app_labels(strategy="pause"), {"/data": data})
    app = engine.containers[next(iter(engine.containers))].info
    original = engine.read_path

    def removed_meanwhile(container_id, path):
        engine.record(container_id, "kill", signal="15")
        engine.record(container_id, "die", "stop")
        engine.set_state(container_id, ContainerState.EXITED)
        return original(container_id, path)

    engine.read_path = removed_meanwhile
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.result is BackupResult.ABORTED
    assert engine.state(app.id) is ContainerState.EXITED and engine.names("unpause") == []


def test_recovery_does_not_start_a_container_someone_stopped_after_the_sidecar_died(engine, ctx, data):
    app = engine.add_container("app-1", app_labels(), {"/data": data})
    ctx.journal.add(JournalEntry(app.id, app.name, InterruptionKind.STOPPED.value, "app", 0.0))
    engine.record(app.id, "kill", signal="15")
    engine.record(app.id, "die", "stop")  # ours, then the sidecar was killed
    engine.record(app.id, "stop")  # the user's stop request that waited for the same exit
    engine.set_state(app.id, ContainerState.EXITED)
    assert run_recovery(ctx) == []
    assert engine.state(app.id) is ContainerState.EXITED and ctx.journal.entries() == []


def test_recovery_still_starts_what_only_the_sidecar_stopped(engine, ctx, data):
    app = engine.add_container("app-1", app_labels(), {"/data": data})
    ctx.journal.add(JournalEntry(app.id, app.name, InterruptionKind.STOPPED.value, "app", 0.0))
    engine.stop(app.id, 10)
    engine.record(app.id, "kill", signal="9")  # its stop ran out of time: the engine's SIGKILL
    assert run_recovery(ctx) == ["app-1"]
    assert engine.state(app.id) is ContainerState.RUNNING


def test_a_sidecar_stopped_with_its_project_leaves_the_target_to_the_journal(engine, make_ctx, data):
    ctx = make_ctx(BACKUP_PROJECT="shop")
    compose = {"com.docker.compose.project": "shop"}
    app = engine.add_container("shop_app_1", {**app_labels(), **compose, "com.docker.compose.service": "app"},
                               {"/data": data})
    engine.own = engine.add_container("shop_backup_1", {**compose, "com.docker.compose.service": "backup"})
    db = engine.add_container("shop_db_1", {**compose, "com.docker.compose.service": "db"})

    def stack_stops(container_id):  # `docker-compose stop`: the sidecar and the db (the app was ours already)
        engine.someone_stops(engine.own.id)
        engine.someone_stops(db.id)
        ctx.cancel.set()  # the sidecar's SIGTERM
    engine.on_stop = stack_stops
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.result is BackupResult.FAILURE and "shutting down" in outcome.error  # a shutdown's abort
    assert engine.state(app.id) is ContainerState.EXITED and engine.names("start") == []
    assert [e.container_id for e in ctx.journal.entries()] == [app.id]  # the next start decides


def test_a_sidecar_stopped_alone_puts_the_target_back(engine, make_ctx, data):
    ctx = make_ctx(BACKUP_PROJECT="shop")
    compose = {"com.docker.compose.project": "shop"}
    app = engine.add_container("shop_app_1", {**app_labels(), **compose, "com.docker.compose.service": "app"},
                               {"/data": data})
    engine.own = engine.add_container("shop_backup_1", {**compose, "com.docker.compose.service": "backup"})
    engine.add_container("shop_db_1", {**compose, "com.docker.compose.service": "db"})  # runs on

    def sidecar_recreated(container_id):
        engine.someone_stops(engine.own.id)
        ctx.cancel.set()
    engine.on_stop = sidecar_recreated
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.result is BackupResult.FAILURE and "shutting down" in outcome.error
    assert engine.state(app.id) is ContainerState.RUNNING and ctx.journal.entries() == []


def test_the_downtime_ends_when_the_healthcheck_passes(engine, ctx, data, caplog):
    caplog.set_level(logging.INFO)
    app = engine.add_container("app-1", app_labels(), {"/data": data})
    engine.health_after[app.id] = 3  # healthy at the third look after the start
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.ok and engine.containers[app.id].info.health == "healthy"
    [line] = [r for r in caplog.records if r.message == "container running again"]
    assert line.ready == "healthy"


def test_a_healthcheck_that_never_passes_is_a_warning_after_the_ready_timeout(engine, ctx, data, caplog):
    caplog.set_level(logging.INFO)
    app = engine.add_container("app-1", {**app_labels(), "backup.ready-timeout": "1"}, {"/data": data})
    engine.health_after[app.id] = 10**9
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.ok and outcome.downtime >= 1.0
    assert any(r.message.startswith("container not healthy after its backup") for r in caplog.records)
    [line] = [r for r in caplog.records if r.message == "container running again"]
    assert line.ready == "not healthy in time"


def test_plan_shows_backup_keep_as_given_and_what_the_defaults_filled(engine, run, capsys, data, monkeypatch):
    monkeypatch.setenv("BACKUP_KEEP", "daily=7,weekly=4,monthly=3")
    engine.add_container("app-1", app_labels(), {"/data": data})
    engine.add_container("db-1", {**app_labels(keep="daily=14,weekly=4,monthly=3,hourly=0"), "backup.name": "db"},
                         {"/data": data})
    assert run("plan", "--json") == 0
    rows = {r["target"]: r for r in json.loads(capsys.readouterr().out)["targets"]}
    assert rows["app"]["keep"] == "daily=7,weekly=4,monthly=3 (not named, from the defaults: hourly=24)"
    assert rows["db"]["keep"] == "hourly=0,daily=14,weekly=4,monthly=3"


def test_sigterm_during_a_one_shot_backup_waits_for_the_stop_and_puts_the_container_back(engine, run, data,
                                                                                         capsys):
    app = engine.add_container("app-1", app_labels(), {"/data": data})
    engine.on_stop = lambda _cid: os.kill(os.getpid(), signal.SIGTERM)  # arrives while the stop is in flight
    assert run("backup", "app") == 1
    assert "shutting down" in capsys.readouterr().err
    assert [c[0] for c in engine.calls if c[0] in ("stop", "start")] == ["stop", "start"]
    assert engine.state(app.id) is ContainerState.RUNNING


def test_an_aborted_run_is_announced_and_counted_without_touching_the_volume_status(engine, ctx, data):
    app = engine.add_container("app-1", app_labels(), {"/data": data})
    engine.on_stop = engine.someone_stops
    outcome = run_backup(ctx, _target(ctx))
    assert decide(str(outcome.result), None, NotifyOn.FAILURE) == "aborted"
    message = render("aborted", outcome, None, "host")
    assert message.title == "backup-sidecar: backup of app aborted" and "someone else stopped" in message.body
    metrics = Metrics()
    metrics.discovered([TargetView("app", ("data",), 0.0, 86400.0)], 0)
    metrics.observe(outcome)
    runs = metrics.registry.get_sample_value("backup_sidecar_runs_total", {"target": "app", "result": "aborted"})
    assert runs == 1.0
    assert metrics.registry.get_sample_value("backup_sidecar_last_status", {"target": "app", "volume": "data"}) is None
    assert engine.state(app.id) is ContainerState.EXITED
