"""What the sidecar would do: targets with strategy, volumes, schedule and next run, and
the labelled containers it skips, with why."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .context import Context


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


@dataclass(frozen=True)
class SkippedRow:
    container: str
    reason: str


def run_plan(ctx: Context) -> tuple[list[PlanRow], list[SkippedRow]]:
    discovery = ctx.discover()
    now = ctx.now()
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
        )
        for t in discovery.targets
    ]
    skipped = [SkippedRow(s.container.name, s.reason) for s in discovery.skipped]
    return rows, skipped
