"""What is on the backup volume and on the off-site destinations: archives with their
date, size, checksum state and whether verified off-site copies exist."""

from __future__ import annotations

from dataclasses import dataclass

from ..archive import read_checksum, sha256_file
from ..destinations import Destination
from ..errors import ArchiveError
from ..naming import parse_image_name, parse_name
from .context import Context
from .sync import copy_index


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


def run_list(ctx: Context, name: str | None = None, verify: bool = False) -> list[ArchiveRow]:
    backup_name = ctx.discover().backup_name_for(name) if name is not None else None
    copies = {d.name: copy_index(ctx, d).by_local() for d in ctx.destinations}
    rows = []
    for archive in ctx.store.archives(backup_name):
        try:
            expected = read_checksum(archive.path)
            if expected is None:
                state = "missing"
            elif verify:
                state = "ok" if sha256_file(archive.path) == expected else "mismatch"
            else:
                state = "present"
        except (ArchiveError, OSError):
            state = "unreadable"
        relpath = archive.name.relpath
        holders = [name for name, by_local in copies.items()
                   if (copy := by_local.get(relpath)) is not None and copy.local_sha256 == expected]
        offsite = _offsite(holders, len(copies))
        rows.append(ArchiveRow(relpath, archive.name.backup_name, archive.name.volume_name, archive.name.frequency.value,
                               _date(archive.name), archive.size, state, offsite))
    return rows


def _offsite(holders: list[str], destinations: int) -> str:
    if not destinations:
        return "-"
    if not holders:
        return "missing"
    return "verified" if len(holders) == destinations else "verified: " + ",".join(holders)


def run_list_remote(ctx: Context, name: str | None = None, destination: str | None = None) -> list[RemoteRow]:
    """The archives and image exports a destination holds (`destination`: its name; None:
    every configured destination), oldest first."""
    chosen = [ctx.destination(destination)] if destination is not None else list(ctx.destinations)
    if not chosen:
        ctx.destination(None)  # raises: names what to set
    backup_name = ctx.discover().backup_name_for(name) if name is not None else None
    rows = [row for d in chosen for row in _remote_rows(ctx, d, backup_name)]
    rows.sort(key=lambda r: (r.date, r.path, r.destination))
    return rows


def _remote_rows(ctx: Context, destination: Destination, backup_name: str | None) -> list[RemoteRow]:
    known = copy_index(ctx, destination).entries()
    rows = []
    for obj in destination.list():
        base = obj.relpath.rsplit("/", 1)[-1]
        verified = obj.relpath in known
        archive = parse_name(base)
        if archive is not None:
            if backup_name is not None and archive.backup_name != backup_name:
                continue
            rows.append(RemoteRow(obj.relpath, archive.backup_name, archive.volume_name, archive.frequency.value,
                                  _date(archive), obj.size, verified, obj.key, destination.name))
            continue
        image = parse_image_name(base)
        if image is not None and backup_name is None:
            rows.append(RemoteRow(obj.relpath, f"{image.image}:{image.tag}", "-", "image",
                                  image.stamp.date().isoformat(), obj.size, verified, obj.key, destination.name))
    return rows


def _date(name) -> str:
    return name.stamp.isoformat(sep=" ") if name.has_time else name.stamp.date().isoformat()
