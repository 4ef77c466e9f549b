"""What the sidecar would do: targets with strategy, volumes, schedule and next run, and
the labelled containers it skips, with why."""

from __future__ import annotations

from dataclasses import dataclass
import time
from datetime import datetime

from .context import Context
from .sync import remote_index


@dataclass(frozen=True)
class PlanRow:
    target: str
    container: str
    state: str
    strategy: str
    schedule: str
    frequency: str
    next_run: datetime
    volumes: tuple[str, ...]
    compression: str
    keep: str
    latest: str | None  # date of the oldest "latest archive" among the target's volumes
    copies: int  # places holding the latest backup of every volume (local, s3)
    offsite: str  # "verified 2h ago", "missing", "not configured"


@dataclass(frozen=True)
class SkippedRow:
    container: str
    reason: str


def run_plan(ctx: Context) -> tuple[list[PlanRow], list[SkippedRow]]:
    discovery = ctx.discover()
    now = ctx.now()
    copies = remote_index(ctx).by_local() if ctx.remote is not None else None
    rows = [
        PlanRow(
            target=t.name,
            container=t.container.name,
            state=t.container.state.value,
            strategy=str(t.config.strategy),
            schedule=t.config.schedule.expression,
            frequency=str(t.config.schedule.frequency),
            next_run=t.config.schedule.next_after(now, ctx.settings.tz).astimezone(ctx.settings.tz),
            volumes=tuple(f"{v.type_name}={v.mount.destination}" for v in t.volumes),
            compression=str(t.config.compression),
            keep=str(t.config.keep),
            **_three_two_one(ctx, t, copies),
        )
        for t in discovery.targets
    ]
    skipped = [SkippedRow(s.container.name, s.reason) for s in discovery.skipped]
    return rows, skipped


def _three_two_one(ctx: Context, target, copies) -> dict:
    """The 3-2-1 state of a target's latest backup: where copies of it exist."""
    latest = [ctx.store.latest(target.name, v.type_name) for v in target.volumes]
    if not latest or any(a is None for a in latest):
        return {"latest": None, "copies": 0, "offsite": "no backup yet"}
    oldest = min(latest, key=lambda a: a.name.stamp).name
    shown = oldest.stamp.isoformat(sep=" ") if oldest.has_time else oldest.stamp.date().isoformat()
    if copies is None:
        return {"latest": shown, "copies": 1, "offsite": "not configured"}
    found = [copies.get(a.name.relpath) for a in latest]
    if any(c is None for c in found):
        return {"latest": shown, "copies": 1, "offsite": "missing"}
    age = time.time() - min(c.verified_at for c in found)
    return {"latest": shown, "copies": 2, "offsite": f"verified {_age(age)} ago"}


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"
