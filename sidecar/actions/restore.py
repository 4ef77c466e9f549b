"""Restore a volume from an archive: find the container, the volume and the archive (on
the backup volume or downloaded from the off-site store), then hand over to the source
that puts it back (sources/volumes.py: verify, stop, empty, unpack, start).

An archive of another node (`--node NAME`: its folder on the destinations) is downloaded
into the state folder, `.sidecar/nodes/NAME/daily/...`, never among this node's own
archives (a same-named archive of this node's stays as it is, and this node's rotation
and sync never take the other's for its own), and removed once the restore is over."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator

from ..tarball.archive import read_checksum, write_checksum
from ..destinations import Destination
from ..core.errors import NotFound
from ..core.labels import DEFAULT_STOP_TIMEOUT, label_backup_name
from ..core.model import ContainerInfo
from ..core.naming import CHECKSUM_SUFFIX, parse_name, safe_node_name
from ..core.presetnames import canonical_type
from .context import Context
from .interrupt import left_at_zero
from .sources import RestoreOutcome, RestoreRequest, get as get_source, volumes

__all__ = ["RestoreOutcome", "run_restore", "resolve_container", "fetch_from_remote", "fetched", "archive_to_read"]

logger = logging.getLogger(__name__)


def run_restore(ctx: Context, ref: str, volume: str, archive: str = "latest", force: bool = False,
                from_remote: str | None = None, node: str | None = None) -> RestoreOutcome:
    """`node`: read the archive from that node's folder on the destination (`from_remote`,
    or the first one)."""
    container, backup_name, stop_timeout = resolve_container(ctx, ref)
    _mount, volume_name = volumes.find_volume(container, volume)
    with contextlib.ExitStack() as stack:
        path = archive_to_read(ctx, stack, backup_name, volume_name, archive, from_remote, node)
        request = RestoreRequest(container, backup_name, volume_name, path, force, stop_timeout)
        return get_source(volumes.NAME).restore(ctx, request)


def resolve_container(ctx: Context, ref: str) -> tuple[ContainerInfo, str, int]:
    """A container by target name, container name or ID; with the backup name its
    archives use and the seconds it gets to stop. Any container can be restored into,
    labelled or not (a new host may not have the labels yet)."""
    discovery = ctx.discover()
    target = discovery.find(ref)
    if target is not None:
        return target.container, target.backup_name, target.config.stop_timeout
    container = ctx.engine.find_container(ref)
    if container is None and (gone := left_at_zero(ctx, ref)) is not None:
        logger.info("restoring a Swarm service a failed restore left at 0 replicas", extra={
            "target": ref, "service": gone.name})
        return gone, ref, DEFAULT_STOP_TIMEOUT
    if container is None:
        raise NotFound(f"no target or container named {ref!r}")
    return container, label_backup_name(container), DEFAULT_STOP_TIMEOUT


def archive_to_read(ctx: Context, stack: contextlib.ExitStack, backup_name: str, item: str, archive: str,
                    from_remote: str | None = None, node: str | None = None, what: str | None = None) -> Path:
    """The archive a restore reads: downloaded from a destination (`from_remote`, `node`;
    another node's download removed when `stack` closes), else the newest of `item` on
    the backup volume ("latest"), else the file named. `what` names it in the message
    when there is none (default: "{backup_name} volume {item}")."""
    if from_remote or node is not None:
        return stack.enter_context(fetched(ctx, backup_name, item, archive, from_remote, node))
    if archive == "latest":
        latest = ctx.store.latest(backup_name, item)
        if latest is None:
            raise NotFound(f"no archive of {what or f'{backup_name} volume {item}'} in {ctx.store.root}; with an "
                           "empty backup volume, take it from a destination: --from DEST")
        return latest.path
    return ctx.store.resolve(archive)


@contextlib.contextmanager
def fetched(ctx: Context, backup_name: str, volume_name: str, archive: str, destination: str | None = None,
            node: str | None = None) -> Iterator[Path]:
    """`fetch_from_remote`, and the download removed afterwards when it is another node's."""
    path = fetch_from_remote(ctx, backup_name, volume_name, archive, destination, node)
    try:
        yield path
    finally:
        if not ctx.is_own_folder(node):
            for leftover in (path, path.with_name(path.name + CHECKSUM_SUFFIX)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)


def fetch_from_remote(ctx: Context, backup_name: str, volume_name: str, archive: str,
                      destination: str | None = None, node: str | None = None) -> Path:
    """Download an archive from an off-site destination (by name; None: the first
    configured) onto the backup volume (with its checksum file, from the object's
    sha256), unless it is there already. `node`: from that node's folder (None: this
    node's own view); another node's archive goes to the state folder (module docstring)."""
    if node is not None:
        safe_node_name(node, "--node")
    remote = ctx.destination(destination, node)
    if archive == "latest":
        candidates = []
        for obj in remote.list():
            name = parse_name(obj.relpath.rsplit("/", 1)[-1])
            if name is not None and name.backup_name == backup_name and name.kind == canonical_type(volume_name) \
                    and obj.relpath == name.relpath:
                candidates.append((name, obj.relpath))
        if not candidates:
            raise NotFound(f"no off-site archive of {backup_name} volume {volume_name} in {remote.describe()}"
                           + (f" (node {node}'s folder)" if node is not None else ""))
        relpath = max(candidates, key=lambda pair: pair[0].recency)[1]
    else:
        name = parse_name(Path(archive).name)
        if name is None:
            raise NotFound(f"{archive!r} is not an archive name (expected e.g. daily/NAME_2026-01-01_daily.tar.zst)")
        relpath = name.relpath
    if not ctx.is_own_folder(node):
        return _download(ctx, remote, relpath, ctx.store.state_dir / "nodes" / node / relpath)
    local = ctx.store.path(relpath)
    if local.exists() and read_checksum(local) is not None:
        logger.info("archive already on the backup volume; not downloading", extra={"path": str(local)})
        return local
    return _download(ctx, remote, relpath, local)


def _download(ctx: Context, remote: Destination, relpath: str, local: Path) -> Path:
    local.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    logger.info("downloading the off-site copy", extra={"phase": "download", "destination": remote.name,
                                                        "key": remote.key(relpath)})
    obj = remote.download(relpath, local, ctx.settings.file_mode)
    write_checksum(local, obj.sha256, ctx.settings.file_mode)
    return local
