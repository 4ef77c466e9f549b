"""Notifications: URL parsing, what is news, message text, state across restarts, and
delivery that never holds up a backup (against local sockets, no outside network)."""

from __future__ import annotations

import json
import logging
import socket
import stat
import threading
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from sidecar.actions.backup import BackupOutcome
from sidecar.tarball.archive import ArchiveResult
from sidecar.notify import sender as notify
from sidecar.notify.sender import Message, Notifier, decide, render
from sidecar.notify.state import Failing
from sidecar.core.notify_urls import NotifyConfig, NotifyOn, parse_notify_on, parse_notify_urls

WHEN = datetime(2026, 11, 26, 3, 0, 4, tzinfo=timezone.utc)
SECRET = "Pa55wordXyz"  # never in a log line or an error message
TOKEN = "tok3nSecretQwerty"


def failure(target="grafana", phase="pre", error="grafana: pre failed: backup.exec.pre exited with 1: boom",
            when=WHEN) -> BackupOutcome:
    return BackupOutcome(target, f"proj-{target}-1", "failure", (), ("grafana-data", "grafana-conf"), 1.25, 0.0,
                         phase, error, when)


def success(target="grafana", when=WHEN) -> BackupOutcome:
    archives = (ArchiveResult(Path("/backups/daily/a.tar.zst"), 1000, 4000, "0" * 64),
                ArchiveResult(Path("/backups/daily/b.tar.zst"), 24, 100, "1" * 64))
    return BackupOutcome(target, f"proj-{target}-1", "success", archives, ("grafana-data", "grafana-conf"), 3.04,
                         0.5, None, None, when)


def skipped(target="grafana") -> BackupOutcome:
    return BackupOutcome(target, f"proj-{target}-1", "skipped", phase="schedule",
                         error="previous run still running", finished_at=WHEN)


def fields(body: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in body.splitlines())


class Recorder:
    """A fake transport: records messages; can be made to block or to fail."""

    def __init__(self):
        self.messages: list[Message] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_next = False

    def __call__(self, message: Message) -> None:
        self.gate.wait(10)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError(f"transport broke on {message.target}")
        self.messages.append(message)

    @property
    def events(self) -> list[str]:
        return [m.event for m in self.messages]


def run(outcomes, on=NotifyOn.FAILURE, state_path=None) -> Recorder:
    recorder = Recorder()
    notifier = Notifier(NotifyConfig(urls=(), on=on), state_path, send=recorder)
    for outcome in outcomes:
        notifier.outcome(outcome)
    notifier.close(timeout=5)
    return recorder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def leaked(records, *secrets) -> list[str]:
    """Every record's text (message, args, extra fields, traceback) holding a secret."""
    found = []
    for record in records:
        text = repr(vars(record)) + logging.Formatter().format(record)
        found += [f"{record.name}: {record.getMessage()}" for s in secrets if s in text]
    return found


def wait_for(predicate, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    pytest.fail(f"timed out waiting for {what}")


# --- parse_notify_urls --------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "json://127.0.0.1:8080/hook",
    "jsons://user:pass@hooks.example.com/backup",
    "mailto://user:pass@mail.example.com?to=ops@example.com&from=backup@example.com",
    "mailto://127.0.0.1:2525?to=ops@example.com&from=backup@example.com&mode=insecure",
    "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#general",
    "discord://4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js",
    "tgram://123456789:AABBCCDDEEFFGGHHIIJJ/12345",
    "ntfy://ntfy.sh/backups",
    "gotify://gotify.example.com/AbCdEfGhIjKlMnO",
])
def test_parse_accepts_apprise_urls(url):
    assert parse_notify_urls(url) == (url,)


@pytest.mark.parametrize("text, expected", [
    ("json://a.example/x,ntfy://ntfy.sh/t", ("json://a.example/x", "ntfy://ntfy.sh/t")),
    ("json://a.example/x, ntfy://ntfy.sh/t\n", ("json://a.example/x", "ntfy://ntfy.sh/t")),
    ("json://a.example/x\nntfy://ntfy.sh/t;gotify://g.example/AbCdEfGhIjKlMnO",
     ("json://a.example/x", "ntfy://ntfy.sh/t", "gotify://g.example/AbCdEfGhIjKlMnO")),
    # a comma inside one URL (two recipients) is not a separator
    ("mailto://u:p@mail.example.com?to=a@example.com,b@example.com&from=c@example.com, json://a.example/x",
     ("mailto://u:p@mail.example.com?to=a@example.com,b@example.com&from=c@example.com", "json://a.example/x")),
    ("", ()),
    (" ,\n ", ()),
])
def test_parse_splits_lists(text, expected):
    assert parse_notify_urls(text) == expected


