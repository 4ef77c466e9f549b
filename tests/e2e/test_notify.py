"""Notifications end to end through apprise against real receivers on 127.0.0.1: an HTTP
server taking json:// webhooks and an SMTP server (aiosmtpd) taking mailto:// email.
The module tests need only local sockets; the last one drives the real CLI and engine."""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
from datetime import datetime, timezone
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sidecar.actions.backup import BackupOutcome
from sidecar.tarball.archive import ArchiveResult
from sidecar.notify.sender import Notifier
from sidecar.core.notify_urls import NotifyConfig, parse_notify_urls

from .support import free_port, wait_for

SECRET = "Smtp-Pa55-Xyz"
TOKEN = "hookTok3nQwertyuiop"
PRE_ERROR = "grafana: pre failed: backup.exec.pre exited with 1: sqlite3: database is locked"


def pre_failure() -> BackupOutcome:
    return BackupOutcome("grafana", "proj-grafana-1", "failure", (), ("grafana-data",), 0.8, 0.0, "pre",
                         PRE_ERROR, datetime(2026, 11, 26, 3, 0, 1, tzinfo=timezone.utc))


def success() -> BackupOutcome:
    archive = ArchiveResult(Path("/backups/daily/grafana_grafana-data_2026-11-27_daily.tar.zst"), 2048, 10240,
                            "0" * 64)
    return BackupOutcome("grafana", "proj-grafana-1", "success", (archive,), ("grafana-data",), 2.5, 1.5,
                         finished_at=datetime(2026, 11, 27, 3, 0, 2, tzinfo=timezone.utc))


def fields(text: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in text.strip().splitlines())


def leaked(records, *secrets) -> list[str]:
    found = []
    for record in records:
        text = repr(vars(record)) + logging.Formatter().format(record)
        found += [f"{record.name}: {record.getMessage()}" for s in secrets if s in text]
    return found


# --- an HTTP webhook receiver ---------------------------------------------------------

class WebhookReceiver:
    def __init__(self):
        self.requests: list[dict] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers),
                                          "body": json.loads(self.rfile.read(length))})
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


def test_json_webhook_gets_failure_then_recovery(webhook, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    url = f"json://backup:{SECRET}@127.0.0.1:{webhook.port}/hooks/{TOKEN}"
    notifier = Notifier(NotifyConfig(urls=parse_notify_urls(url), timeout=5), tmp_path / "notify.json")
    try:
        notifier.outcome(pre_failure())
        wait_for(lambda: len(webhook.requests) == 1, what="the failure POST")
        notifier.outcome(success())
        wait_for(lambda: len(webhook.requests) == 2, what="the recovery POST")
    finally:
        notifier.close()

    failure, recovery = webhook.requests
    assert failure["path"] == f"/hooks/{TOKEN}"
    assert base64.b64decode(failure["headers"]["Authorization"].split()[1]).decode() == f"backup:{SECRET}"
    assert failure["body"]["type"] == "failure"
    assert failure["body"]["title"] == "backup-sidecar: backup of grafana failed"
    sent = fields(failure["body"]["message"])
    assert (sent["target"], sent["container"], sent["volumes"], sent["phase"]) == \
        ("grafana", "proj-grafana-1", "grafana-data", "pre")
    assert sent["error"] == PRE_ERROR
    assert sent["host"] == socket.gethostname()
    assert sent["finished_at"] == "2026-11-26T03:00:01+00:00"

    assert recovery["body"]["type"] == "success"
    assert recovery["body"]["title"] == "backup-sidecar: backup of grafana recovered"
    back = fields(recovery["body"]["message"])
    assert (back["event"], back["failing_since"], back["failed_runs"], back["archives"]) == \
        ("recovery", "2026-11-26T03:00:01+00:00", "1", "1")

    sent_logs = [r for r in caplog.records if r.getMessage() == "notification sent"]
    assert [r.event for r in sent_logs] == ["failure", "recovery"]
    assert sent_logs[0].service == f"json://127.0.0.1:{webhook.port}"
    assert not leaked(caplog.records, SECRET, TOKEN)


def test_a_refusing_receiver_is_logged_and_later_messages_still_go(webhook, caplog):
    caplog.set_level(logging.INFO)
    webhook.status = 500
    notifier = Notifier(NotifyConfig(urls=parse_notify_urls(f"json://127.0.0.1:{webhook.port}/hook"), timeout=5))
    try:
        notifier.outcome(pre_failure())
        wait_for(lambda: [r for r in caplog.records if r.getMessage() == "notification failed"],
                 what="the refused POST to be logged")
        webhook.status = 200
        notifier.outcome(success())
        wait_for(lambda: [r for r in caplog.records if r.getMessage() == "notification sent"],
                 what="the next POST to go through")
    finally:
        notifier.close()
    assert [r["body"]["type"] for r in webhook.requests] == ["failure", "success"]
    [failed] = [r for r in caplog.records if r.getMessage() == "notification failed"]
    assert (failed.target, failed.phase, failed.event) == ("grafana", "notify", "failure")
    assert "500" in failed.error


# --- an SMTP server ---------------------------------------------------------------------

class MailSink:
    """aiosmtpd on 127.0.0.1 without TLS, with AUTH (allowed over plain text here)."""

    def __init__(self, login: str, password: str):
        from aiosmtpd.controller import Controller  # the test extra
        from aiosmtpd.smtp import AuthResult

        self.messages: list = []
        self.logins: list[tuple[str, str]] = []
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                sink.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                                      message_from_bytes(envelope.original_content, policy=policy.default)))
                return "250 OK"

        def authenticator(server, session, envelope, mechanism, auth_data):
            user, word = auth_data.login.decode(), auth_data.password.decode()
            sink.logins.append((user, word))
            return AuthResult(success=(user, word) == (login, password))

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, authenticator=authenticator,
                                     auth_required=True, auth_require_tls=False)
        self.controller.start()

    def close(self):
        self.controller.stop()


