"""Small JSON documents on the backup volume shared by every sidecar process: the
journal, the copy indexes, the image index, the metrics state and the notification
state all go through `JsonState`.

Three promises, each one a bug that was seen without it:
  - a write is atomic (temporary file, fsync, rename): readers see the old or the new
    document, never half of one;
  - a read-modify-write holds an exclusive `flock` on `NAME.lock` for its whole length,
    so the daemon and a `docker compose exec ... backup` never overwrite each other's
    entries (one lock file per document, kept beside it; the document itself is replaced
    on every write, so it cannot carry the lock);
  - a document that cannot be parsed is moved aside (`NAME.unreadable-STAMP`) with an
    error naming both paths, and work goes on from an empty document: it is never
    silently taken as empty and then overwritten.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from sidecar.core.fsutil import write_json_atomic

logger = logging.getLogger(__name__)

_THREAD_LOCKS: dict[Path, threading.RLock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def _thread_lock(path: Path) -> threading.RLock:
    with _THREAD_LOCKS_GUARD:
        return _THREAD_LOCKS.setdefault(path, threading.RLock())


class JsonState:
    """One JSON object on disk. `read()` for a snapshot, `update()` to change it."""

    def __init__(self, path: Path, what: str, mode: int = 0o600):
        self.path = Path(path)
        self.what = what  # e.g. "journal", named in log messages
        self.mode = mode
        self._local = _thread_lock(self.path.absolute())

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def read(self) -> dict[str, Any]:
        """The document as it is now ({} when there is none)."""
        with self._locked(fcntl.LOCK_SH):
            return self._load()

    @contextlib.contextmanager
    def update(self) -> Iterator[dict[str, Any]]:
        """Yield the document for changing in place; it is written back (atomically) when
        the block ends without an exception and the content changed. No other process or
        thread reads a half-changed document or writes in between."""
        with self._locked(fcntl.LOCK_EX):
            data = self._load()
            before = copy.deepcopy(data)
            yield data
            if data != before:
                write_json_atomic(self.path, data, self.mode)

    def _load(self) -> dict[str, Any]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, found {type(data).__name__}")
            return data
        except ValueError as exc:
            self._move_aside(str(exc))
            return {}

    def _move_aside(self, reason: str) -> None:
        aside = self.path.with_name(f"{self.path.name}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        try:
            os.replace(self.path, aside)
        except OSError as exc:
            logger.error(f"{self.what} unreadable and cannot be moved aside",
                         extra={"path": str(self.path), "error": f"{reason}; {exc}"})
            raise
        logger.error(f"{self.what} unreadable; moved aside, starting from an empty one",
                     extra={"path": str(self.path), "moved_to": str(aside), "error": reason})

    @contextlib.contextmanager
    def _locked(self, kind: int) -> Iterator[None]:
        with self._local:
            handle = None
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                handle = open(os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600), "r+")
                fcntl.flock(handle, kind)
            except OSError as exc:  # a read-only backup volume: readers still work
                if handle is not None:
                    handle.close()
                    handle = None
                if kind == fcntl.LOCK_EX:
                    raise
                logger.debug(f"{self.what} read without a lock", extra={"path": str(self.path), "error": str(exc)})
            try:
                yield
            finally:
                if handle is not None:
                    handle.close()
