"""Which members of an archive a user means: `--path` (one file or folder, relative to
the volume's root, as `list --files` shows it), `--match` (a glob on the path or the
base name) and a dump's parts. Pure: names in, yes or no out; the extractor applies them
(sidecar/tarball/extract.py), in the sidecar or in an extract worker (sidecar/worker/extract.py)."""

from __future__ import annotations

import fnmatch
import posixpath
import re
from typing import Callable

PART = re.compile(r"^(?P<file>[^/]+)\.(?P<n>\d{6})$")  # a dump part's member name: FILE.NNNNNN

PATH_ACCEPTED = ("a path relative to the volume's root as `list --files` shows it (`conf/app.ini`, `/conf`); "
                 "no `..`")


def member_path(text: str) -> str:
    """`text` as a member name: leading `/` and `./` and a trailing `/` dropped. Raises
    ValueError for an empty path (the whole volume: that is the plain restore) or `..`."""
    cleaned = text.strip()
    while cleaned.startswith(("/", "./")):
        cleaned = cleaned[1:] if cleaned.startswith("/") else cleaned[2:]
    cleaned = cleaned.rstrip("/")
    parts = cleaned.split("/")
    if not cleaned or cleaned == "." or ".." in parts or "" in parts or "\0" in cleaned:
        raise ValueError(f"{text[:300]!r} is no path inside an archive; accepted: {PATH_ACCEPTED}")
    return posixpath.normpath(cleaned)


def under(path: str) -> Callable[[str], bool]:
    """Whether a member's name is `path` itself or inside it (`path` from `member_path`)."""
    return lambda name: name == path or name.startswith(path + "/")


def matching(pattern: str) -> Callable[[str], bool]:
    """Whether a member's name, or its base name, matches the glob `pattern`."""
    return lambda name: fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name.rpartition("/")[2], pattern)


def part_of(name: str) -> tuple[str, int] | None:
    """(file, number) of a dump part's member name (`pg_dumpall.sql.000003`), else None."""
    match = PART.match(name.removeprefix("./"))
    return (match["file"], int(match["n"])) if match else None


def chosen(path: str | None, dump: bool = False, root: bool = True) -> Callable[[str], bool]:
    """What a restore writes: the members under `path` (from `member_path`; None: all), the
    root entry ("") only when `root`; of a dump archive (`dump`), its parts only (those of
    the file `path`, or the member `path` itself)."""
    inside = under(path) if path else None
    if dump:
        def part(name: str) -> bool:
            found = part_of(name)
            return found is not None and (path is None or found[0] == path or bool(inside and inside(name)))
        return part
    return lambda name: (root or name != "") and (inside is None or inside(name))