@pytest.fixture
def mail_sink():
    sink = MailSink("backup", SECRET)
    yield sink
    sink.close()


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_mailto_sends_an_email_through_plain_smtp_with_auth(mail_sink, caplog):
    caplog.set_level(1)  # apprise's and smtplib's chatter included: none of it may show the password
    # mode=insecure: plain SMTP, no STARTTLS (a relay on the same host or network);
    # smtp= names the server, to=/from= the addresses; user:password is the SMTP login.
    url = (f"mailto://backup:{SECRET}@127.0.0.1:{mail_sink.port}"
           f"?smtp=127.0.0.1&mode=insecure&to=ops@example.com&from=backup@example.com")
    notifier = Notifier(NotifyConfig(urls=parse_notify_urls(url), timeout=5))
    try:
        notifier.outcome(pre_failure())
        wait_for(lambda: mail_sink.messages, what="the email")
    finally:
        notifier.close()

    assert mail_sink.logins == [("backup", SECRET)]
    mail_from, rcpt_tos, mail = mail_sink.messages[0]
    assert (mail_from, rcpt_tos) == ("backup@example.com", ["ops@example.com"])
    assert mail["Subject"] == "backup-sidecar: backup of grafana failed"
    assert "ops@example.com" in mail["To"]
    body = mail.get_body(preferencelist=("plain",)).get_content()
    sent = fields(body)
    assert (sent["target"], sent["volumes"], sent["phase"], sent["error"]) == \
        ("grafana", "grafana-data", "pre", PRE_ERROR)
    assert any(r.getMessage() == "notification sent" and r.service.startswith("mailto://127.0.0.1")
               for r in caplog.records)
    assert not leaked(caplog.records, SECRET)



# --- through the real CLI and engine ---------------------------------------------------

def test_failing_pre_command_notifies_then_recovery(lab, webhook):
    """The sidecar's own backup command, a real container whose pre-command fails until a
    file appears: one failure message naming target, volume, phase and error, then a
    recovery message."""
    volume = lab.volume("data")
    lab.workload("app", {"backup.enable": "true", "backup.strategy": "stop",
                         "backup.exec.pre": "test -f /data/ready || { echo database not ready >&2; exit 4; }"},
                 {volume: "/data"})
    env = {"NOTIFY_URLS": f"json://hook:s3cret-hook@127.0.0.1:{webhook.port}/notify"}
    failed = lab.cli("backup", "app", **env)
    assert failed.returncode == 1
    wait_for(lambda: len(webhook.requests) == 1, what="the failure notification")
    body = webhook.requests[0]["body"]
    got = fields(body["message"])
    assert body["type"] == "failure" and "app" in body["title"]
    assert got["target"] == "app" and got["volumes"] == "data" and got["phase"] == "pre"
    assert "exited with 4" in got["error"] and "database not ready" in got["error"]
    assert "s3cret-hook" not in failed.stderr + failed.stdout

    lab.populate(volume, "touch ready")
    ok = lab.cli("backup", "app", **env)
    assert ok.returncode == 0, ok.stderr
    wait_for(lambda: len(webhook.requests) == 2, what="the recovery notification")
    recovery = webhook.requests[1]["body"]
    assert recovery["type"] == "success" and "recovered" in recovery["title"]
    assert fields(recovery["message"])["target"] == "app"
