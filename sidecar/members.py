"""Which members of an archive a user means: `--path` (one file or folder, relative to
the volume's root, as `list --files` shows it) and `--match` (a glob on the path or the
base name). Pure: names in, yes or no out; the extractor applies them (sidecar/extract.py)."""

from __future__ import annotations

import fnmatch
import posixpath
from typing import Callable

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
