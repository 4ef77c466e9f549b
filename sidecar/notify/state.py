"""Which targets are failing, so a recovery is announced once, and which are at risk (a
hot copy of a live database, consistency.py), so that warning is announced once when it
starts, also after a restart and also when the daemon and a one-shot CLI backup take turns
(`.sidecar/notify.json`, through JsonState).

Without a path (tests, no backup volume) or when the file cannot be locked or written (a
read-only backup volume), the state is kept in memory and decisions go on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..store.state import JsonState

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


@dataclass(frozen=True)
class Change:
    """What one outcome changed for its target."""

    before: Failing | None  # failing before it
    after: Failing | None  # failing after it
    new_risk: bool  # it starts a risk (or another one) that was not announced yet


class FailingTargets:
    def __init__(self, path: Path | None):
        self._file = JsonState(path, "notification state") if path is not None else None
        self._memory: dict[str, Failing] = {}
        self._risks: dict[str, str] = {}

    def record(self, target: str, result: str, when: str, phase: str | None, risk: str | None = None) -> Change:
        """Apply one outcome of `target` (`risk`: the key of its consistency risk, None:
        none; a skipped or aborted run read nothing and changes no risk)."""
        if self._file is not None:
            try:
                with self._file.update() as doc:
                    failing, risks = _decode(doc), _decode_risks(doc)
                    was = _encode(failing, risks)
                    change = _apply(failing, risks, target, result, when, phase, risk)
                    if (now := _encode(failing, risks)) != was:
                        doc.clear()
                        doc.update(now)
                self._memory, self._risks = failing, risks
                return change
            except OSError as exc:
                logger.warning("notification state cannot be locked or saved; kept in memory",
                               extra={"path": str(self._file.path), "error": str(exc), "phase": "notify"})
        return _apply(self._memory, self._risks, target, result, when, phase, risk)


def _apply(failing: dict[str, Failing], risks: dict[str, str], target: str, result: str, when: str,
           phase: str | None, risk: str | None) -> Change:
    before = failing.get(target)
    after = next_failing(before, result, when, phase)
    if after is None:
        failing.pop(target, None)
    else:
        failing[target] = after
    new_risk = False
    if result in ("success", "failure"):
        new_risk = risk is not None and risks.get(target) != risk
        if risk is None:
            risks.pop(target, None)
        else:
            risks[target] = risk
    return Change(before, after, new_risk)


def _decode(doc: dict[str, Any]) -> dict[str, Failing]:
    failing = {}
    for name, value in (doc.get("failing") or {}).items():
        try:
            failing[str(name)] = Failing(str(value["since"]), int(value["runs"]), value.get("phase"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            logger.warning("notification state entry unreadable; left out",
                           extra={"target": str(name), "error": repr(exc), "phase": "notify"})
    return failing


def _decode_risks(doc: dict[str, Any]) -> dict[str, str]:
    risks = doc.get("at_risk")
    return {str(k): str(v) for k, v in risks.items()} if isinstance(risks, dict) else {}


def _encode(failing: dict[str, Failing], risks: dict[str, str]) -> dict[str, Any]:
    return {"version": STATE_VERSION,
            "failing": {name: {"since": f.since, "runs": f.runs, "phase": f.phase}
                        for name, f in sorted(failing.items())},
            "at_risk": dict(sorted(risks.items()))}
