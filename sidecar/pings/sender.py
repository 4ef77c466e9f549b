"""Sends heartbeat pings about backup runs: at the start of a run and at its end, to the
sidecar's BACKUP_PING_URL and the target's own label backup.ping.

Off the backup's critical path: `start` and `finish` only build the requests and queue
them; one background thread sends them, each bounded by BACKUP_PING_TIMEOUT. A ping that
cannot be queued or sent is logged (by kind and host, never by its URL) and counted
(`on_failure(target, kind)`: the metric backup_sidecar_ping_failures_total); nothing here
raises into the backup. Our own HTTP with urllib: one request per event, no session, no
retries (a lost ping is what the receiver's grace time is for).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import unquote, urlsplit, urlunsplit

from .. import __version__
from ..notify.redact import redact, register_secrets
from .tail import RunLogTail
from ..core.ping_urls import PingEvent, PingRequest, PingUrl, request_for

logger = logging.getLogger(__name__)

QUEUE_SIZE = 200  # requests waiting for the sender; more are dropped (logged and counted)
USER_AGENT = f"backup-sidecar/{__version__}"


@dataclass(frozen=True)
class _Job:
    target: str
    event: PingEvent
    ping: PingUrl
    request: PingRequest = field(repr=False)


_STOP = object()


def event_of(outcome: Any) -> PingEvent:
    """The finishing event of a BackupOutcome (its result a str or an Enum of them)."""
    result = str(getattr(outcome.result, "value", outcome.result))
    if result == "success":
        return PingEvent.OFFSITE if getattr(outcome, "offsite_error", None) else PingEvent.SUCCESS
    return {"failure": PingEvent.FAILURE, "skipped": PingEvent.SKIPPED}.get(result, PingEvent.ABORTED)


def summary(outcome: Any, event: PingEvent, lines: list[str]) -> str:
    """What a finishing ping says: the result in one line, then for a failure the run's last
    log lines."""
    seconds = float(getattr(outcome, "seconds", 0.0) or 0.0)
    if event is PingEvent.SUCCESS:
        archives = tuple(getattr(outcome, "archives", ()) or ())
        size = sum(int(getattr(a, "size", 0) or 0) for a in archives)
        return f"backup of {outcome.target} succeeded: {len(archives)} archives, {size} bytes, {seconds:.1f} s"
    if event is PingEvent.OFFSITE:
        return f"backup of {outcome.target} succeeded, but its off-site copy failed: {outcome.offsite_error}"
    verb = {PingEvent.FAILURE: "failed", PingEvent.SKIPPED: "was skipped"}.get(event, "was aborted")
    head = f"backup of {outcome.target} {verb} in phase {getattr(outcome, 'phase', None) or 'unknown'}: " \
           f"{getattr(outcome, 'error', None)}"
    if event is not PingEvent.FAILURE or not lines:
        return head
    return head + f"\n\nthe run's last {len(lines)} log lines:\n" + "\n".join(lines)


class Pinger:
    """`start(target_name, ping)` when a run begins (after it holds the target's lock),
    `finish(target_name, ping, outcome)` with its outcome; both return at once. `send`
    replaces the HTTP call (tests)."""

    def __init__(self, ping: PingUrl | None = None, timeout: float = 5.0,
                 on_failure: Callable[[str, str], None] | None = None, *,
                 send: Callable[[PingRequest, float], int] | None = None, tail: RunLogTail | None = None):
        self.ping = ping  # the sidecar's own (BACKUP_PING_URL)
        self.timeout = timeout
        self.on_failure = on_failure
        self._send = send or _http
        self._tail = tail
        self._runs: dict[str, str] = {}  # target -> this run's id
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._closed = False
        if ping is not None:
            register_secrets(ping.url)

    # --- called by the backup side ------------------------------------------------------
    def start(self, target: str, ping: PingUrl | None) -> None:
        urls = self._urls(ping)
        if not urls:
            return
        run_id = str(uuid.uuid4())
        with self._lock:
            self._runs[target] = run_id
        self._log_tail().begin(target)
        for one in urls:
            self._queue_request(target, one, PingEvent.START, run_id)

    def finish(self, target: str, ping: PingUrl | None, outcome: Any) -> None:
        urls = self._urls(ping)
        if not urls:
            return
        try:
            with self._lock:
                run_id = self._runs.pop(target, None) or str(uuid.uuid4())  # a run that never started
            lines = self._tail.take(target) if self._tail is not None else []
            event = event_of(outcome)
            text = summary(outcome, event, lines)
        except Exception:  # a bug here must not reach the backup
            logger.exception("ping not prepared", extra={"target": target, "phase": "ping"})
            return
        for one in urls:
            self._queue_request(target, one, event, run_id, text, float(getattr(outcome, "seconds", 0.0) or 0.0))

    def close(self, timeout: float | None = None) -> None:
        """Stop taking pings and wait for those queued, at most `timeout` seconds (default:
        two send timeouts). What is left is logged and dropped."""
        if self._closed:
            return
        self._closed = True
        if self._tail is not None:
            logging.getLogger().removeHandler(self._tail)
        if self._thread is None:
            return
        deadline = time.monotonic() + (2 * self.timeout if timeout is None else timeout)
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=max(0.0, deadline - time.monotonic()))
        self._thread.join(max(0.0, deadline - time.monotonic()))
        while True:  # what the sender did not reach in time is a failed ping too
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP:
                self._failed(job, "still unsent at exit (a slow receiver): dropped")

    def kinds(self, ping: PingUrl | None) -> tuple[str, ...]:
        """The kinds a target with label backup.ping `ping` is pinged through (metrics)."""
        return tuple(dict.fromkeys(str(p.kind) for p in self._urls(ping)))

    # --- inside ---------------------------------------------------------------------------
    def _urls(self, ping: PingUrl | None) -> tuple[PingUrl, ...]:
        if ping is not None:
            register_secrets(ping.url)
        return tuple(dict.fromkeys(p for p in (self.ping, ping) if p is not None))

    def _log_tail(self) -> RunLogTail:
        with self._lock:
            if self._tail is None:
                self._tail = RunLogTail()
                logging.getLogger().addHandler(self._tail)
            return self._tail

    def _queue_request(self, target: str, ping: PingUrl, event: PingEvent, run_id: str, text: str = "",
                       seconds: float | None = None) -> None:
        request = request_for(ping, event, run_id, text, seconds)
        if request is None:
            return
        job = _Job(target, event, ping, request)
        if self._closed:
            self._failed(job, "the sidecar is shutting down")
            return
        self._ensure_thread()
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self._failed(job, "too many pings waiting to be sent")

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ping", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            started = time.monotonic()
            fields = {"target": job.target, "phase": "ping", "event": str(job.event), "ping": job.ping.shown}
            try:
                status = self._send(job.request, self.timeout)
            except Exception as exc:  # refused, timed out, a bad answer: the backup goes on
                self._failed(job, redact(_reason(exc)), round(time.monotonic() - started, 3))
                continue
            logger.info("ping sent", extra={**fields, "status": status, "seconds": round(time.monotonic() - started, 3)})

    def _failed(self, job: _Job, reason: str, seconds: float | None = None) -> None:
        logger.warning("ping failed", extra={"target": job.target, "phase": "ping", "event": str(job.event),
                                             "ping": job.ping.shown, "error": reason,
                                             **({"seconds": seconds} if seconds is not None else {})})
        if self.on_failure is not None:
            try:
                self.on_failure(job.target, str(job.ping.kind))
            except Exception:  # counting must not end the sender
                logger.exception("ping failure not counted", extra={"target": job.target, "phase": "ping"})


def _reason(exc: BaseException) -> str:
    """Why a request failed, without its URL (urllib's errors do not quote it; say so here)."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"the receiver answered HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return f"no answer: {exc.reason}"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}"


def _http(request: PingRequest, timeout: float) -> int:
    """Sends `request`; returns the HTTP status (2xx/3xx) or raises. `timeout` bounds the
    connect and each read; the whole request is bounded by the sender's queue anyway."""
    url, auth = _without_userinfo(request.url)
    headers = {"User-Agent": USER_AGENT, **({"Authorization": auth} if auth else {}),
               **({"Content-Type": "text/plain; charset=utf-8"} if request.body is not None else {})}
    req = urllib.request.Request(url, data=request.body, method=request.method, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as response:  # noqa: S310 - http(s) only (urls.py)
        response.read(65536)
        return response.status


def _without_userinfo(url: str) -> tuple[str, str | None]:
    """`url` without its user:password@ (urllib does not take one) and the Basic
    Authorization header it stands for (None: the URL has none)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    netloc = parts.netloc.rpartition("@")[2]
    credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode()
    return urlunsplit(parts._replace(netloc=netloc)), "Basic " + base64.b64encode(credentials).decode()
