"""Text -> typed value conversions shared by the settings table and the labels table.

A `Parser` is a conversion plus a short text of what it accepts: the conversion's
ValueError says what is accepted in error messages, `accepted` says it in the reference's
tables. Pure: no I/O.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar
from urllib.parse import unquote

from .retention import MAX_KEEP, parse_keep
from .schedule import ALIASES, parse_schedule

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)

TRUE_VALUES = ("true", "1", "yes")
FALSE_VALUES = ("false", "0", "no")
ACCEPTED_TRUTH = "/".join(TRUE_VALUES) + " or " + "/".join(FALSE_VALUES)


@dataclass(frozen=True)
class Parser(Generic[T]):
    """Converts one value as written; raises ValueError whose message says what is accepted."""

    convert: Callable[[str], T]
    accepted: str  # Markdown, for the reference tables (docs/reference/)

    def __call__(self, raw: str) -> T:
        return self.convert(raw)


def truth(raw: str) -> bool | None:
    """True/False for a true/false spelling (case-insensitive, blanks around ignored), else None."""
    value = raw.strip().lower()
    if value in TRUE_VALUES:
        return True
    if value in FALSE_VALUES:
        return False
    return None


def _boolean(raw: str) -> bool:
    value = truth(raw)
    if value is None:
        raise ValueError(f"accepted: {ACCEPTED_TRUTH}")
    return value


BOOLEAN: Parser[bool] = Parser(_boolean, " or ".join("/".join(f"`{v}`" for v in values)
                                                   for values in (TRUE_VALUES, FALSE_VALUES)))


def whole(low: int, high: int, expected: str = "expected a whole number", digits: int = 9) -> Parser[int]:
    """A whole number from low to high, at most `digits` digits (no sign, no fraction)."""
    def convert(raw: str) -> int:
        value = raw.strip()
        if re.fullmatch(f"[0-9]{{1,{digits}}}", value) and low <= int(value) <= high:
            return int(value)
        raise ValueError(f"{expected} from {low} to {high}")
    return Parser(convert, f"whole number, {low} to {high}")


def seconds(low: float, high: float) -> Parser[float]:
    """A number of seconds from low to high (fractions allowed; nan and inf are not)."""
    def convert(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if low <= value <= high:
            return value
        raise ValueError(f"expected a number of seconds from {low:g} to {high:g}")
    return Parser(convert, f"seconds, {low:g} to {high:g}")


def one_of(values: tuple[str, ...], fold: Callable[[str], str] = str.lower, note: str = "") -> Parser[str]:
    """One of `values`, compared after `fold` (case-insensitive); returns the folded value."""
    def convert(raw: str) -> str:
        value = fold(raw.strip())
        if value in values:
            return value
        raise ValueError("accepted: " + ", ".join(values) + note)
    return Parser(convert, ", ".join(f"`{v}`" for v in values))


def member_of(kind: type[E]) -> Parser[E]:
    """The member of an Enum whose value is written (case-insensitive)."""
    def convert(raw: str) -> E:
        try:
            return kind(raw.strip().lower())
        except ValueError:
            raise ValueError("accepted: " + ", ".join(m.value for m in kind)) from None
    return Parser(convert, ", ".join(f"`{m.value}`" for m in kind))


def comma_list(raw: str) -> tuple[str, ...]:
    """The non-empty, stripped entries of a comma list."""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


SCHEDULE = Parser(parse_schedule, "5-field cron (`0 3 * * *`), the same with a 6th *seconds* field last "
                  "(`* * * * * */30`, croniter's convention), or " + ", ".join(f"`{a}`" for a in ALIASES))
KEEP = Parser(parse_keep, f"comma list of `hourly=N`, `daily=N`, `weekly=N`, `monthly=N` (N from 0 to {MAX_KEEP})")


def _userinfo(url: str) -> tuple[str, str] | None:
    """(scheme://, user info) of SCHEME://USERINFO@HOST..., None without user info."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    netloc_end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    userinfo, at, _host = rest[:netloc_end].rpartition("@")
    return (scheme + sep, userinfo) if at else None


def without_userinfo(url: str) -> str:
    """`url` with any user:password@ part masked (`http://****@host:9000`): for a URL that
    may carry credentials (S3_ENDPOINT_URL) wherever it is shown."""
    found = _userinfo(url)
    if found is None:
        return url
    head, userinfo = found
    return head + "****@" + url[len(head) + len(userinfo) + 1:]


def userinfo_parts(url: str) -> tuple[str, ...]:
    """The secret pieces of a URL's user:password@ part, as written and decoded, longest first."""
    found = _userinfo(url)
    if found is None:
        return ()
    userinfo = found[1]
    password = userinfo.partition(":")[2]
    parts = {userinfo, unquote(userinfo), password, unquote(password)}
    return tuple(sorted((p for p in parts if p), key=len, reverse=True))
