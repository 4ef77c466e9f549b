"""Where each target's backups are: the newest archive of every volume on the backup
volume, when each destination last got a verified copy of it, and how many copies of it
exist (the backup volume and every destination holding a verified copy). Used by `plan`
and by the metrics. And whether they can be trusted: a hot copy of what looks like a live
database (consistency.py), which needs the container's command."""

from __future__ import annotations

from ..core.consistency import ConsistencyRisk, hot_copy_risk, may_be_at_risk
from ..core.errors import SidecarError
from ..telemetry.metrics import RESTIC_STATE_FILE
from ..core.model import CopyState, StorageFormat, Target
from ..core.presetnames import canonical_type
from ..store.state import JsonState
from .context import Context
from .formats import format_of
from .formats.restic import item_records
from .sources import items
from .sync import copy_index


def copy_states(ctx: Context, targets: list[Target]) -> dict[tuple[str, str], CopyState]:
    copies = {d.name: copy_index(ctx, d).by_local() for d in ctx.destinations}
    states = {}
    restic: dict | None = None
    for target in targets:
        if format_of(ctx, target) is StorageFormat.RESTIC:
            if restic is None:
                restic = JsonState(ctx.store.state_dir / RESTIC_STATE_FILE, "restic state").read()
            states.update(_restic_states(ctx, target, restic))
            continue
        archives = ctx.store.archives(target.backup_name)
        for item in items(target):  # each volume's and the preset's archives
            mine = [a for a in archives if a.name.kind == canonical_type(item)]
            newest = ctx.store.latest(target.backup_name, item)
            offsite = {}
            for name, by_local in copies.items():
                times = [_mtime(a.path) for a in mine if a.name.relpath in by_local]
                offsite[name] = max(times) if times else None
            holders = frozenset(name for name, by_local in copies.items()
                                if newest is not None and newest.name.relpath in by_local)
            states[(target.backup_name, item)] = CopyState(
                local=_mtime(newest.path) if newest is not None else None, offsite=offsite,
                copies=1 + len(holders) if newest is not None else 0, holders=holders)
    return states


def _restic_states(ctx: Context, target: Target, doc: dict) -> dict[tuple[str, str], CopyState]:
    """backup.format=restic: from .sidecar/restic.json, each item's newest snapshot of this
    node and, per destination, the newest one its repository took with `restic copy`."""
    newest = item_records(doc, ctx.node().name)
    copied = doc.get("copied") if isinstance(doc.get("copied"), dict) else {}
    states = {}
    for item in items(target):
        key = f"{target.backup_name}/{item}"
        local = newest[key].time if key in newest else None
        there = copied.get(key) if isinstance(copied.get(key), dict) else {}
        offsite = {d.name: there.get(d.name) for d in ctx.destinations}
        holders = frozenset(name for name, when in offsite.items()
                            if local is not None and when is not None and when >= local)
        states[(target.backup_name, item)] = CopyState(local=local, offsite=offsite,
                                                       copies=1 + len(holders) if local is not None else 0,
                                                       holders=holders)
    return states


def newest_archive_times(ctx: Context) -> dict[tuple[str, str], float]:
    """(backup name, volume) -> when its newest archive was written, for every archive on disk."""
    times: dict[tuple[str, str], float] = {}
    for archive in ctx.store.archives():
        key = (archive.name.backup_name, archive.name.kind)
        times[key] = max(times.get(key, 0.0), _mtime(archive.path))
    return times


def _mtime(path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def container_command(ctx: Context, target: Target) -> tuple[str, ...]:
    """What the target's container runs, when a consistency risk depends on it (else, and
    when the engine cannot say, nothing: the image alone is looked at)."""
    if not may_be_at_risk(target):
        return ()  # no risk possible: no need to ask the engine
    try:
        return ctx.engine.container_command(target.container.id)
    except SidecarError:
        return ()


def consistency_risk(ctx: Context, target: Target) -> ConsistencyRisk | None:
    return hot_copy_risk(target, container_command(ctx, target))
