"""Notifications about backup outcomes through apprise (mailto://, Slack, Discord, Telegram,
ntfy, Gotify, json:// webhooks and the rest of apprise's URL schemes).

Owns: parsing NOTIFY_URLS, deciding which outcome is news (a failure, the first success
after failures, and with NOTIFY_ON=always every success and skip), the text of each
message, the small state file saying which targets are failing (so a recovery message is
sent after a restart too), and delivering without ever holding up a backup.

Delivery runs in one background thread fed by a bounded queue: `Notifier.outcome()` only
decides, records the state and enqueues. Each send is bounded by `NotifyConfig.timeout`
(apprise's call timeout and the socket timeouts of the service). A message that cannot be
queued or sent is logged and dropped; nothing here raises into the backup.

Secrets: notification URLs carry passwords and tokens. Our log lines name a service only
as scheme://host with apprise's own masking; and because apprise and urllib3 put URLs,
paths and query strings into their own log records, a filter on those loggers replaces
every secret-looking part of a configured URL with "****" (and drops apprise's TRACE
dumps, which unpack whole URLs).
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import logging
import os
import queue
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl, unquote

from .fsutil import write_json_atomic

logger = logging.getLogger(__name__)

QUEUE_SIZE = 100  # messages waiting for the sender; more are dropped (and logged)
MAX_ERROR_CHARS = 1000  # an error text longer than this is cut in a message
_STATE_VERSION = 1
_MASK = "****"
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]{0,31})://")
# Splits a list of URLs at commas, semicolons or white space followed by the next
# SCHEME://, so a comma inside one URL (mailto://...?to=a@x.org,b@x.org) is kept.
_URL_BOUNDARY = re.compile(r"[\s,;]+(?=[A-Za-z][A-Za-z0-9+.-]{0,31}://)")
_URL_PARTS = re.compile(r"^(?P<netloc>[^/?#]*)(?P<path>[^?#]*)(?:\?(?P<query>[^#]*))?(?:#(?P<fragment>.*))?$",
                        re.S)
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_EMAIL = re.compile(r"^[^@\s/]+@[^@\s/]+\.[^@\s/]+$")


class NotifyOn(enum.Enum):
    FAILURE = "failure"  # failures, and the recovery after them
    ALWAYS = "always"  # also every success and every skipped run

    def __str__(self) -> str:
        return self.value


def parse_notify_on(text: str) -> NotifyOn:
    try:
        return NotifyOn(text.strip().lower())
    except ValueError:
        raise ValueError("accepted: " + ", ".join(m.value for m in NotifyOn)) from None


@dataclass(frozen=True)
class NotifyConfig:
    urls: tuple[str, ...] = field(repr=False)  # apprise URLs; they hold credentials
    on: NotifyOn = NotifyOn.FAILURE
    timeout: float = 10.0  # seconds one send may take

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError("timeout must be a positive number of seconds")


@dataclass(frozen=True)
class Message:
    event: str  # "failure", "recovery", "success" or "skipped"
    target: str
    phase: str | None
    title: str
    body: str
    notify_type: str  # an apprise NotifyType value: "failure", "success", "warning"


# --- URLs and secrets ------------------------------------------------------------

def parse_notify_urls(text: str) -> tuple[str, ...]:
    """The apprise URLs in `text` (separated by commas, semicolons, white space or new
    lines). Raises ValueError naming every bad entry by its position and scheme only: a
    URL holds tokens and passwords, so it is never quoted."""
    entries = [e.strip().strip(",;").strip() for e in _URL_BOUNDARY.split(text or "")]
    entries = [e for e in entries if e]
    if not entries:
        return ()
    for entry in entries:  # before apprise sees (and may log) them
        register_secrets(entry)
    apprise = _apprise()
    problems = []
    for number, entry in enumerate(entries, 1):
        scheme = _scheme(entry)
        if scheme is None:
            problems.append(f"entry {number} is not a URL: expected SCHEME://..., one apprise notification URL "
                            f"per entry")
            continue
        if scheme.lower() not in apprise.NotificationManager():
            problems.append(f"entry {number} ({scheme}://...) has a scheme apprise does not know: expected an "
                            f"apprise notification URL such as mailto://, json://, slack://, discord://, tgram://, "
                            f"ntfy://, gotify:// (https://github.com/caronc/apprise/wiki)")
            continue
        plugin = apprise.Apprise.instantiate(entry, asset=_asset(apprise))
        if plugin is None:
            problems.append(f"entry {number} ({scheme}://...) is not a valid {scheme}:// URL for apprise (or that "
                            f"service is not available here): see https://github.com/caronc/apprise/wiki for "
                            f"its syntax")
            continue
        register_secrets(entry, plugin)
    if problems:
        raise ValueError("; ".join(problems))
    return tuple(entries)


def _scheme(entry: str) -> str | None:
    match = _SCHEME_RE.match(entry)
    return match.group(1) if match else None


_secrets_lock = threading.Lock()
_secrets: tuple[str, ...] = ()  # longest first, so a secret's parts never mask it half
_filter_installed = False
_REDACTED_LOGGERS = ("apprise", "urllib3.connectionpool")


def register_secrets(url: str, plugin: Any = None) -> None:
    """Remember the secret-looking parts of `url` so no log record shows them: the whole
    URL, its user info and password, every path segment and query value that could be a
    token (6 characters or more, not an address), query values named like secrets, and
    whatever apprise itself masks in its privacy form of the URL. Parts shorter than 3
    characters are not masked: they would garble every line."""
    parts = _secret_parts(url)
    if plugin is not None:
        parts |= _masked_by_apprise(plugin)
    parts |= {unquote(p) for p in parts}
    global _secrets
    with _secrets_lock:
        merged = set(_secrets) | {p for p in parts if len(p) >= 3}
        _secrets = tuple(sorted(merged, key=len, reverse=True))
    _install_filter()


def redact(text: str) -> str:
    """`text` with every registered secret replaced by ****."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, _MASK)
    return text


