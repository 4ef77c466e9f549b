"""What is on the backup volume and on the off-site destinations: archives with their
date, size, checksum state and whether verified off-site copies exist."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..tarball.archive import read_checksum, sha256_file
from ..destinations import Destination
from ..core.errors import ArchiveError
from ..core.naming import IMAGE_FOLDER, parse_image_name, parse_name
from ..store.restic import REPO_FOLDER
from ..core.snapshots import OWN_TAG, selector, snapshot_names
from .context import Context
from .formats.restic import destination_config, local_repository, reachable_repository, secrets_dir
from .sync import copy_index

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Row:
    """What every listed archive shows: where it is, whose, which volume, which
    frequency folder, its date and size (the CLI's table and JSON keep these names)."""

    path: str
    target: str
    volume: str
    frequency: str
    date: str
    size: int


@dataclass(frozen=True)
class ArchiveRow(_Row):
    checksum: str  # "ok", "mismatch", "missing", "present" (not verified), "unreadable"
    # "verified" (on every destination), "missing" (on none), "verified: NAME,..." (on
    # some), or "-" when no destination is configured
    offsite: str


@dataclass(frozen=True)
class RemoteRow(_Row):
    verified: bool  # copied by this sidecar and checked (size and SHA-256) after the upload
    key: str  # the object's name on the destination (the S3 key with the prefix)
    destination: str
    node: str | None = None  # whose folder it is in (`list --node`, BACKUP_NODE_PREFIX); None: the root


def run_list(ctx: Context, name: str | None = None, verify: bool = False) -> list[ArchiveRow]:
    """Archives (of every target, or of `name`), then, for the whole volume, the image
    exports: one row each, frequency "image", the image's name:tag as target."""
    backup_name = ctx.discover().backup_name_for(name) if name is not None else None
    copies = {d.name: copy_index(ctx, d).by_local() for d in ctx.destinations}
    rows = []
    for archive in ctx.store.archives(backup_name):
        n = archive.name
        rows.append(ArchiveRow(n.relpath, n.backup_name, n.volume_name, n.frequency.value, _date(n), archive.size,
                               *_states(archive.path, n.relpath, copies, verify)))
    for export in ctx.store.image_exports() if name is None else ():
        n = export.name
        rows.append(ArchiveRow(n.relpath, f"{n.image}:{n.tag}", "-", "image", n.stamp.date().isoformat(),
                               export.size, *_states(export.path, n.relpath, copies, verify)))
    return rows


def _states(path: Path, relpath: str, copies: dict, verify: bool) -> tuple[str, str]:
    """(checksum state, off-site state) of one file on the backup volume."""
    expected = None
    try:
        expected = read_checksum(path)
        if expected is None:
            state = "missing"
        elif verify:
            state = "ok" if sha256_file(path) == expected else "mismatch"
        else:
            state = "present"
    except (ArchiveError, OSError):
        state = "unreadable"
    holders = [name for name, by_local in copies.items()
               if (copy := by_local.get(relpath)) is not None and copy.local_sha256 == expected]
    return state, _offsite(holders, len(copies))


def _offsite(holders: list[str], destinations: int) -> str:
    if not destinations:
        return "-"
    if not holders:
        return "missing"
    return "verified" if len(holders) == destinations else "verified: " + ",".join(holders)


def run_list_remote(ctx: Context, name: str | None = None, destination: str | None = None,
                    node: str | None = None) -> list[RemoteRow]:
    """The archives and image exports a destination holds (`destination`: its name; None:
    every configured destination), oldest first; in `node`'s folder (None: this node's own,
    or the root on a single host)."""
    chosen = [ctx.destination(destination, node)] if destination is not None else list(ctx.destinations_on(node))
    if not chosen:
        ctx.destination(None)  # raises: names what to set
    backup_name = ctx.discover().backup_name_for(name) if name is not None else None
    folder = node if node is not None else ctx.prefix_node
    rows = [row for d in chosen for row in _remote_rows(ctx, d, backup_name, ctx.is_own_folder(node), folder)]
    rows.sort(key=lambda r: (r.date, r.path, r.destination))
    return rows


def _remote_rows(ctx: Context, destination: Destination, backup_name: str | None, own: bool,
                 node: str | None) -> list[RemoteRow]:
    """Rows of the archives right in their folders (not those in nodes' folders below the
    root); `own`: the copy index describes this view (another node's copies are never
    "verified" by this one)."""
    known = copy_index(ctx, destination).entries() if own else {}
    rows = []
    for obj in destination.list():
        folder, _, base = obj.relpath.rpartition("/")
        verified = obj.relpath in known
        archive = parse_name(base)
        if archive is not None and folder == archive.frequency.value:
            if backup_name is not None and archive.backup_name != backup_name:
                continue
            rows.append(RemoteRow(obj.relpath, archive.backup_name, archive.volume_name, archive.frequency.value,
                                  _date(archive), obj.size, verified, obj.key, destination.name, node))
            continue
        image = parse_image_name(base)
        if image is not None and backup_name is None and folder == IMAGE_FOLDER:
            rows.append(RemoteRow(obj.relpath, f"{image.image}:{image.tag}", "-", "image",
                                  image.stamp.date().isoformat(), obj.size, verified, obj.key, destination.name, node))
    return rows


def _date(name) -> str:
    return name.stamp.isoformat(sep=" ") if name.has_time else name.stamp.date().isoformat()


@dataclass(frozen=True)
class SnapshotRow:
    """A restic snapshot of the local repository (backup.format=restic), named as an
    archive of the same run would be."""

    name: str  # {service}_{type}_{date}_{frequency}
    id: str
    target: str
    volume: str
    frequency: str
    date: str  # in the sidecar's time zone
    host: str


def run_list_snapshots(ctx: Context, name: str | None = None, destination: str | None = None,
                       node: str | None = None, remote: bool = False) -> list[SnapshotRow]:
    """The sidecar's snapshots in BACKUP_DIR/restic (of every target, or of `name`),
    oldest first; none when there is no repository. `remote` (or `node`): in the
    repository of `destination` (None: the first one) instead; `node`: only the snapshots
    that node took (restic's host), as `list --node` shows that node's archives."""
    if ctx.settings.restic_password is None:
        if (ctx.store.root / REPO_FOLDER / "config").is_file():
            logger.warning("BACKUP_DIR holds a restic repository but RESTIC_PASSWORD(_FILE) is not set: its "
                           "snapshots are not listed", extra={"repository": str(ctx.store.root / REPO_FOLDER)})
        return []
    if remote or node is not None:
        if not ctx.settings.destinations:
            return []
        repo = reachable_repository(destination_config(ctx, destination), ctx.settings.restic_password,
                                    secrets_dir(ctx))
        if not repo.exists():
            return []
    elif not (ctx.store.root / REPO_FOLDER / "config").is_file():
        return []
    else:
        repo = local_repository(ctx)
    backup_name = ctx.discover().backup_name_for(name) if name is not None else None
    found = repo.snapshots(selector(backup_name) if backup_name is not None else OWN_TAG, node)
    names = snapshot_names(found, ctx.settings.tz)
    return [SnapshotRow(names[s.id], s.short_id, s.backup_name, s.item, s.frequency.value,
                        s.time.astimezone(ctx.settings.tz).isoformat(timespec="seconds"), s.host)
            for s in found if s.ours]
