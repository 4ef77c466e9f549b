"""Sends notifications about backup outcomes through apprise (mailto://, Slack, Discord,
Telegram, ntfy, Gotify, json:// webhooks and the rest of apprise's URL schemes).

Owns: deciding which outcome is news (a failure, the first success after failures, the
first run whose copy is at risk (a hot copy of a live database, consistency.py), and
with NOTIFY_ON=always every success and skip), the text of each message, and delivering
without ever holding up a backup. URL parsing is in `urls`, secret masking in `redact`,
the failing targets in `state`.

Delivery runs in one background thread fed by a bounded queue: `Notifier.outcome()` only
decides, records the state and enqueues. Each send is bounded by `NotifyConfig.timeout`
(apprise's call timeout and the socket timeouts of the service). A message that cannot be
queued or sent is logged and dropped; nothing here raises into the backup.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import apprise

from .redact import host_part, redact, register_secrets
from .state import Failing, FailingTargets
from ..core.notify_urls import NotifyConfig, NotifyOn, asset, scheme_of

logger = logging.getLogger(__name__)

QUEUE_SIZE = 100  # messages waiting for the sender; more are dropped (and logged)
MAX_ERROR_CHARS = 1000  # an error text longer than this is cut in a message


@dataclass(frozen=True)
class Message:
    event: str  # "failure", "recovery", "success", "skipped", "aborted", "offsite" or "risk"
    target: str
    phase: str | None
    title: str
    body: str
    notify_type: str  # an apprise NotifyType value: "failure", "success", "warning"


def service_label(plugin: Any, url: str) -> str:
    """scheme://host of a service for log lines, with apprise's masking (a token that
    sits in the host part, as in pbul://TOKEN, stays masked) and no user info."""
    try:
        shown = plugin.url(privacy=True)
    except Exception:
        shown = ""
    scheme = scheme_of(shown) or scheme_of(url) or "?"
    return redact(f"{scheme}://{host_part(shown)}")


# --- what is news, and its text ------------------------------------------------------

def decide(result: str, failing: Failing | None, on: NotifyOn) -> str | None:
    """The event to announce for an outcome, or None."""
    if result == "failure":
        return "failure"  # every failed run: each is news, and a repeat shows it is still broken
    if result == "success":
        if failing is not None:
            return "recovery"
        return "success" if on is NotifyOn.ALWAYS else None
    if result == "aborted":
        return "aborted"  # given up on purpose (someone stopped the container): news, not a failure
    return "skipped" if on is NotifyOn.ALWAYS else None


_TITLES = {"failure": "failed", "recovery": "recovered", "success": "succeeded", "skipped": "skipped",
           "aborted": "aborted", "offsite": "succeeded, but its off-site copy failed",
           "risk": "succeeded with a warning: hot copy of a live database"}
_TYPES = {"failure": "failure", "recovery": "success", "success": "success", "skipped": "warning",
          "aborted": "warning", "offsite": "warning", "risk": "warning"}


def with_offsite(event: str | None, outcome: Any) -> str | None:
    """A backup that succeeded while its off-site copy failed is news in every mode: a
    store down for days must not go unnoticed until the last local copy is gone."""
    if event in (None, "success") and getattr(outcome, "offsite_error", None):
        return "offsite"
    return event


def with_risk(event: str | None, new_risk: bool) -> str | None:
    """A run at risk is news once, when the risk starts (or changes), not every run: it
    comes from the labels, so it stays until someone changes them, and a message per
    run would teach people to ignore the channel that also carries failures. Every
    message about a run at risk says so (`warning:`); the log says it every run and the
    metric while it lasts. Other news (a failure, a recovery) carries it instead."""
    return "risk" if new_risk and event in (None, "success") else event


