"""Keeps the secrets of notification URLs out of every log record.

Notification URLs carry passwords and tokens, and apprise and urllib3 put URLs, paths and
query strings into their own log records. `register_secrets` remembers the secret-looking
parts of a configured URL; a filter on those loggers replaces each with "****" (and drops
apprise's TRACE dumps, which unpack whole URLs). `redact` does the same for our own texts
(an error from apprise, a service label).

Why our own splitting and not only apprise's parser: masking must err on the side of
hiding. Any path segment or query value that could be a token is masked, whatever the
service, plus whatever apprise itself hides in its privacy form of the URL.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any
from urllib.parse import parse_qsl, unquote

from ..core.notify_urls import scheme_of

MASK = "****"
_URL_PARTS = re.compile(r"^(?P<netloc>[^/?#]*)(?P<path>[^?#]*)(?:\?(?P<query>[^#]*))?(?:#(?P<fragment>.*))?$",
                        re.S)
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_EMAIL = re.compile(r"^[^@\s/]+@[^@\s/]+\.[^@\s/]+$")
_SECRET_KEY = re.compile(r"pass|secret|token|key|auth|sig|cred|pwd", re.I)
_REDACTED_LOGGERS = ("apprise", "urllib3.connectionpool")

_secrets_lock = threading.Lock()
_secrets: tuple[str, ...] = ()  # longest first, so a secret's parts never mask it half
_filter_installed = False


def register_secrets(url: str, plugin: Any = None) -> None:
    """Remember the secret-looking parts of `url` so no log record shows them: the whole
    URL, its user info and password, every path segment and query value that could be a
    token (6 characters or more, not an address), query values named like secrets, and
    whatever apprise itself masks in its privacy form of the URL (`plugin`, when given).
    Parts shorter than 3 characters are not masked: they would garble every line."""
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
            text = text.replace(secret, MASK)
    return text


def host_part(url: str) -> str:
    """The host (and port) of SCHEME://[userinfo@]HOST[:PORT]/..., without user info."""
    match = _URL_PARTS.match(url.split("://", 1)[1]) if scheme_of(url) else None
    return match["netloc"].rpartition("@")[2] if match else ""


def _secret_parts(url: str) -> set[str]:
    url = url.strip()
    scheme = scheme_of(url)
    rest = url.split("://", 1)[1] if scheme else url
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
        if _SECRET_KEY.search(key):
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
