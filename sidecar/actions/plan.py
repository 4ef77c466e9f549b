"""What the sidecar would do: targets with strategy, volumes, schedule and next run, and
the labelled containers it skips, with why."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from ..model import CopyState, Target
from ..readers.mirror import mirror_bytes, mirror_folder
from .context import Context
from .status import copy_states


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
    latest: str | None  # when the oldest "latest archive" among the target's volumes was written
    copies: int  # places holding the latest backup of every volume (the backup volume, each destination)
    offsite: str  # "verified, 2 h old", "missing", "not configured", "no backup yet"
    mirror_bytes: int | None = None  # disk use of the target's staging mirrors (None: none kept)


@dataclass(frozen=True)
class SkippedRow:
    container: str
    reason: str


def run_plan(ctx: Context) -> tuple[list[PlanRow], list[SkippedRow]]:
    discovery = ctx.discover()
    now = ctx.now()
    states = copy_states(ctx, list(discovery.targets))
    rows = [
        PlanRow(
            target=t.backup_name,
            container=t.container.name,
            state=t.container.state.value,
            strategy=str(t.config.strategy),
            schedule=t.config.schedule.expression,
            frequency=str(t.config.schedule.frequency),
            next_run=t.config.schedule.next_after(now, ctx.settings.tz).astimezone(ctx.settings.tz),
            volumes=tuple(f"{v.volume_name}={v.mount.destination}" for v in t.volumes),
            compression=str(t.config.compression),
            keep=str(t.config.keep),
            **_three_two_one(ctx, [states[(t.backup_name, v.volume_name)] for v in t.volumes]),
            mirror_bytes=_mirror_bytes(ctx, t),
        )
        for t in discovery.targets
    ]
    skipped = [SkippedRow(s.container.name, s.reason) for s in discovery.skipped]
    return rows, skipped


def _mirror_bytes(ctx: Context, target: Target) -> int | None:
    """What the target's staging mirrors take on the backup volume, as their last passes measured."""
    sizes = [mirror_bytes(mirror_folder(ctx.store.state_dir, target.backup_name, v.volume_name))
             for v in target.volumes]
    known = [size for size in sizes if size is not None]
    return sum(known) if known else None


def _three_two_one(ctx: Context, volumes: list[CopyState]) -> dict:
    """The 3-2-1 state of a target's latest backup, from its volumes' copy states."""
    if not volumes or any(v.local is None for v in volumes):
        return {"latest": None, "copies": 0, "offsite": "no backup yet"}
    latest = datetime.fromtimestamp(min(v.local for v in volumes), ctx.settings.tz)
    shown = latest.isoformat(sep=" ", timespec="minutes")
    copies = min(v.copies for v in volumes)
    if not ctx.destinations:
        offsite = "not configured"
    elif copies < 2:
        offsite = "missing"
    else:
        # Per volume its newest verified off-site copy; the target is as old as its oldest.
        newest = min(max(t for t in v.offsite.values() if t is not None) for v in volumes)
        offsite = f"verified, {_age(time.time() - newest)} old"
    return {"latest": shown, "copies": copies, "offsite": offsite}


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"