def render(event: str, outcome: Any, failing: Failing | None, host: str) -> Message:
    """Title and body. The body is one `key: value` per line (values on one line), so a
    json:// receiver can parse it and a human can read it."""
    target = str(getattr(outcome, "target", "?"))
    phase = getattr(outcome, "phase", None)
    lines: list[tuple[str, Any]] = [
        ("event", event),
        ("target", target),
        ("container", getattr(outcome, "container", None)),
        ("volumes", ", ".join(getattr(outcome, "volumes", ()) or ()) or None),
    ]
    if event in ("failure", "skipped", "aborted"):
        lines += [("phase", phase or "unknown"), ("error", _cut(getattr(outcome, "error", None)))]
    if getattr(outcome, "offsite_error", None):
        lines.append(("offsite_error", _cut(outcome.offsite_error)))
    if (risk := getattr(outcome, "risk", None)) is not None:
        lines.append(("warning", risk.summary))
    archives = tuple(getattr(outcome, "archives", ()) or ())
    if archives:
        lines += [("archives", len(archives)), ("bytes", sum(int(getattr(a, "size", 0) or 0) for a in archives))]
    if failing is not None:
        lines += [("failing_since", failing.since), ("failed_runs", failing.runs)]
        if event == "recovery":
            lines.append(("last_failed_phase", failing.phase))
    lines += [
        ("finished_at", _when(outcome).isoformat(timespec="seconds")),
        ("seconds", round(float(getattr(outcome, "seconds", 0.0) or 0.0), 1)),
    ]
    if event in ("success", "recovery") and getattr(outcome, "downtime", 0):
        lines.append(("downtime_seconds", round(float(outcome.downtime), 1)))
    lines.append(("host", host))
    body = "\n".join(f"{key}: {_one_line(value)}" for key, value in lines if value is not None)
    subject = getattr(outcome, "subject", None) or f"backup of {target}"  # a restic check names itself
    return Message(event, target, phase, f"backup-sidecar: {subject} {_TITLES[event]}", body,
                   _TYPES[event])


def _when(outcome: Any) -> datetime:
    when = getattr(outcome, "finished_at", None)
    if not isinstance(when, datetime):
        return datetime.now(timezone.utc)
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def _cut(text: str | None) -> str | None:
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + " [...]"


def _one_line(value: Any) -> str:
    return " | ".join(part.strip() for part in str(value).splitlines() if part.strip())


# --- the notifier -------------------------------------------------------------------

_STOP = object()


