"""What is on the backup volume and in the off-site store: archives with their date,
size, checksum state and whether a verified off-site copy exists."""

from __future__ import annotations

from dataclasses import dataclass

from ..archive import read_checksum, sha256_file
from ..errors import ArchiveError, ConfigError
from ..naming import parse_image_name, parse_name
from .context import Context
from .sync import remote_index


@dataclass(frozen=True)
class ArchiveRow:
    path: str
    target: str
    volume: str
    frequency: str
    date: str
    size: int
    checksum: str  # "ok", "mismatch", "missing", "present" (not verified), "unreadable"
    offsite: str  # "verified", "missing", or "-" when no store is configured


@dataclass(frozen=True)
class RemoteRow:
    path: str
    target: str
    volume: str
    frequency: str
    date: str
    size: int
    verified: bool  # copied by this sidecar and checked (size and SHA-256) after the upload


def run_list(ctx: Context, name: str | None = None, verify: bool = False) -> list[ArchiveRow]:
    service = ctx.discover().service_for(name) if name is not None else None
    copies = remote_index(ctx).by_local() if ctx.remote is not None else None
    rows = []
    for archive in ctx.store.archives(service):
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
        if copies is None:
            offsite = "-"
        else:
            copy = copies.get(relpath)
            offsite = "verified" if copy is not None and copy.local_sha256 == expected else "missing"
        rows.append(ArchiveRow(relpath, archive.name.service, archive.name.type_name, archive.name.frequency.value,
                               _date(archive.name), archive.size, state, offsite))
    return rows


def run_list_remote(ctx: Context, name: str | None = None) -> list[RemoteRow]:
    if ctx.remote is None:
        raise ConfigError("list --remote needs the off-site store: set S3_BUCKET")
    service = ctx.discover().service_for(name) if name is not None else None
    known = remote_index(ctx).entries()
    rows = []
    for obj in ctx.remote.list():
        base = obj.relpath.rsplit("/", 1)[-1]
        archive = parse_name(base)
        if archive is not None:
            if service is not None and archive.service != service:
                continue
            rows.append(RemoteRow(obj.relpath, archive.service, archive.type_name, archive.frequency.value,
                                  _date(archive), obj.size, obj.relpath in known))
            continue
        image = parse_image_name(base)
        if image is not None and service is None:
            rows.append(RemoteRow(obj.relpath, f"{image.image}:{image.tag}", "-", "image",
                                  image.stamp.date().isoformat(), obj.size, obj.relpath in known))
    rows.sort(key=lambda r: (r.date, r.path))
    return rows


def _date(name) -> str:
    return name.stamp.isoformat(sep=" ") if name.has_time else name.stamp.date().isoformat()