def _secret_parts(url: str) -> set[str]:
    url = url.strip()
    scheme = _scheme(url)
    rest = url[len(scheme) + 3:] if scheme else url
    if not rest:
        return set()  # a bare "json://" holds nothing secret (and must not mask every json:// later)
    parts = {url, rest}
    match = _URL_PARTS.match(rest)
    if not match:
        return parts
    userinfo, at, hostport = match["netloc"].rpartition("@")
    if at:
        parts.add(userinfo)
        password = userinfo.partition(":")[2]
        if password:
            parts.add(password)
        # A user name alone is masked only where apprise masks it (a user key, say).
    if ":" in hostport and not hostport.rpartition(":")[2].isdigit():
        parts.add(hostport)  # tgram://BOTID:TOKEN/...: the token sits where a port would
        parts.add(hostport.rpartition(":")[2])
    candidates = [s for s in match["path"].split("/") if s]
    for key, value in parse_qsl(match["query"] or "", keep_blank_values=True):
        candidates.append(value)
        if re.search(r"pass|secret|token|key|auth|sig|cred|pwd", key, re.I):
            parts.add(value)  # named like a secret: masked even when short
    if match["fragment"]:
        candidates.append(match["fragment"])
    for value in candidates:
        if len(value) >= 6 and not _IPV4.match(value) and not _EMAIL.match(unquote(value)):
            parts.add(value)
    return {p for p in parts if p}


def _masked_by_apprise(plugin: Any) -> set[str]:
    """Pieces of the full URL that apprise hides in its privacy form: by apprise's own
    definition, the service's private values (tokens, keys, passwords)."""
    try:
        full, private = plugin.url(privacy=False), plugin.url(privacy=True)
    except Exception:  # a plugin that cannot render itself: rely on the URL heuristics
        return set()
    delimiters = r"[/:@?&=,#]+"
    shown = set(re.split(delimiters, private))
    return {p for p in re.split(delimiters, full) if p and p not in shown}


class _RedactFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] == "apprise" and record.levelno < logging.DEBUG:
            return False  # apprise's TRACE level unpacks whole URLs field by field
        if not _secrets:
            return True
        try:
            text = record.getMessage()
        except Exception:  # a broken record is the logging module's business
            return True
        clean = redact(text)
        if clean != text:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def _install_filter() -> None:
    global _filter_installed
    with _secrets_lock:
        if _filter_installed:
            return
        _filter_installed = True
    for name in _REDACTED_LOGGERS:
        logging.getLogger(name).addFilter(_RedactFilter())


def _apprise():
    try:
        import apprise
    except ImportError:  # pragma: no cover - apprise is a dependency
        raise ValueError("notifications need the apprise package, which is not installed") from None
    return apprise


def _asset(apprise):
    return apprise.AppriseAsset(app_id="backup-sidecar", app_desc="backup-sidecar",
                                storage_mode="memory", secure_logging=True)


