"""Where each target's backups are: the newest archive of every volume on the backup
volume, whether it has a verified off-site copy, and how many copies of it exist. Used
by `plan` and by the metrics."""

from __future__ import annotations

from ..model import CopyState, Target
from .context import Context
from .sync import remote_index


def copy_states(ctx: Context, targets: list[Target]) -> dict[tuple[str, str], CopyState]:
    copies = remote_index(ctx).by_local() if ctx.remote is not None else {}
    states = {}
    for target in targets:
        archives = ctx.store.archives(target.name)
        for volume in target.volumes:
            mine = [a for a in archives if a.name.type_name == volume.type_name]
            newest = ctx.store.latest(target.name, volume.type_name)
            offsite = [_mtime(a.path) for a in mine if a.name.relpath in copies]
            count = 0
            if newest is not None:
                count = 1 + (1 if newest.name.relpath in copies else 0)
            states[(target.name, volume.type_name)] = CopyState(
                local=_mtime(newest.path) if newest is not None else None,
                offsite={"s3": max(offsite) if offsite else None} if ctx.remote is not None else {},
                copies=count,
            )
    return states


def newest_archive_times(ctx: Context) -> dict[tuple[str, str], float]:
    """(service, volume) -> when its newest archive was written, for every archive on disk."""
    times: dict[tuple[str, str], float] = {}
    for archive in ctx.store.archives():
        key = (archive.name.service, archive.name.type_name)
        times[key] = max(times.get(key, 0.0), _mtime(archive.path))
    return times


def _mtime(path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
