"""What the sidecar would do: targets with what a backup really does (Target.method),
volumes, schedule and next run, and the labelled containers it skips, with why; and a
warning for a target that looks like a database but runs `hot` without a preset
(consistency.py, which every run reports too)."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime

from ..core.consistency import hot_copy_risk
from ..core.errors import SidecarError
from ..core.labels import ENABLE
from ..core.model import CopyState, Strategy, Target
from ..readers import READERS
from ..readers.worker import NAME as WORKER
from ..core.swarm import placement_warning
from ..readers.mirror import kept_mirrors, mirror_bytes, mirror_folder
from ..core.snapshots import OWN_TAG, Snapshot, selector, snapshot_names
from ..core.stacks import ITEM as STACK_ITEM, Stack, discover_stacks
from . import mirrors
from .context import Context
from .formats import StorageFormat, format_of
from .formats.restic import local_repository
from .maintenance import has_repository
from .sources import items
from .sources.volumes import mirror_refusal
from .status import container_command, copy_states

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanRow:
    target: str
    container: str
    state: str
    strategy: str  # what a backup really does (Target.method): `stop`, `preset:mysql`, `preset:mysql+volumes:stop`
    schedule: str
    frequency: str
    next_run: datetime
    volumes: tuple[str, ...]
    compression: str
    keep: str
    latest: str | None  # when the oldest "latest archive" among the target's volumes was written
    copies: int  # places holding the latest backup of every volume (the backup volume, each destination)
    offsite: str  # "verified, 2 h old", "missing", "not configured", "no backup yet"
    # Per destination, in configured order: "verified, 2 h old" (holds the latest backup),
    # "behind, verified 3 d old" (only older ones), "missing" (none).
    destinations: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # e.g. a database backed up hot without a preset
    mirror_bytes: int | None = None  # disk use of the target's staging mirrors (None: none kept)
    preset: str | None = None  # backup.preset as written (an alias stays an alias)
    volume_strategy: str | None = None  # how its volumes are read (None: a preset alone reads none)
    # How its volumes are read: "mirror" (a staging mirror kept by worker containers), "worker",
    # "engine-api" (the engine's archive API: slower, a stop target stays down longer), "-" (none).
    reader: str = "-"
    reader_why: str = ""  # the worker image and how it was chosen, or why no worker can run


@dataclass(frozen=True)
class UnusedMirror:
    """A staging mirror no target volume of this scope uses (its target or volume is gone)."""

    target: str
    volume: str
    path: str
    mirror_bytes: int | None
    updated: datetime | None  # its last pass
    remove_after: datetime | None = None  # removed then (actions/mirrors.py); None: kept (its keep is unknown)


def unused_mirrors(ctx: Context, rows: list[PlanRow]) -> list[UnusedMirror]:
    """Mirrors on the backup volume that none of `rows`' volumes uses, and when each goes."""
    used = {(r.target, v.partition("=")[0]) for r in rows for v in r.volumes}
    if all((t, v) in used for t, v, _ in kept_mirrors(ctx.store.state_dir)):
        return []
    discovery = ctx.discover()  # the keep values of the targets (only when a mirror is unused)

    def when(stamp: float | None) -> datetime | None:
        return datetime.fromtimestamp(stamp, ctx.settings.tz) if stamp is not None else None

    return [UnusedMirror(m.target, m.volume, str(m.folder), m.mirror_bytes, when(m.updated), when(m.remove_after))
            for m in mirrors.unused(ctx, used, lambda name: discovery.keep_for(name, ctx.settings.keep))]


@dataclass(frozen=True)
class SkippedRow:
    container: str
    reason: str