def service_label(plugin: Any, url: str) -> str:
    """scheme://host of a service for log lines, with apprise's masking (a token that
    sits in the host part, as in pbul://TOKEN, stays masked) and no user info."""
    try:
        shown = plugin.url(privacy=True)
    except Exception:
        shown = ""
    scheme = _scheme(shown) or _scheme(url) or "?"
    match = _URL_PARTS.match(shown[len(scheme) + 3:]) if shown.startswith(f"{scheme}://") else None
    host = match["netloc"].rpartition("@")[2] if match else ""
    return redact(f"{scheme}://{host}")


# --- what is news, and its text ------------------------------------------------------

@dataclass
class Failing:
    since: str  # ISO time of the first failure in a row
    runs: int  # failed runs in a row
    phase: str | None


def decide(result: str, failing: Failing | None, on: NotifyOn) -> str | None:
    """The event to announce for an outcome, or None."""
    if result == "failure":
        return "failure"  # every failed run: each is news, and a repeat shows it is still broken
    if result == "success":
        if failing is not None:
            return "recovery"
        return "success" if on is NotifyOn.ALWAYS else None
    return "skipped" if on is NotifyOn.ALWAYS else None


_TITLES = {"failure": "failed", "recovery": "recovered", "success": "succeeded", "skipped": "skipped"}
_TYPES = {"failure": "failure", "recovery": "success", "success": "success", "skipped": "warning"}


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
    if event in ("failure", "skipped"):
        lines += [("phase", phase or "unknown"), ("error", _cut(getattr(outcome, "error", None)))]
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
    return Message(event, target, phase, f"backup-sidecar: backup of {target} {_TITLES[event]}", body,
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


# --- state -----------------------------------------------------------------------

class _State:
    """Which targets are failing, in memory and (with a path) in a small JSON file, re-read
    under a lock on each change so a one-shot CLI backup and the daemon agree."""

    def __init__(self, path: Path | None):
        self.path = path
        self.failing: dict[str, Failing] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def update(self):
        with self._lock, self._file_lock():
            self._load()
            before = dict(self.failing)
            yield self.failing
            if self.failing != before:
                self._save()

    @contextlib.contextmanager
    def _file_lock(self):
        if self.path is None:
            yield
            return
        handle = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            handle = open(os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600), "r+")
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as exc:  # a read-only backup volume: work from memory
            logger.warning("notification state cannot be locked", extra={"path": str(self.path),
                                                                       "error": str(exc), "phase": "notify"})
        try:
            yield
        finally:
            if handle is not None:
                handle.close()

    @property
    def _lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            data = json.loads(self.path.read_text())
            self.failing = {str(name): Failing(str(v["since"]), int(v["runs"]), v.get("phase"))
                            for name, v in data["failing"].items()}
        except FileNotFoundError:
            pass  # nothing failing yet (or state kept in memory only)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning("notification state unreadable; keeping what is in memory",
                           extra={"path": str(self.path), "error": str(exc), "phase": "notify"})

    def _save(self) -> None:
        if self.path is None:
            return
        data = {"version": _STATE_VERSION,
                "failing": {name: {"since": f.since, "runs": f.runs, "phase": f.phase}
                            for name, f in sorted(self.failing.items())}}
        try:
            write_json_atomic(self.path, data)
        except OSError as exc:
            logger.error("notification state not saved", extra={"path": str(self.path), "error": str(exc),
                                                                "phase": "notify"})


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
        self._state = _State(state_path)
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
        result = str(getattr(outcome, "result", ""))
        with self._state.update() as failing:
            before = failing.get(target)
            event = decide(result, before, self.config.on)
            shown = before
            if result == "failure":
                when = _when(outcome).isoformat(timespec="seconds")
                shown = Failing(before.since if before else when, (before.runs if before else 0) + 1,
                                getattr(outcome, "phase", None))
                failing[target] = shown
            elif result == "success":
                failing.pop(target, None)
        if event is None:
            return None
        return render(event, outcome, shown if event in ("failure", "recovery") else None, self.host)

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
        apprise = _apprise()
        asset = _asset(apprise)
        services = []
        for number, url in enumerate(urls, 1):
            register_secrets(url)
            plugin = apprise.Apprise.instantiate(url, asset=asset)
            if plugin is None:
                logger.error("notification URL not usable; it is left out",
                             extra={"phase": "notify", "entry": number, "service": f"{_scheme(url) or '?'}://"})
                continue
            register_secrets(url, plugin)
            # Bound every socket operation by the send timeout (SMTP uses the connect one for all).
            plugin.socket_connect_timeout = self.config.timeout
            plugin.socket_read_timeout = self.config.timeout
            one = apprise.Apprise(asset=asset)
            one.add(plugin)
            services.append((one, service_label(plugin, url)))
        return services

    def _send_apprise(self, message: Message) -> None:
        apprise = _apprise()
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