class Notifier:
    """Turns backup outcomes into notifications. `outcome()` returns at once; sends
    happen in a background thread. `send` replaces delivery through apprise (tests, or
    another transport); it is called in the background thread with each Message."""

    def __init__(self, config: NotifyConfig, state_path: Path | None = None, *,
                 send: Callable[[Message], None] | None = None):
        self.config = config
        self.host = socket.gethostname()
        self._state = FailingTargets(state_path)
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
        self._closed = False
        self._services: list[tuple[Any, str]] = []  # (apprise.Apprise with one service, label)
        self._send = send or self._send_apprise
        if send is None:
            self._services = self._load_services(config.urls)
        self._active = bool(self._services) or send is not None
        self._thread = None
        if self._active:
            self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
            self._thread.start()

    # --- called by the backup side -------------------------------------------------
    def outcome(self, outcome: Any) -> None:
        """Decide whether `outcome` is news and queue the message. Never raises and never
        waits on the network."""
        if not self._active:
            return
        try:
            message = self._decide(outcome)
        except Exception:  # a bug here must not reach the backup
            logger.exception("notification not prepared", extra={"target": getattr(outcome, "target", None),
                                                                  "phase": "notify"})
            return
        if message is None:
            return
        if self._closed:
            logger.warning("notification dropped: the notifier is closed",
                           extra={"target": message.target, "phase": "notify", "event": message.event})
            return
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            logger.error("notification dropped: too many waiting to be sent",
                         extra={"target": message.target, "phase": "notify", "event": message.event,
                                "queued": self._queue.qsize()})

    def close(self, timeout: float | None = None) -> None:
        """Stop taking messages and wait for those queued, at most `timeout` seconds
        (default: one send timeout plus a second). What is left is logged and dropped."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            return
        deadline = time.monotonic() + (self.config.timeout + 1.0 if timeout is None else timeout)
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=max(0.0, deadline - time.monotonic()))
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            logger.warning("notifications still unsent at exit are dropped",
                           extra={"phase": "notify", "queued": self._queue.qsize()})

    # --- decisions -----------------------------------------------------------------
    def _decide(self, outcome: Any) -> Message | None:
        target = str(getattr(outcome, "target", "?"))
        result = getattr(outcome, "result", "")
        result = str(getattr(result, "value", result))  # a str, or an Enum of them
        when = _when(outcome).isoformat(timespec="seconds")
        risk = getattr(outcome, "risk", None)
        change = self._state.record(target, result, when, getattr(outcome, "phase", None),
                                    risk.key if risk is not None else None)
        before, after = change.before, change.after
        event = with_risk(with_offsite(decide(result, before, self.config.on), outcome), change.new_risk)
        if event is None:
            return None
        shown = {"failure": after, "recovery": before}.get(event)
        return render(event, outcome, shown, self.host)

    # --- delivery ------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            message = self._queue.get()
            if message is _STOP:
                return
            try:
                self._send(message)
            except Exception as exc:  # a custom sender or apprise bug: log, keep the thread
                logger.error("notification failed", extra={"target": message.target, "phase": "notify",
                                                           "event": message.event, "error": redact(repr(exc))})

    def _load_services(self, urls: tuple[str, ...]) -> list[tuple[Any, str]]:
        if not urls:
            return []
        shared = asset()
        services = []
        for number, url in enumerate(urls, 1):
            register_secrets(url)
            plugin = apprise.Apprise.instantiate(url, asset=shared)
            if plugin is None:
                logger.error("notification URL not usable; it is left out",
                             extra={"phase": "notify", "entry": number, "service": f"{scheme_of(url) or '?'}://"})
                continue
            register_secrets(url, plugin)
            # Bound every socket operation by the send timeout (SMTP uses the connect one for all).
            plugin.socket_connect_timeout = self.config.timeout
            plugin.socket_read_timeout = self.config.timeout
            one = apprise.Apprise(asset=shared)
            one.add(plugin)
            services.append((one, service_label(plugin, url)))
        return services

    def _send_apprise(self, message: Message) -> None:
        for service, label in self._services:
            fields = {"target": message.target, "phase": "notify", "event": message.event, "service": label}
            started = time.monotonic()
            try:
                result = service.notify(body=message.body, title=message.title,
                                        notify_type=apprise.NotifyType(message.notify_type),
                                        body_format=apprise.NotifyFormat.TEXT, timeout=self.config.timeout)
            except Exception as exc:
                logger.error("notification failed", extra={**fields, "error": redact(repr(exc))})
                continue
            seconds = round(time.monotonic() - started, 3)
            try:
                if result:
                    logger.info("notification sent", extra={**fields, "seconds": seconds})
                    continue
                status = getattr(getattr(result, "status", None), "name", "FAILURE")
                logger.error("notification failed", extra={**fields, "seconds": seconds, "status": status,
                                                           "error": _reason(result)})
            finally:
                with contextlib.suppress(Exception):
                    result.close()  # apprise >= 2 keeps the call's log entries until closed


def _reason(result: Any) -> str:
    """What apprise said went wrong (its warnings and errors for this call), redacted."""
    try:
        entries = [e for e in result.logs() if str(getattr(e, "level", "")).upper() in
                   ("WARNING", "ERROR", "CRITICAL", "DEPRECATION WARNING")]
        text = " | ".join(str(getattr(e, "message", e)) for e in entries)
    except Exception:  # results without logs (an older apprise): no detail
        text = ""
    return redact(text) or "the service did not accept the notification"
