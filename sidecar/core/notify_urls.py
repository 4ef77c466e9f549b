"""Notification settings as values: when to notify (NotifyOn), the checked apprise URLs
(NotifyConfig), and the parsers settings use for NOTIFY_ON and NOTIFY_URLS.

Pure: no sending, no state, no sidecar adapter. URLs are split and read with apprise's own
parser (`apprise.utils.parse`) and checked by instantiating each with apprise, so what is
accepted here is exactly what apprise can send to.

A URL holds tokens and passwords: an error names an entry by its position and scheme,
never by its text, and apprise's logger is muted for this thread while it looks at them
(its plugins log rejected tokens in their warnings; no redaction is installed yet when
settings are read).

apprise itself (about 0.3 s to import) is imported on first use, by name (`_apprise`): a
sidecar with no NOTIFY_URLS, and every one-shot command that sends nothing, never loads it.
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import logging
import threading
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import apprise

APPRISE_WIKI = "https://github.com/caronc/apprise/wiki"
APPRISE = "apprise"  # the one place naming apprise's modules: imported by _apprise on first use
APPRISE_PARSE = "apprise.utils.parse"


def _apprise(module: str = APPRISE) -> ModuleType:
    """apprise (or its URL parser), imported now if nothing imported it yet."""
    return importlib.import_module(module)


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


def scheme_of(url: str) -> str | None:
    """The scheme of an apprise URL as apprise reads it, or None when `url` is not
    SCHEME://... ."""
    parse = _apprise(APPRISE_PARSE)
    parsed = parse.parse_url(url, default_schema="", verify_host=False)
    if parsed and parsed["schema"]:
        return parsed["schema"]
    match = parse.GET_SCHEMA_RE.match(url)  # apprise's fallback for a URL it cannot parse further
    return match["schema"].lower() if match else None


def asset() -> apprise.AppriseAsset:
    """Apprise's settings for the sidecar: in-memory storage, its own masking of URLs."""
    return _apprise().AppriseAsset(app_id="backup-sidecar", app_desc="backup-sidecar",
                                   storage_mode="memory", secure_logging=True)


def parse_notify_urls(text: str) -> tuple[str, ...]:
    """The apprise URLs in `text` (separated by commas, semicolons, white space or new
    lines; a comma inside one URL, as in mailto://...?to=a@x.org,b@x.org, is kept).
    Raises ValueError naming every bad entry by its position and scheme only."""
    entries = tuple(e.strip().strip(",;").strip() for e in _apprise(APPRISE_PARSE).parse_urls(text or ""))
    entries = tuple(e for e in entries if e)
    with apprise_muted():
        problems = [p for number, entry in enumerate(entries, 1) if (p := _problem(number, entry))]
    if problems:
        raise ValueError("; ".join(problems))
    return entries


def _problem(number: int, entry: str) -> str | None:
    scheme = scheme_of(entry)
    if scheme is None:
        return f"entry {number} is not a URL: expected SCHEME://..., one apprise notification URL per entry"
    shown = f"entry {number} ({scheme}://...)"
    apprise = _apprise()
    if scheme.lower() not in apprise.NotificationManager():
        return (f"{shown} has a scheme apprise does not know: expected an apprise notification URL such as "
                f"mailto://, json://, slack://, discord://, tgram://, ntfy://, gotify:// ({APPRISE_WIKI})")
    if apprise.Apprise.instantiate(entry, asset=asset()) is None:
        return (f"{shown} is not a valid {scheme}:// URL for apprise (or that service is not available here): "
                f"see {APPRISE_WIKI} for its syntax")
    return None


class _FromThread(logging.Filter):
    """Drops the records of one thread; other threads (a notifier sending) log as usual."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread


@contextlib.contextmanager
def apprise_muted() -> Iterator[None]:
    """Nothing apprise logs from this thread inside the block is emitted (apprise logs
    everything through its one "apprise" logger)."""
    mute = _FromThread()
    logger = logging.getLogger("apprise")
    logger.addFilter(mute)
    try:
        yield
    finally:
        logger.removeFilter(mute)
