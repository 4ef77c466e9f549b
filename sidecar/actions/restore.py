"""Restore a volume from an archive: verify the checksum and every member first, stop
the container if it runs, empty the volume (only with --force when it holds data),
unpack the archive into it through the engine, start the container again."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ..archive import check_archive, iter_tar, read_checksum, root_entry_tar, write_checksum
from ..errors import NotFound, RestoreError, SidecarError
from ..labels import DEFAULT_STOP_TIMEOUT, NAME, default_name, select_volumes
from ..model import ContainerInfo, ContainerState, Mount
from ..naming import parse_name
from .context import Context
from .interrupt import STOPPED, Interruption

logger = logging.getLogger(__name__)

# Empties the folder given as $1 including dot files; POSIX sh, so busybox images work too.
_CLEAR_SCRIPT = 'cd "$1" && rm -rf -- ..?* .[!.]* *'


@dataclass(frozen=True)
class RestoreOutcome:
    target: str
    container: str
    volume: str
    archive: Path
    members: int
    tar_bytes: int
    seconds: float
    downtime: float


def run_restore(ctx: Context, ref: str, volume: str, archive: str = "latest", force: bool = False,
                from_remote: str | None = None) -> RestoreOutcome:
    started = time.monotonic()
    container, service, stop_timeout = resolve_container(ctx, ref)
    mount, type_name = _find_mount(container, volume)
    if from_remote:
        path = fetch_from_remote(ctx, service, type_name, archive, from_remote)
    else:
        path = _find_archive(ctx, service, type_name, archive)
    fields = {"target": service, "container": container.name, "volume": type_name, "archive": str(path)}

    logger.info("verifying archive", extra={**fields, "phase": "verify"})
    check = check_archive(path, keys=ctx.settings.decryption)
    logger.info("archive verified", extra={**fields, "phase": "verify", "members": check.members,
                                           "bytes": check.tar_bytes, "sha256": check.sha256})

    downtime = 0.0
    with ctx.store.target_lock(service):
        with contextlib.ExitStack() as stack:
            current = ctx.engine.inspect(container.id)
            stop = None
            if current.state in (ContainerState.RUNNING, ContainerState.PAUSED, ContainerState.RESTARTING):
                stop = stack.enter_context(Interruption(ctx, current, STOPPED, service, stop_timeout))
            if not ctx.engine.path_is_empty(container.id, mount.destination):
                if not force:
                    raise RestoreError(
                        f"volume {type_name} of {container.name} ({mount.destination}) is not empty; "
                        "use --force to replace its contents")
                _clear(ctx, current, mount)
            logger.info("restoring", extra={**fields, "phase": "restore"})
            try:
                ctx.engine.put_archive(container.id, mount.destination, iter_tar(path, keys=ctx.settings.decryption))
                if check.root is not None:
                    parent, _, base = mount.destination.rstrip("/").rpartition("/")
                    ctx.engine.put_archive(container.id, parent or "/", root_entry_tar(base, check.root))
            except SidecarError as err:
                raise RestoreError(f"unpacking {path.name} into {container.name}:{mount.destination} failed: {err}") from err
        if stop is not None:
            downtime = stop.seconds
    seconds = time.monotonic() - started
    logger.info("restore finished", extra={**fields, "phase": "done", "seconds": round(seconds, 3),
                                           "downtime_seconds": round(downtime, 3)})
    return RestoreOutcome(service, container.name, type_name, path, check.members, check.tar_bytes, seconds, downtime)


def resolve_container(ctx: Context, ref: str) -> tuple[ContainerInfo, str, int]:
    """A container by target name, container name or ID; with the service name its
    archives use and the seconds it gets to stop. Any container can be restored into,
    labelled or not (a new host may not have the labels yet)."""
    discovery = ctx.discover()
    target = discovery.find(ref)
    if target is not None:
        return target.container, target.name, target.config.stop_timeout
    container = ctx.engine.find_container(ref)
    if container is None:
        raise NotFound(f"no target or container named {ref!r}")
    name = container.labels.get(NAME, "").strip() or default_name(container)
    return container, name, DEFAULT_STOP_TIMEOUT


def _find_mount(container: ContainerInfo, volume: str) -> tuple[Mount, str]:
    specs = select_volumes(container, tuple(m.destination for m in container.mounts)) if container.mounts else ()
    for spec in specs:
        m = spec.mount
        project = container.compose_project
        if volume in (spec.type_name, m.destination, m.destination.rstrip("/"), m.source) or (
                project and m.source == f"{project}_{volume}"):
            return m, spec.type_name
    listed = ", ".join(f"{s.type_name} ({s.mount.destination})" for s in specs) or "none"
    raise NotFound(f"container {container.name!r} has no volume {volume!r}; its mounts: {listed}")


def _find_archive(ctx: Context, service: str, type_name: str, archive: str) -> Path:
    if archive == "latest":
        latest = ctx.store.latest(service, type_name)
        if latest is None:
            raise NotFound(f"no archive of {service} volume {type_name} in {ctx.store.root}")
        return latest.path
    return ctx.store.resolve(archive)


def fetch_from_remote(ctx: Context, service: str, type_name: str, archive: str,
                      destination: str | None = None) -> Path:
    """Download an archive from an off-site destination (by name; None: the first
    configured) onto the backup volume (with its checksum file, from the object's
    sha256), unless it is there already."""
    remote = ctx.destination(destination)
    if archive == "latest":
        candidates = []
        for obj in remote.list():
            name = parse_name(obj.relpath.rsplit("/", 1)[-1])
            if name is not None and name.service == service and name.type_name == type_name \
                    and obj.relpath == name.relpath:
                candidates.append((name, obj.relpath))
        if not candidates:
            raise NotFound(f"no off-site archive of {service} volume {type_name} in {remote.describe()}")
        relpath = max(candidates, key=lambda pair: pair[0].recency)[1]
    else:
        name = parse_name(Path(archive).name)
        if name is None:
            raise NotFound(f"{archive!r} is not an archive name (expected e.g. daily/NAME_2026-01-01_daily.tar.zst)")
        relpath = name.relpath
    local = ctx.store.path(relpath)
    if local.exists() and read_checksum(local) is not None:
        logger.info("archive already on the backup volume; not downloading", extra={"path": str(local)})
        return local
    local.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    logger.info("downloading the off-site copy", extra={"phase": "download", "destination": remote.name,
                                                        "key": remote.key(relpath)})
    obj = remote.download(relpath, local, ctx.settings.file_mode)
    write_checksum(local, obj.sha256, ctx.settings.file_mode)
    return local


def _clear(ctx: Context, container: ContainerInfo, mount: Mount) -> None:
    """Empty the mount through a short-lived helper container that shares the target's
    mounts (the engine's API cannot delete files)."""
    image = ctx.settings.helper_image
    if image is None:
        own = ctx.engine.own_container()
        image = own.image_id if own is not None else container.image_id
    code, logs = ctx.engine.run_helper(image, container.id, ["sh", "-c", _CLEAR_SCRIPT, "sh", mount.destination])
    if code != 0:
        raise RestoreError(
            f"emptying {container.name}:{mount.destination} with a helper container from image {image} failed "
            f"(exit {code}: {logs.strip()[-300:]}); set BACKUP_HELPER_IMAGE to an image with sh and rm")
    if not ctx.engine.path_is_empty(container.id, mount.destination):
        raise RestoreError(f"{container.name}:{mount.destination} is still not empty after clearing it")
