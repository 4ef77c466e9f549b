"""Ping URLs as values, and the HTTP request each event of a backup run makes for each kind.

Pure: no sending, no network. A ping URL names its kind by a prefix on its scheme, or by
where it points:

  hc+https://hc-ping.com/UUID          healthchecks.io's protocol (also self-hosted ones);
                                       `https://hc-ping.com/...` is read as this kind too
  kuma+https://kuma.example/api/push/T Uptime Kuma's push monitor; a URL whose path has
                                       `/api/push/` is read as this kind too
  https://example.org/anything          plain: GET at start and success, POST at a failure
  plain+https://...                    plain, whatever the URL looks like

A ping URL holds a token (a check's uuid, a push token): an error never quotes it, and
`PingUrl.shown` names only its kind, scheme and host.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

HEALTHCHECKS_HOSTS = ("hc-ping.com",)
KUMA_PATH = "/api/push/"
# What a failure ping carries of the run's log: healthchecks.io keeps 100 kB of a request
# body (10 kB shown); Kuma's message is a query parameter, so a short one.
MAX_BODY_BYTES = 10_000
MAX_KUMA_MESSAGE = 250
# `backup --offsite-required` exits with this when a backup succeeded but its off-site copy
# failed; a healthchecks.io check gets the same exit status (cli.EXIT_OFFSITE_FAILED).
OFFSITE_EXIT_STATUS = 75


class PingKind(enum.Enum):
    HEALTHCHECKS = "hc"
    KUMA = "kuma"
    PLAIN = "plain"

    def __str__(self) -> str:
        return self.value


class PingEvent(enum.Enum):
    """What a ping reports: the start of a run, or how it ended."""

    START = "start"
    SUCCESS = "success"
    OFFSITE = "offsite"  # the backup succeeded, its off-site copy failed
    FAILURE = "failure"
    SKIPPED = "skipped"
    ABORTED = "aborted"

    def __str__(self) -> str:
        return self.value


ACCEPTED = ("an http(s) URL, optionally with its kind as a prefix: `hc+https://...` (healthchecks.io), "
            "`kuma+https://...` (Uptime Kuma push), `plain+https://...`")


@dataclass(frozen=True)
class PingUrl:
    kind: PingKind
    url: str = field(repr=False)  # http(s)://..., the prefix removed; it holds the check's token

    @property
    def shown(self) -> str:
        """kind:scheme://host[:port], for logs and messages: no path, no query, no user info."""
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        return f"{self.kind}:{parts.scheme}://{parts.hostname or '?'}{port}"

    def __str__(self) -> str:
        return self.shown


def parse_ping_url(raw: str) -> PingUrl:
    """A ping URL as written in BACKUP_PING_URL or the label backup.ping. Raises ValueError
    saying what is accepted, never quoting `raw`."""
    text = raw.strip()
    scheme, sep, rest = text.partition("://")
    kind_name, plus, transport = scheme.lower().rpartition("+")
    if not sep or transport not in ("http", "https") or (plus and kind_name not in {k.value for k in PingKind}):
        raise ValueError("accepted: " + ACCEPTED)
    url = f"{transport}://{rest}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is no number
    except ValueError:
        raise ValueError("not a valid URL; accepted: " + ACCEPTED) from None
    if not parts.hostname or any(c.isspace() for c in url):
        raise ValueError("no host, or blanks inside; accepted: " + ACCEPTED)
    kind = PingKind(kind_name) if plus else _detected(parts.hostname, parts.path)
    return PingUrl(kind, url)


def _detected(host: str, path: str) -> PingKind:
    if host.lower() in HEALTHCHECKS_HOSTS:
        return PingKind.HEALTHCHECKS
    if KUMA_PATH in path:
        return PingKind.KUMA
    return PingKind.PLAIN


@dataclass(frozen=True)
class PingRequest:
    method: str  # GET or POST
    url: str = field(repr=False)
    body: bytes | None = None


def request_for(ping: PingUrl, event: PingEvent, run_id: str, text: str = "",
                seconds: float | None = None) -> PingRequest | None:
    """The request `event` makes on `ping` (None: this kind has nothing to say about it).
    `run_id`: one uuid per run, the same at its start and end (healthchecks.io's `rid`:
    it measures the run, and tells concurrent runs apart); `text`: a summary, or the error
    and the log's last lines; `seconds`: how long the run took."""
    if ping.kind is PingKind.HEALTHCHECKS:
        suffix = {PingEvent.START: "/start", PingEvent.SUCCESS: "", PingEvent.FAILURE: "/fail",
                  PingEvent.OFFSITE: f"/{OFFSITE_EXIT_STATUS}", PingEvent.SKIPPED: "/log",
                  PingEvent.ABORTED: "/log"}[event]
        url = _with(ping.url, suffix, {"rid": run_id})
        return PingRequest("POST", url, cut_body(text)) if text else PingRequest("GET", url)
    if ping.kind is PingKind.KUMA:
        status = {PingEvent.SUCCESS: "up", PingEvent.FAILURE: "down", PingEvent.OFFSITE: "down"}.get(event)
        if status is None:  # a push monitor knows up and down only: a start or a skip says neither
            return None
        ping_ms = "" if seconds is None else str(round(seconds * 1000))
        first = text.strip().splitlines()[0] if text.strip() else ""  # the result's line, not the log
        message = first[:MAX_KUMA_MESSAGE] or ("OK" if status == "up" else "failed")
        return PingRequest("GET", _with(ping.url, "", {"status": status, "msg": message, "ping": ping_ms}))
    if event in (PingEvent.START, PingEvent.SUCCESS):
        return PingRequest("GET", ping.url)
    if event in (PingEvent.FAILURE, PingEvent.OFFSITE):
        return PingRequest("POST", ping.url, cut_body(text or str(event)))
    return None


def cut_body(text: str) -> bytes:
    """`text` as UTF-8, at most MAX_BODY_BYTES: the end is kept (the last log lines matter)."""
    data = text.encode("utf-8", "replace")
    if len(data) <= MAX_BODY_BYTES:
        return data
    marker = b"[... cut ...]\n"
    return marker + data[len(data) - MAX_BODY_BYTES + len(marker):]


def _with(url: str, suffix: str, params: dict[str, str]) -> str:
    """`url` with `suffix` after its path and `params` set in its query (others kept)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query += list(params.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + suffix if suffix else parts.path,
                       urlencode(query), parts.fragment))
