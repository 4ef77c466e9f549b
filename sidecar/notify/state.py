"""Which targets are failing, so a recovery is announced once, also after a restart and
also when the daemon and a one-shot CLI backup take turns (`.sidecar/notify.json`, through
JsonState).

Without a path (tests, no backup volume) or when the file cannot be locked or written (a
read-only backup volume), the state is kept in memory and decisions go on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..state import JsonState

logger = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass(frozen=True)
class Failing:
    since: str  # ISO time of the first failure in a row
    runs: int  # failed runs in a row
    phase: str | None


def next_failing(before: Failing | None, result: str, when: str, phase: str | None) -> Failing | None:
    """What is failing after an outcome: a failure starts or extends the row, a success
    ends it, a skip changes nothing."""
    if result == "failure":
        return Failing(before.since if before else when, (before.runs if before else 0) + 1, phase)
    if result == "success":
        return None
    return before


class FailingTargets:
    def __init__(self, path: Path | None):
        self._file = JsonState(path, "notification state") if path is not None else None
        self._memory: dict[str, Failing] = {}

    def record(self, target: str, result: str, when: str, phase: str | None) -> tuple[Failing | None, Failing | None]:
        """Apply one outcome of `target`; returns (failing before, failing after)."""
        if self._file is not None:
            try:
                with self._file.update() as doc:
                    failing = _decode(doc)
                    change = _apply(failing, target, result, when, phase)
                    if change[0] != change[1]:
                        doc.clear()
                        doc.update(_encode(failing))
                self._memory = failing
                return change
            except OSError as exc:
                logger.warning("notification state cannot be locked or saved; kept in memory",
                               extra={"path": str(self._file.path), "error": str(exc), "phase": "notify"})
        return _apply(self._memory, target, result, when, phase)


def _apply(failing: dict[str, Failing], target: str, result: str, when: str,
           phase: str | None) -> tuple[Failing | None, Failing | None]:
    before = failing.get(target)
    after = next_failing(before, result, when, phase)
    if after is None:
        failing.pop(target, None)
    else:
        failing[target] = after
    return before, after


def _decode(doc: dict[str, Any]) -> dict[str, Failing]:
    failing = {}
    for name, value in (doc.get("failing") or {}).items():
        try:
            failing[str(name)] = Failing(str(value["since"]), int(value["runs"]), value.get("phase"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            logger.warning("notification state entry unreadable; left out",
                           extra={"target": str(name), "error": repr(exc), "phase": "notify"})
    return failing


def _encode(failing: dict[str, Failing]) -> dict[str, Any]:
    return {"version": STATE_VERSION,
            "failing": {name: {"since": f.since, "runs": f.runs, "phase": f.phase}
                        for name, f in sorted(failing.items())}}