@pytest.mark.parametrize("text, expected", [
    (f"nosuch://user:{SECRET}@host/x", ["entry 1 (nosuch://...)", "scheme apprise does not know",
                                         "mailto://", "json://"]),
    (f"user:{SECRET}@host", ["entry 1 is not a URL", "SCHEME://"]),
    ("json://", ["entry 1 (json://...) is not a valid json:// URL"]),
    (f"mailto://{SECRET}", ["entry 1 (mailto://...) is not a valid mailto:// URL"]),
])
def test_parse_rejects_naming_entry_and_scheme_never_the_secret(text, expected, caplog):
    caplog.set_level(1)
    with pytest.raises(ValueError) as info:
        parse_notify_urls(text)
    message = str(info.value)
    for part in expected:
        assert part in message
    assert SECRET not in message
    assert not leaked(caplog.records, SECRET)


def test_parse_reports_every_bad_entry_at_once(caplog):
    caplog.set_level(1)
    text = f"json://a.example/x, nosuch://{SECRET}@h, ntfy://ntfy.sh/t, http://u:{SECRET}@h/"
    with pytest.raises(ValueError) as info:
        parse_notify_urls(text)
    message = str(info.value)
    assert "entry 2 (nosuch://...)" in message and "entry 4 (http://...)" in message
    assert "entry 1" not in message and "entry 3" not in message
    assert SECRET not in message
    assert not leaked(caplog.records, SECRET)


def test_parse_notify_on():
    assert parse_notify_on("failure") is NotifyOn.FAILURE
    assert parse_notify_on(" Always ") is NotifyOn.ALWAYS
    with pytest.raises(ValueError, match="accepted: failure, always"):
        parse_notify_on("sometimes")


def test_config_hides_urls_in_repr():
    config = NotifyConfig(urls=(f"json://u:{SECRET}@h/x",))
    assert SECRET not in repr(config)
    with pytest.raises(ValueError):
        NotifyConfig(urls=(), timeout=0)


# --- what is news ---------------------------------------------------------------------

FAILING = Failing("2026-11-26T03:00:04+00:00", 2, "pre")


@pytest.mark.parametrize("result, failing, on, event", [
    ("failure", None, NotifyOn.FAILURE, "failure"),
    ("failure", FAILING, NotifyOn.FAILURE, "failure"),  # every failed run is reported
    ("success", FAILING, NotifyOn.FAILURE, "recovery"),
    ("success", None, NotifyOn.FAILURE, None),
    ("skipped", None, NotifyOn.FAILURE, None),
    ("skipped", FAILING, NotifyOn.FAILURE, None),
    ("failure", None, NotifyOn.ALWAYS, "failure"),
    ("success", FAILING, NotifyOn.ALWAYS, "recovery"),  # one message, not recovery + success
    ("success", None, NotifyOn.ALWAYS, "success"),
    ("skipped", None, NotifyOn.ALWAYS, "skipped"),
])
def test_decision_table(result, failing, on, event):
    assert decide(result, failing, on) == event


def test_failure_mode_sequence_reports_each_failure_then_one_recovery():
    recorder = run([success(), failure(), failure(phase="read"), skipped(), success(), success()])
    assert recorder.events == ["failure", "failure", "recovery"]
    first, second, recovery = recorder.messages
    assert fields(first.body)["failed_runs"] == "1"
    assert fields(second.body)["failed_runs"] == "2"
    assert fields(second.body)["phase"] == "read"
    assert fields(recovery.body)["failed_runs"] == "2"
    assert fields(recovery.body)["last_failed_phase"] == "read"
    assert [m.notify_type for m in recorder.messages] == ["failure", "failure", "success"]


def test_always_mode_sequence():
    recorder = run([success(), failure(), success(), skipped(), success()], on=NotifyOn.ALWAYS)
    assert recorder.events == ["success", "failure", "recovery", "skipped", "success"]
    assert [m.notify_type for m in recorder.messages] == ["success", "failure", "success", "warning", "success"]


def test_an_off_site_copy_that_failed_is_news_in_every_mode():
    lost = replace(success(), offsite_error="s3: endpoint http://127.0.0.1:9 did not answer")
    for on in NotifyOn:
        recorder = run([success(), lost], on=on)
        assert recorder.events[-1] == "offsite"
        message = recorder.messages[-1]
        assert message.notify_type == "warning" and "off-site copy failed" in message.title
        assert fields(message.body)["offsite_error"] == "s3: endpoint http://127.0.0.1:9 did not answer"


