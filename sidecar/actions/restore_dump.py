"""Restore a preset's dump (`restore NAME --dump latest|FILE`): find the container and the
dump archive (on the backup volume or downloaded from a destination), then hand over to
the preset that feeds it back through the app's own client (sources/presets)."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

from ..core.errors import NotFound, RestoreError
from ..core.labels import PRESET
from ..core.model import Compression
from ..core.naming import parse_name
from ..core.presetnames import CANONICAL, PRESETS, canonical_type, dump_type, preset_of_type
from .context import Context
from .formats.restic import local_repository
from .restore import archive_to_read, resolve_container
from .restore_snapshot import dump_archive
from .sources import RestoreOutcome, RestoreRequest, source_of_item

__all__ = ["run_restore_dump"]


def run_restore_dump(ctx: Context, ref: str, dump: str = "latest", force: bool = False,
                     from_remote: str | None = None, node: str | None = None, restic: bool = False) -> RestoreOutcome:
    """`node`: read the dump from that node's folder on the destination (`from_remote`, or
    the first one). `restic`: the dump is a snapshot (`dump`: latest, its id or its name;
    a name restores into any container, as a FILE does) in the restic repository (or
    `from_remote`'s), read back into an archive first so the preset restores it through
    the same checked path; the outcome names the snapshot."""
    container, backup_name, stop_timeout = resolve_container(ctx, ref)
    with contextlib.ExitStack() as stack:
        if restic:
            named = parse_name(dump + Compression.NONE.extension) if dump != "latest" else None
            if named is not None and preset_of_type(named.volume_name) is not None:  # a name: any container
                backup_name, item = named.backup_name, named.volume_name
            else:
                item = _restic_item(ctx, container.labels.get(PRESET), backup_name, from_remote)
            path, name = stack.enter_context(dump_archive(ctx, backup_name, item, dump, from_remote,
                                                          raw=Compression.NONE if item == dump_type("sqlite") else None,
                                                          node=node))
        else:
            item = _item(ctx, container.labels.get(PRESET), backup_name, dump)
            path = archive_to_read(ctx, stack, backup_name, item, dump, from_remote, node,
                                   f"{backup_name}'s {item} dump")
        request = RestoreRequest(container, backup_name, item, path, force, stop_timeout)
        outcome = source_of_item(item).restore(ctx, request)
        return dataclasses.replace(outcome, archive=Path(name)) if restic else outcome


def _restic_item(ctx: Context, label: str | None, backup_name: str, from_remote: str | None) -> str:
    """The dump's item for a restic restore: the container's backup.preset, else the only
    preset whose snapshots exist for this backup name in the local repository."""
    if label and label.strip().lower() in PRESETS:
        return dump_type(label)
    found = sorted({canonical_type(s.item) for s in local_repository(ctx).snapshots()
                    if s.ours and s.backup_name == backup_name and s.item and preset_of_type(s.item) is not None})
    if len(found) != 1:
        where = " (label the container with backup.preset to restore from a destination)" if from_remote else ""
        raise NotFound(f"{backup_name} has {'no preset dump snapshot' if not found else 'dumps of ' + ', '.join(found)}"
                       f" in the restic repository; set backup.preset on the container{where}")
    return found[0]


def _item(ctx: Context, label: str | None, backup_name: str, dump: str) -> str:
    """The archive type to restore: the one FILE's name says, else the container's
    backup.preset, else the only preset whose archives exist for this backup name."""
    if dump != "latest":
        name = parse_name(Path(dump).name)
        if name is None or preset_of_type(name.volume_name) is None:
            raise RestoreError(f"{dump!r} is not a preset's dump (expected a name with the type "
                               f"{' or '.join(dump_type(p) for p in CANONICAL)})")
        return name.volume_name
    if label and label.strip().lower() in PRESETS:
        return dump_type(label)
    found = sorted({canonical_type(a.name.volume_name) for a in ctx.store.archives(backup_name)
                    if preset_of_type(a.name.volume_name) is not None})
    if len(found) != 1:
        raise NotFound(f"{backup_name} has {'no preset dump' if not found else 'dumps of ' + ', '.join(found)}; "
                       "name one with --dump FILE")
    return found[0]


def dump_item(ctx: Context, preset_label: str | None, backup_name: str, dump: str = "latest") -> str:
    """The archive type (a dump's `volume` part) `restore --dump DUMP` reads: see `_item`."""
    return _item(ctx, preset_label, backup_name, dump)
