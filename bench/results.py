"""A measure's samples, its baseline's samples from the same run, the ratio of the medians,
the issue's target, and their rendering as a table and as JSON."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field


@dataclass
class Measure:
    key: str  # the JSON key (and, with its reader stripped, the --only name)
    title: str
    unit: str  # of the samples: "s", "MB", "% of a core"
    target: float  # bound on the ratio when there is a baseline, else on the median
    samples: list[float] = field(default_factory=list)
    baseline: list[float] | None = None  # None: an absolute target
    baseline_title: str = ""
    notes: dict = field(default_factory=dict)

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    @property
    def baseline_median(self) -> float | None:
        return statistics.median(self.baseline) if self.baseline else None

    @property
    def ratio(self) -> float | None:
        if self.median is None or not self.baseline_median:
            return None
        return self.median / self.baseline_median

    @property
    def met(self) -> bool | None:
        value = self.ratio if self.baseline is not None else self.median
        return None if value is None or self.target == float("inf") else value <= self.target

    def target_text(self) -> str:
        if self.target == float("inf"):
            return "-"  # a figure to read, no target
        return f"<= {self.target:g}" + ("" if self.baseline is not None else f" {self.unit}")

    def as_json(self) -> dict:
        return {
            "title": self.title, "unit": self.unit, "median": _round(self.median),
            "baseline": self.baseline_title or None, "baseline_median": _round(self.baseline_median),
            "ratio": _round(self.ratio), "target": self.target if self.target != float("inf") else None,
            "target_on": "ratio" if self.baseline is not None else "median", "met": self.met,
            "samples": [_round(s) for s in self.samples],
            "baseline_samples": [_round(s) for s in self.baseline] if self.baseline is not None else None,
            **({"notes": self.notes} if self.notes else {}),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


MAX_LOAD_PER_CORE = 0.5  # the 1-minute load average per core above which no ratio is printed


def load_per_core() -> float:
    return os.getloadavg()[0] / (os.cpu_count() or 1)


def table(measures: list[Measure], load: float = 0.0) -> str:
    """The results; with `load` (per core, the highest seen during the run) above
    MAX_LOAD_PER_CORE, no ratio and no verdict: figures taken beside other work."""
    quiet = load <= MAX_LOAD_PER_CORE
    header = ["measure", "median", "baseline median", "ratio", "target", "met?"]
    rows = [header]
    for m in measures:
        rows.append([
            m.title, _fmt(m.median, m.unit),
            f"{_fmt(m.baseline_median, m.unit)} ({m.baseline_title})" if m.baseline is not None else "-",
            f"{m.ratio:.2f}" if m.ratio is not None and quiet else "-", m.target_text(),
            {True: "yes", False: "NO", None: "-"}[m.met] if quiet else "-",
        ])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    if not quiet:
        lines.append(f"no ratios: the machine's load average reached {load:.2f} per core, above "
                     f"{MAX_LOAD_PER_CORE} (other work ran beside this one: these seconds are not comparable)")
    return "\n".join(lines)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.2f} s" if value >= 0.1 else f"{value * 1000:.0f} ms"
    if unit == "MB":
        return f"{value:.0f} MB"
    return f"{value:.2f} {unit}"
