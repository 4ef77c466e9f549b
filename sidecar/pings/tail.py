"""The last lines each target's backup run logged, for the failure ping.

A handler on the root logger keeps, per target, the newest `lines` records of its current
run as text lines (each cut to `width` characters), so memory stays bounded whatever a run
logs. A record belongs to a target by its `target` field, else by the thread that runs
that target's backup (engine and worker records carry no target). A run's lines are
dropped when it begins (`begin`) and when it ends (`take`). Secrets of registered URLs
(notification and ping URLs) are masked in every line. What the log holds depends on
LOG_LEVEL: a one-shot `backup` logs warnings and errors only unless LOG_LEVEL says more.
"""

from __future__ import annotations

import collections
import logging
import threading

from ..telemetry.logs import TextFormatter
from ..notify.redact import redact

DEFAULT_LINES = 50
DEFAULT_WIDTH = 500


class RunLogTail(logging.Handler):
    def __init__(self, lines: int = DEFAULT_LINES, width: int = DEFAULT_WIDTH):
        super().__init__(level=logging.NOTSET)
        self.setFormatter(TextFormatter())
        self.lines, self.width = lines, width
        self._runs: dict[str, collections.deque[str]] = {}
        self._threads: dict[int, str] = {}  # thread ident -> the target whose run it does
        self._guard = threading.Lock()

    def begin(self, target: str) -> None:
        """A run of `target` starts in this thread: its lines so far are dropped."""
        with self._guard:
            self._runs[target] = collections.deque(maxlen=self.lines)
            self._threads[threading.get_ident()] = target

    def take(self, target: str) -> list[str]:
        """The run's lines, oldest first; the run is over (its lines are dropped)."""
        with self._guard:
            lines = list(self._runs.pop(target, ()))
            for ident in [i for i, t in self._threads.items() if t == target]:
                del self._threads[ident]
        return lines

    def emit(self, record: logging.LogRecord) -> None:
        target = getattr(record, "target", None)
        with self._guard:
            if not isinstance(target, str):  # a record naming another target is not this run's
                target = self._threads.get(record.thread)
            lines = self._runs.get(target) if target is not None else None
        if lines is None:
            return
        try:
            line = redact(self.format(record))
        except Exception:  # a broken record is the logging module's business
            return
        line = " | ".join(part for part in line.splitlines() if part.strip())  # a traceback on one line
        with self._guard:
            lines.append(line if len(line) <= self.width else line[:self.width] + " [...]")