def run_plan(ctx: Context) -> tuple[list[PlanRow], list[SkippedRow]]:
    discovery = ctx.discover()
    now = ctx.now()
    states = copy_states(ctx, list(discovery.targets))
    site = _worker_site(ctx) if any(t.volumes for t in discovery.targets) else (None, "")
    rows = [
        PlanRow(
            target=t.backup_name,
            container=t.container.name,
            state=t.container.state.value,
            strategy=t.method,
            preset=t.config.preset,
            volume_strategy=str(t.volume_strategy) if t.volume_strategy is not None else None,
            schedule=t.config.schedule.expression,
            frequency=str(t.config.schedule.frequency),
            next_run=t.config.schedule.next_after(now, ctx.settings.tz).astimezone(ctx.settings.tz),
            volumes=tuple(f"{v.volume_name}={v.mount.destination}" for v in t.volumes)
            + tuple(f"{item}=preset" for item in items(t) if item not in {v.volume_name for v in t.volumes}),
            compression=str(t.config.compression),
            keep=t.config.keep.describe(),
            **_three_two_one(ctx, [states[(t.backup_name, item)] for item in items(t)]),
            warnings=database_warnings(t, container_command(ctx, t)) + swarm_warnings(t),
            mirror_bytes=_mirror_bytes(ctx, t),
            **_reader(t, *site, encrypted=ctx.local_encryption is not None),
        )
        for t in discovery.targets
    ]
    rows = _restic_latest(ctx, discovery.targets, rows)
    skipped = [SkippedRow(s.container.name, s.reason) for s in discovery.skipped]
    try:
        skipped += [SkippedRow("(Swarm service)", why) for why in ctx.engine.unseen_on_workers(ENABLE)]
    except SidecarError as err:
        logger.debug("could not check the Swarm services", extra={"error": str(err)})
    return rows, skipped


def _restic_latest(ctx: Context, targets, rows: list[PlanRow]) -> list[PlanRow]:
    """backup.format=restic targets: LATEST is the name of the newest snapshot of the item
    whose newest is oldest (the archives' vocabulary); COPIES and OFFSITE as for archives,
    from what each destination's repository took (status.copy_states)."""
    restic = {t.backup_name: t for t in targets if format_of(ctx, t) is StorageFormat.RESTIC}
    if not restic or not has_repository(ctx):
        return rows
    try:
        found = local_repository(ctx).snapshots(OWN_TAG)
    except SidecarError as err:
        logger.warning("restic snapshots unreadable for the plan", extra={"error": str(err)})
        return rows
    names = snapshot_names(found, ctx.settings.tz)
    newest: dict[tuple[str, str], Snapshot] = {}
    for snap in found:  # oldest first: the last one seen is the newest
        if snap.ours and snap.host == ctx.node().name:
            newest[(snap.backup_name, snap.item)] = snap
    changed = []
    for row in rows:
        target = restic.get(row.target)
        if target is None:
            changed.append(row)
            continue
        latest = [newest.get((row.target, item)) for item in items(target)]
        if not latest or None in latest:
            changed.append(dataclasses.replace(row, latest=None, copies=0, offsite="no snapshot yet"))
            continue
        oldest = min(latest, key=lambda s: s.time)
        if row.copies:  # the copies' state (.sidecar/restic.json, status.copy_states) knows this run
            changed.append(dataclasses.replace(row, latest=names[oldest.id]))
            continue
        offsite = "missing" if ctx.destinations else "not configured"
        changed.append(dataclasses.replace(row, latest=names[oldest.id], copies=1, offsite=offsite,
                                           destinations={}))
    return changed


def _worker_site(ctx: Context) -> tuple[bool, str]:
    """Whether worker containers can run here, with their image and how it was chosen, or why not."""
    try:
        site, why = READERS[WORKER].describe(ctx.engine, ctx.worker_settings)
    except SidecarError as err:
        return False, f"the worker image cannot be checked ({err})"
    return site is not None, why


def _reader(target: Target, workers: bool | None, why: str, encrypted: bool) -> dict:
    """The reader a backup of `target` would use now (readers.choose's order)."""
    if not target.volumes:
        return {"reader": "-", "reader_why": "no volumes read (its preset's dump)"}
    if not workers:
        return {"reader": "engine-api", "reader_why": why}
    mirrored = mirror_refusal(target, target.container, encrypted) is None
    return {"reader": "mirror" if mirrored else "worker", "reader_why": why}


def database_warnings(target: Target, command: tuple[str, ...]) -> tuple[str, ...]:
    """A warning when `target` looks like a database server and is copied hot without a
    preset (and not acknowledged with backup.hot-ok): consistency.hot_copy_risk."""
    risk = hot_copy_risk(target, command)
    return (risk.warning,) if risk is not None else ()


def swarm_warnings(target: Target) -> tuple[str, ...]:
    """A stop backup of a replicated Swarm service that nothing pins to one node."""
    task = target.container.swarm
    if task is None or target.config.strategy is not Strategy.STOP:
        return ()
    warning = placement_warning(task)
    return (warning,) if warning else ()