def test_targets_are_tracked_separately():
    recorder = run([failure("a"), failure("b"), success("a"), success("c"), success("b")])
    assert [(m.event, m.target) for m in recorder.messages] == [
        ("failure", "a"), ("failure", "b"), ("recovery", "a"), ("recovery", "b")]


# --- message text ------------------------------------------------------------------------

def test_failure_message_names_target_volumes_phase_error_and_host():
    message = render("failure", failure(), Failing("2026-11-26T03:00:04+00:00", 1, "pre"), "nas")
    assert message.title == "backup-sidecar: backup of grafana failed"
    assert message.notify_type == "failure"
    assert fields(message.body) == {
        "event": "failure",
        "target": "grafana",
        "container": "proj-grafana-1",
        "volumes": "grafana-data, grafana-conf",
        "phase": "pre",
        "error": "grafana: pre failed: backup.exec.pre exited with 1: boom",
        "failing_since": "2026-11-26T03:00:04+00:00",
        "failed_runs": "1",
        "finished_at": "2026-11-26T03:00:04+00:00",
        "seconds": "1.2",
        "host": "nas",
    }


def test_success_message_counts_archives_and_bytes():
    message = render("success", success(), None, "nas")
    assert message.title == "backup-sidecar: backup of grafana succeeded"
    body = fields(message.body)
    assert (body["archives"], body["bytes"], body["downtime_seconds"]) == ("2", "1024", "0.5")
    assert "error" not in body and "phase" not in body


def test_recovery_title():
    message = render("recovery", success(), FAILING, "nas")
    assert message.title == "backup-sidecar: backup of grafana recovered"
    assert fields(message.body)["failing_since"] == FAILING.since


def test_error_with_new_lines_stays_on_one_line_and_long_errors_are_cut():
    multi = render("failure", failure(error="exited with 2:\nline one\r\n\nline two"), None, "h")
    assert fields(multi.body)["error"] == "exited with 2: | line one | line two"
    long = render("failure", failure(error="x" * 5000), None, "h")
    error = fields(long.body)["error"]
    assert error.endswith(" [...]") and len(error) == notify.MAX_ERROR_CHARS + len(" [...]")


def test_outcome_without_time_gets_the_current_time():
    outcome = BackupOutcome("t", "c", "failure", phase="internal", error="boom")
    before = datetime.now(timezone.utc).replace(microsecond=0)
    finished = datetime.fromisoformat(fields(render("failure", outcome, None, "h").body)["finished_at"])
    assert before <= finished <= datetime.now(timezone.utc)


# --- state ------------------------------------------------------------------------------

def test_recovery_is_sent_after_a_restart(tmp_path):
    state = tmp_path / "state" / "notify.json"
    assert run([failure(), failure()], state_path=state).events == ["failure", "failure"]
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    saved = json.loads(state.read_text())
    assert saved["failing"] == {"grafana": {"since": "2026-11-26T03:00:04+00:00", "runs": 2, "phase": "pre"}}

    recorder = run([success()], state_path=state)  # a new Notifier: a restarted sidecar
    assert recorder.events == ["recovery"]
    assert fields(recorder.messages[0].body)["failed_runs"] == "2"
    assert json.loads(state.read_text())["failing"] == {}
    assert run([success()], state_path=state).events == []


def test_without_a_state_file_a_restart_forgets():
    assert run([failure()]).events == ["failure"]
    assert run([success()]).events == []


def test_unreadable_state_is_logged_and_replaced(tmp_path, caplog):
    state = tmp_path / "notify.json"
    state.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="sidecar.notify"):
        assert run([failure()], state_path=state).events == ["failure"]
    assert any("state unreadable" in r.getMessage() for r in caplog.records)
    assert "grafana" in json.loads(state.read_text())["failing"]


def test_state_in_an_unwritable_place_is_logged_and_decisions_go_on(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING, logger="sidecar.notify"):
        recorder = run([failure(), success()], state_path=blocker / "notify.json")  # parent is a file
    assert recorder.events == ["failure", "recovery"]
    assert any(r.levelno >= logging.WARNING and r.phase == "notify" for r in caplog.records)


# --- delivery -----------------------------------------------------------------------------

