"""A measure's samples, its baseline's samples from the same run, the ratio of the medians,
the issue's target, and their rendering as a table and as JSON."""

from __future__ import annotations

import os
import statistics
import time
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


MAX_BUSY_AT_START = 0.15  # share of all cores busy just before a bench, above which no ratio is printed
QUIET_SAMPLE_SECONDS = 5.0


def load_per_core() -> float:
    return os.getloadavg()[0] / (os.cpu_count() or 1)


def _cpu_times() -> tuple[int, int]:
    """(busy, all) jiffies of all cores since boot, from /proc/stat (idle and iowait are not busy)."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


@dataclass(frozen=True)
class Quiet:
    """How busy the machine was just before a bench started. Taken before, not during: during
    the run the bench's own baselines and backups keep every core busy (the load average would
    count them and refuse every run), so "quiet" means nothing else was running when it began."""

    busy: float  # share of all cores busy over `seconds` before the start
    seconds: float
    load_per_core: float  # the 1-minute load average per core at the start, for the record

    @property
    def ok(self) -> bool:
        return self.busy <= MAX_BUSY_AT_START

    def text(self) -> str:
        return (f"before the start: {self.busy:.0%} of the cores busy over {self.seconds:.0f} s "
                f"(threshold {MAX_BUSY_AT_START:.0%}), 1-minute load {self.load_per_core:.2f} per core")

    def as_json(self) -> dict:
        return {"busy_before_start": round(self.busy, 3), "sample_seconds": self.seconds,
                "max_busy": MAX_BUSY_AT_START, "load_per_core_at_start": round(self.load_per_core, 2),
                "quiet": self.ok}


def quiet_before_start(seconds: float = QUIET_SAMPLE_SECONDS) -> Quiet:
    """Sample the cores for `seconds` (the bench has not started anything yet)."""
    busy0, all0 = _cpu_times()
    time.sleep(seconds)
    busy1, all1 = _cpu_times()
    return Quiet(busy=(busy1 - busy0) / max(1, all1 - all0), seconds=seconds, load_per_core=load_per_core())


def table(measures: list[Measure], quiet: Quiet | None = None) -> str:
    """The results; when the machine was busy before the start (`quiet`), no ratio and no
    verdict: figures taken beside other work."""
    was_quiet = quiet is None or quiet.ok
    header = ["measure", "median", "baseline median", "ratio", "target", "met?"]
    rows = [header]
    for m in measures:
        rows.append([
            m.title, _fmt(m.median, m.unit),
            f"{_fmt(m.baseline_median, m.unit)} ({m.baseline_title})" if m.baseline is not None else "-",
            f"{m.ratio:.2f}" if m.ratio is not None and was_quiet else "-", m.target_text(),
            {True: "yes", False: "NO", None: "-"}[m.met] if was_quiet else "-",
        ])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    if quiet is not None:
        lines.append(quiet.text())
    if not was_quiet:
        lines.append("no ratios: other work was running when the bench started (these seconds are not comparable)")
    return "\n".join(lines)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.2f} s" if value >= 0.1 else f"{value * 1000:.0f} ms"
    if unit == "MB":
        return f"{value:.0f} MB"
    return f"{value:.2f} {unit}"