def _mirror_bytes(ctx: Context, target: Target) -> int | None:
    """What the target's staging mirrors take on the backup volume, as their last passes measured."""
    sizes = [mirror_bytes(mirror_folder(ctx.store.state_dir, target.backup_name, v.volume_name))
             for v in target.volumes]
    known = [size for size in sizes if size is not None]
    return sum(known) if known else None


def _three_two_one(ctx: Context, volumes: list[CopyState]) -> dict:
    """The 3-2-1 state of a target's latest backup, from its volumes' copy states."""
    if not volumes or any(v.local is None for v in volumes):
        return {"latest": None, "copies": 0, "offsite": "no backup yet", "destinations": {}}
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
    destinations = {d.name: _destination_state(d.name, volumes) for d in ctx.destinations}
    return {"latest": shown, "copies": copies, "offsite": offsite, "destinations": destinations}


def _destination_state(name: str, volumes: list[CopyState]) -> str:
    """One destination's part of the 3-2-1 state: does it hold the latest backup of every volume?"""
    stamps = [v.offsite.get(name) for v in volumes]
    if any(stamp is None for stamp in stamps):
        return "missing"
    age = _age(time.time() - min(stamps))
    return f"verified, {age} old" if all(name in v.holders for v in volumes) else f"behind, verified {age} old"


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


@dataclass(frozen=True)
class StackRow:
    """A Compose project's stack (issue 23) as the next runs will keep it: made with the runs
    of its leader target, on that target's schedule, in its format, kept by BACKUP_KEEP."""

    project: str
    target: str  # the leader: the target whose runs make it ("-": none is made, see note)
    schedule: str
    next_run: datetime | None
    format: str  # "archive" or "restic"
    keep: str
    files: int  # the files Compose names, the env files, secrets and configs, extra includes
    secrets: str  # what happens to its file secrets
    latest: str | None  # the newest archive's or snapshot's name on this node
    note: str = ""  # why none is made (opted out, no working folder, ...)


def run_plan_stacks(ctx: Context) -> list[StackRow]:
    """Each Compose project in scope with its stack: what the next runs keep, when, in
    which format; the projects whose stack is not kept, with why."""
    if not ctx.settings.stack_enabled:
        return []
    by_project: dict[str, list[Target]] = {}
    for target in ctx.discover().targets:
        if target.container.compose_project is not None:
            by_project.setdefault(target.container.compose_project, []).append(target)
    now, rows = ctx.now(), []
    for project, targets in sorted(by_project.items()):
        try:
            found = discover_stacks(targets, ctx.engine.list_containers(project, running=False), ctx.settings.stack)
        except SidecarError as err:
            rows.append(StackRow(project, "-", "-", None, "-", "-", 0, "-", None, f"containers not listed: {err}"))
            continue
        for stack in found.stacks:
            leader = next(t for t in targets if t.backup_name == stack.leader)
            restic = format_of(ctx, leader) is StorageFormat.RESTIC
            schedule = leader.config.schedule
            rows.append(StackRow(
                project, leader.backup_name, schedule.expression,
                schedule.next_after(now, ctx.settings.tz).astimezone(ctx.settings.tz),
                "restic" if restic else "archive", ctx.settings.keep.describe(), len(stack.parts),
                _stack_secrets(ctx, stack, restic), _stack_latest(ctx, project, restic)))
        for skipped in found.skipped:
            rows.append(StackRow(skipped.project, "-", "-", None, "-", "-", 0, "-", None, skipped.reason))
    return rows


def _stack_secrets(ctx: Context, stack: Stack, restic: bool) -> str:
    if not stack.secrets:
        return "none"
    if restic:
        return f"{len(stack.secrets)} kept (the restic repository is encrypted)"
    if ctx.settings.encryption is not None:
        return f"{len(stack.secrets)} kept (age-encrypted)"
    return f"{len(stack.secrets)} left out (set BACKUP_AGE_RECIPIENTS to keep them, encrypted)"


def _stack_latest(ctx: Context, project: str, restic: bool) -> str | None:
    if not restic:
        latest = ctx.store.latest(project, STACK_ITEM)
        return latest.name.filename if latest is not None else None
    if not has_repository(ctx):
        return None
    try:
        found = [s for s in local_repository(ctx).snapshots(selector(project, STACK_ITEM), ctx.node().name) if s.ours]
    except SidecarError as err:
        logger.warning("restic snapshots unreadable for the plan", extra={"error": str(err)})
        return None
    return snapshot_names(found, ctx.settings.tz)[found[-1].id] if found else None