class HangingServer:
    """Accepts connections and never answers."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self):
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def hanging_server():
    server = HangingServer()
    yield server
    server.close()


def test_outcome_returns_at_once_while_the_receiver_hangs(hanging_server, caplog):
    caplog.set_level(logging.INFO, logger="sidecar.notify")
    notifier = Notifier(NotifyConfig(urls=(f"json://127.0.0.1:{hanging_server.port}/hook",), timeout=0.5))
    try:
        for outcome in (failure(), failure("other")):
            started = time.monotonic()
            notifier.outcome(outcome)
            assert time.monotonic() - started < 0.2
        wait_for(lambda: hanging_server.accepted, what="the send to reach the hanging receiver")
        failed = wait_for(lambda: [r for r in caplog.records if r.getMessage() == "notification failed"],
                          what="the timed-out send to be logged")
        assert failed[0].target == "grafana" and failed[0].phase == "notify"
        assert failed[0].service == f"json://127.0.0.1:{hanging_server.port}"
    finally:
        started = time.monotonic()
        notifier.close(timeout=3)
        assert time.monotonic() - started < 3.5


def test_failing_url_is_logged_without_secrets_and_swallowed(caplog):
    caplog.set_level(1)  # everything, apprise's and urllib3's debug lines included
    port = free_port()  # nothing listens: connection refused
    url = f"json://backup:{SECRET}@127.0.0.1:{port}/hooks/{TOKEN}?token={TOKEN}"
    notifier = Notifier(NotifyConfig(urls=parse_notify_urls(url), timeout=2))
    notifier.outcome(failure())  # does not raise
    notifier.close()
    errors = [r for r in caplog.records if r.name.startswith("sidecar.notify") and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].getMessage() == "notification failed"
    assert (errors[0].target, errors[0].phase, errors[0].event) == ("grafana", "notify", "failure")
    assert errors[0].service == f"json://127.0.0.1:{port}"
    assert "connection" in errors[0].error.lower()  # apprise's reason, kept
    assert any(r.name.startswith(("apprise", "urllib3")) for r in caplog.records)  # there was something to leak
    assert not leaked(caplog.records, SECRET, TOKEN)


def test_transport_error_is_logged_and_the_next_message_still_goes(caplog):
    recorder = Recorder()
    notifier = Notifier(NotifyConfig(urls=()), send=recorder)
    recorder.fail_next = True
    with caplog.at_level(logging.ERROR, logger="sidecar.notify"):
        notifier.outcome(failure("a"))
        notifier.outcome(failure("b"))
        notifier.close(timeout=5)
    assert [m.target for m in recorder.messages] == ["b"]
    [error] = [r for r in caplog.records if r.getMessage() == "notification failed"]
    assert error.target == "a" and "transport broke" in error.error


def test_full_queue_drops_and_logs_without_waiting(caplog):
    recorder = Recorder()
    recorder.gate.clear()  # the sender is stuck
    notifier = Notifier(NotifyConfig(urls=()), send=recorder)
    try:
        with caplog.at_level(logging.ERROR, logger="sidecar.notify"):
            started = time.monotonic()
            for n in range(notify.QUEUE_SIZE + 3):
                notifier.outcome(failure(f"t{n}"))
            assert time.monotonic() - started < 1.0
        dropped = [r for r in caplog.records if "dropped" in r.getMessage()]
        assert 1 <= len(dropped) <= 3  # the sender may have taken one off the queue already
        assert dropped[-1].target == f"t{notify.QUEUE_SIZE + 2}"
    finally:
        recorder.gate.set()
        notifier.close(timeout=5)
    assert len(recorder.messages) == notify.QUEUE_SIZE + 3 - len(dropped)


def test_close_is_bounded_when_a_send_never_ends(caplog):
    recorder = Recorder()
    recorder.gate.clear()
    notifier = Notifier(NotifyConfig(urls=()), send=recorder)
    notifier.outcome(failure())
    with caplog.at_level(logging.WARNING, logger="sidecar.notify"):
        started = time.monotonic()
        notifier.close(timeout=0.2)
        assert time.monotonic() - started < 1.0
    assert any("unsent" in r.getMessage() for r in caplog.records)
    notifier.outcome(failure())  # after close: logged, not queued, no error
    recorder.gate.set()


def test_no_urls_means_no_thread_and_no_state(tmp_path):
    state = tmp_path / "notify.json"
    notifier = Notifier(NotifyConfig(urls=()), state)
    notifier.outcome(failure())
    notifier.close()
    assert not state.exists()
