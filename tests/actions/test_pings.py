"""Heartbeat pings through the CLI on the fake engine, against a local HTTP receiver that
records every request: start and success, start and failure with the run's log tail, a
receiver that is down and one that is slow (the backup still succeeds, the wait is
bounded, the failures are counted, the stop window is no longer)."""

from __future__ import annotations

import time
import uuid

import pytest

from sidecar.core.errors import EngineError
from sidecar.telemetry.metrics import STATE_FILE, OutcomeRecord
from tests.fakes.ping_receiver import PingReceiver

from .conftest import app_labels

CHECK = str(uuid.UUID(int=0x5F1C0D7E9A2B4C3D8E4FA1B2C3D4E5F6))


@pytest.fixture
def receiver():
    found = PingReceiver()
    yield found
    found.close()


def recorded(env) -> dict:
    from pathlib import Path
    return OutcomeRecord(Path(env["BACKUP_DIR"]) / ".sidecar" / STATE_FILE).read()["targets"]["app"]


def test_start_and_success_on_healthchecks_with_one_run_id(monkeypatch, run, engine, env, data, receiver, capsys):
    monkeypatch.setenv("BACKUP_PING_URL", "hc+" + receiver.url(f"/ping/{CHECK}"))
    engine.add_container("app-1", app_labels(), {"/data": data})
    assert run("backup", "app") == 0  # the command waits (bounded) for its pings before it exits
    start, end = receiver.requests
    assert (start.method, start.path, start.body) == ("GET", f"/ping/{CHECK}/start", b"")
    assert (end.method, end.path) == ("POST", f"/ping/{CHECK}")
    assert start.query["rid"] == end.query["rid"] and uuid.UUID(start.query["rid"])
    assert end.text.startswith("backup of app succeeded: 1 archives, ")
    assert CHECK not in capsys.readouterr().err


def test_start_and_failure_carry_the_log_tail_to_both_urls(monkeypatch, run, engine, env, data, receiver):
    label_receiver = PingReceiver()
    try:
        monkeypatch.setenv("BACKUP_PING_URL", "hc+" + receiver.url(f"/ping/{CHECK}"))
        monkeypatch.setenv("LOG_LEVEL", "INFO")
        engine.add_container("app-1", app_labels(ping=label_receiver.url("/hook/Tok3nTok3n")), {"/data": data})
        engine.fail("read_path", EngineError("the engine went away"), after_bytes=100)
        assert run("backup", "app") == 1
    finally:
        label_receiver.close()
    start, end = receiver.requests
    assert start.path == f"/ping/{CHECK}/start" and (end.method, end.path) == ("POST", f"/ping/{CHECK}/fail")
    assert end.query["rid"] == start.query["rid"]
    head, _, tail = end.text.partition("\n\nthe run's last ")
    assert head.startswith("backup of app failed in phase ") and "the engine went away" in head
    lines = tail.splitlines()[1:]
    assert any("backup started" in line for line in lines) is False  # logged before the run held its lock
    assert any("backup failed" in line and "the engine went away" in line for line in lines), lines
    assert all("target=app" in line or "target=" not in line for line in lines)
    plain_start, plain_end = label_receiver.requests  # the label's plain URL: GET, then POST with the same text
    assert (plain_start.method, plain_start.path, plain_start.query) == ("GET", "/hook/Tok3nTok3n", {})
    assert (plain_end.method, plain_end.text) == ("POST", end.text)


def test_a_receiver_that_is_down_fails_no_backup_and_is_counted(monkeypatch, run, engine, env, data, receiver,
                                                                capsys):
    monkeypatch.setenv("BACKUP_PING_URL", "hc+" + receiver.url(f"/ping/{CHECK}"))
    receiver.down()
    engine.add_container("app-1", app_labels(), {"/data": data})
    assert run("backup", "app") == 0
    assert recorded(env)["ping_failures"] == {"hc": 2}  # start and success
    assert recorded(env)["runs"] == {"success": 1}
    said = capsys.readouterr()
    failed = [line for line in said.err.splitlines() if "ping failed" in line]
    assert len(failed) == 2 and "event=start" in failed[0] and "event=success" in failed[1]
    assert all(f"ping=hc:http://127.0.0.1:{receiver.port} error=no answer: " in line for line in failed)
    assert CHECK not in said.err + said.out


def test_a_slow_receiver_is_waited_for_a_bounded_time_and_never_in_the_stop_window(monkeypatch, run, engine, env, data):
    slow = PingReceiver(delay=30)
    try:
        monkeypatch.setenv("BACKUP_PING_URL", slow.url(f"/ping/{CHECK}"))
        monkeypatch.setenv("BACKUP_PING_TIMEOUT", "1")
        engine.add_container("app-1", app_labels(strategy="stop"), {"/data": data})
        began = time.monotonic()
        assert run("backup", "app") == 0
        took = time.monotonic() - began
    finally:
        slow.close()
    assert took < 10  # not the receiver's 30 s per request: one timeout, then at most two at exit
    assert recorded(env)["ping_failures"] == {"plain": 2}
    assert recorded(env)["downtime"] < 1.0  # the start ping (sent before the stop) did not wait in the window
    assert slow.requests and slow.requests[0].method == "GET"
