"""One file back, not the whole volume: list an archive's members (`list NAME --files`)
and restore one file or folder (`restore NAME --path PATH`), into the volume or into a
folder on the backup volume for inspection (`--into`), from the backup volume or a
destination (`--from`), volume archives and preset dumps alike.

Nothing here parses an archive, and the sidecar process reads none: the listing is the
checked extractor's own member iteration in an extract worker container (`--list`, with the
backup volume read-only and nothing else: decrypted, decompressed, hashed and checked as a
stream, never unpacked; sidecar/readers/unpack.py `list_archive`), and writing is its folder
writer with a member filter (sidecar/core/members.py `chosen`) in another such worker: for
`--into` with the backup volume read-write (the folder is on it), for a volume with that
volume. Where no worker can run, listing and restoring are refused (BACKUP_WORKER_IMAGE). The
whole archive is read and checked either way; only the chosen members are written, and
nothing else in the volume is touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import stat
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

from ..readers import unpack
from ..core.errors import ConfigError, NotFound, RestoreError
from ..tarball.extract import ArchiveFile, Kind, Member, Summary, open_archive
from ..core.members import chosen, matching, member_path, part_of, under
from ..core.model import ContainerInfo, ContainerState, Mount, Strategy
from ..core.naming import IMAGE_FOLDER
from ..core.schedule import Frequency
from ..store.storage import STATE_DIR
from .context import Context
from .interrupt import Interruption, InterruptionKind
from .restore import fetched, resolve_container
from .restore_dump import dump_item
from .sources.volumes import find_volume

logger = logging.getLogger(__name__)

_TYPE_BITS = {Kind.FILE: stat.S_IFREG, Kind.DIR: stat.S_IFDIR, Kind.SYMLINK: stat.S_IFLNK,
              Kind.HARDLINK: stat.S_IFREG, Kind.FIFO: stat.S_IFIFO}


@dataclass(frozen=True)
class FileRow:
    path: str  # relative to the volume's root, "." for the root itself
    kind: str
    mode: str  # as `ls -l` shows it
    size: int  # the file's length (a sparse file's full length)
    mtime: str  # ISO 8601 in the sidecar's TZ
    link: str = ""  # a symlink's target, a hard link's other name


@dataclass(frozen=True)
class FileListing:
    archive: str
    members: int  # in the whole archive
    rows: tuple[FileRow, ...]  # those the filters kept


@dataclass(frozen=True)
class PathRestoreOutcome:
    archive: str
    path: str | None  # None: the whole archive (`--into` alone)
    written: int  # members written
    where: str  # "volume NAME of CONTAINER (DEST)" or the folder
    seconds: float
    downtime: float = 0.0


def selector(path: str | None, match: str | None) -> Callable[[str], bool]:
    """The filter of --path and --match (both: both must hold); ValueError for a bad path."""
    tests = [under(member_path(path))] if path else []
    if match:
        tests.append(matching(match))
    return lambda name: all(test(name) for test in tests)


def run_list_files(ctx: Context, name: str | None, archive: str = "latest", item: str | None = None,
                   path: str | None = None, match: str | None = None, from_remote: str | None = None) -> FileListing:
    """The members of one archive (by file, or the newest of NAME's `item`), filtered."""
    keep = _checked_selector(path, match)
    with contextlib.ExitStack() as stack:
        found = _archive(ctx, stack, name, item, archive, from_remote)
        rows: list[FileRow] = []

        def take(member: Member) -> None:
            if keep(member.name):
                rows.append(_row(ctx, member))

        with open_archive(found) as opened:
            check = _listed(ctx, _request(ctx, opened, name or found.name), take)
        return FileListing(str(found), check.members, tuple(rows))


def run_restore_path(ctx: Context, ref: str, path: str | None, item: str | None = None, archive: str = "latest",
                     into: str | None = None, force: bool = False, from_remote: str | None = None,
                     dump: bool = False) -> PathRestoreOutcome:
    """One file or folder (`path`) of an archive back: into `into`, a folder on the backup
    volume (the whole archive when `path` is None), or into the container's volume `item`."""
    _checked_selector(path, None)  # a bad --path is refused before anything is read
    if into is None and (dump or path is None):
        raise ConfigError("a dump's file goes into a folder: add --into FOLDER (or restore the whole dump with "
                          "--dump alone)" if dump else "name the file or folder to restore with --path")
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if into is not None:
            backup_name = _backup_name(ctx, ref)
            if dump:
                item = dump_item(ctx, _preset_label(ctx, ref), backup_name, archive)
            found = _archive(ctx, stack, backup_name, item, archive, from_remote)
            folder = _folder(ctx, into, force)
            written = _into_folder(ctx, backup_name, found, folder, member_path(path) if path else None, dump)
            if dump:
                written = _join_parts(folder)
            where, downtime = str(folder), 0.0
        else:
            assert path is not None and item is not None
            container, backup_name, stop_timeout = resolve_container(ctx, ref)
            mount, volume_name = find_volume(container, item)
            found = _archive(ctx, stack, backup_name, volume_name, archive, from_remote)
            downtime = _into_volume(ctx, ref, container, mount, backup_name, stop_timeout, found, member_path(path))
            written = -1  # the worker reports the archive's member count, not the written ones
            where = f"volume {volume_name} of {container.name} ({mount.destination})"
    seconds = time.monotonic() - started
    logger.info("path restored", extra={"target": ref, "archive": str(found), "path": path, "into": where,
                                        "seconds": round(seconds, 3), "phase": "done"})
    return PathRestoreOutcome(str(found), path, written, where, seconds, downtime)


# --- where the archive is ------------------------------------------------------------------

def _archive(ctx: Context, stack: contextlib.ExitStack, name: str | None, item: str | None, archive: str,
             from_remote: str | None) -> Path:
    if archive != "latest" and from_remote is None:
        return ctx.store.resolve(archive)
    if name is None and archive == "latest":
        raise ConfigError("name the target (list NAME --files) or the archive file (--files FILE)")
    if archive == "latest" and item is None:
        item = _only_item(ctx, name, from_remote)
    if from_remote is not None:
        return stack.enter_context(fetched(ctx, name or "", item or "", archive, from_remote))
    assert name is not None
    latest = ctx.store.latest(name, item or "")
    if latest is None:
        raise NotFound(f"no archive of {name} {item} in {ctx.store.root}")
    return latest.path


def _only_item(ctx: Context, name: str, from_remote: str | None) -> str:
    """The one volume (or dump) NAME has archives of, when --volume names none."""
    if from_remote is not None:
        raise ConfigError("with --from, name the volume (--volume V) or the archive file")
    items = sorted({a.name.volume_name for a in ctx.store.archives(name)})
    if len(items) == 1:
        return items[0]
    if not items:
        raise NotFound(f"no archives of {name!r} in {ctx.store.root} (see `backup-sidecar list`)")
    raise ConfigError(f"{name} has archives of {', '.join(items)}: name one with --volume (or give the archive file)")


def _backup_name(ctx: Context, ref: str) -> str:
    """A name archives are stored under: `ref` itself when it has archives (no engine
    needed: a new host), else the backup name of the target or container `ref`."""
    if ctx.store.archives(ref):
        return ref
    return resolve_container(ctx, ref)[1]


def _preset_label(ctx: Context, ref: str) -> str | None:
    """The container's backup.preset, when there is such a container (a dump's type)."""
    with contextlib.suppress(NotFound, ConfigError):
        container = resolve_container(ctx, ref)[0]
        return container.labels.get("backup.preset")
    return None


# --- writing ---------------------------------------------------------------------------------

def _into_folder(ctx: Context, ref: str, found: Path, folder: Path, path: str | None, dump: bool) -> int:
    """The checked extractor's folder writer in an extract worker (never in the sidecar: the
    one writer of every restore), with the backup volume read-write and `folder` on it; the
    archive is verified first and the members to write counted. No worker, no restore."""
    keep = chosen(path, dump, root=False)  # the root entry would restyle the folder
    written = 0

    def count(member: Member) -> None:
        nonlocal written
        written += keep(member.name)

    with open_archive(found) as opened:
        how = _request(ctx, opened, ref, ContainerInfo("", f"folder {folder}", "", "", ContainerState.EXITED, {}, ()),
                       Mount("bind", str(folder), str(folder)), path=path, dump_parts=dump, leave_root=True)
        check = _listed(ctx, how, count, f" to restore it into {folder}")
        if not written:
            raise NotFound(f"{found.name} holds no member under that path (see `list NAME --files`)")
        how = dataclasses.replace(how, sha256=check.sha256)
        unpack.run_worker(ctx.engine, how, _folder_plan(ctx, how, folder))
    return written


def _request(ctx: Context, opened: ArchiveFile, ref: str, container: ContainerInfo | None = None,
             mount: Mount | None = None, **only) -> unpack.UnpackRequest:
    """What the workers get for `opened` (the sha256 the listing read is filled in before a
    write); with no container, a stand-in whose mounts no listing worker gets."""
    container = container or ContainerInfo("", f"archive {opened.name}", "", "", ContainerState.EXITED, {}, ())
    return unpack.UnpackRequest(container, mount or Mount("bind", "", ""), opened, "", ctx.settings.decryption,
                                ctx.worker_settings, ref, **only)


def _listed(ctx: Context, how: unpack.UnpackRequest, on_member: Callable[[Member], None], why: str = "") -> Summary:
    """The archive's members, each to `on_member`, as a listing worker reads them (no worker,
    no listing: the sidecar parses no archive)."""
    return unpack.list_archive(ctx.engine, how, unpack.listing_plan(ctx.engine, how, why), on_member)


def _folder_plan(ctx: Context, how: unpack.UnpackRequest, folder: Path) -> unpack.WorkerPlan:
    """The worker with the backup volume read-write (the folder is on it) and the archive
    read from it; fails closed, naming BACKUP_WORKER_IMAGE, where no worker can run."""
    plan, reason = unpack.worker_plan(ctx.engine, how)
    if plan is None:
        raise unpack.WorkerUnavailable(
            f"cannot restore {how.archive.name} into {folder}: no worker container can run ({reason}). Restored "
            "files are only written by the checked extractor in a worker container, --into too: run the sidecar in "
            "its container (its own image is used), or set BACKUP_WORKER_IMAGE to the sidecar's image")
    store = plan.site.store
    try:
        inside = store.inside(store.root / folder.relative_to(os.path.realpath(store.root)))
    except ValueError as err:
        raise unpack.WorkerUnavailable(f"{folder} is not on the backup volume a worker mounts ({store.root})") from err
    return dataclasses.replace(plan, mounts=(store.mount,), into=inside)


def _folder(ctx: Context, text: str, force: bool) -> Path:
    """--into: a folder under BACKUP_DIR (relative paths are taken from there), never one
    of its archive folders or the state folder, created when missing; one that holds
    anything only with --force."""
    root = Path(os.path.realpath(ctx.store.root))
    wanted = Path(text) if Path(text).is_absolute() else ctx.store.root / text
    real = Path(os.path.realpath(wanted))
    reserved = {STATE_DIR, IMAGE_FOLDER, *(f.value for f in Frequency)}
    if real == root or root not in real.parents or real.relative_to(root).parts[0] in reserved:
        raise ConfigError(f"--into {text!r} is not a folder for restored files: expected a folder under BACKUP_DIR "
                          f"({ctx.store.root}), outside its {', '.join(sorted(reserved))} folders (e.g. restored/app)")
    real.mkdir(parents=True, exist_ok=True, mode=0o700)
    if any(real.iterdir()) and not force:
        raise RestoreError(f"{real} is not empty; use --force to write into it (members replace what is there "
                           "under their names)")
    return real


def _into_volume(ctx: Context, ref: str, container, mount, backup_name: str, stop_timeout: int, found: Path,
                 path: str) -> float:
    """Verify first (nothing is stopped for a bad archive), then the worker writes the
    path's members while the container is stopped or paused as its strategy says (hot:
    not at all; not a target: stopped). Returns the seconds it was interrupted."""
    target = ctx.discover().find(ref)
    strategy = target.config.strategy if target is not None else Strategy.STOP
    fields = {"target": backup_name, "container": container.name, "path": path, "phase": "restore"}
    with ctx.store.target_lock(backup_name), open_archive(found) as opened:
        how = _request(ctx, opened, backup_name, container, mount, path=path)
        wanted = under(path)
        members = 0

        def count(member: Member) -> None:
            nonlocal members
            members += bool(member.name) and wanted(member.name)

        check = _listed(ctx, how, count, f" to restore it into {container.name}:{mount.destination}")
        if not members:
            raise NotFound(f"{found.name} holds no member under {path!r} (see `list {backup_name} --files`)")
        how = dataclasses.replace(how, sha256=check.sha256)
        plan = unpack.require_worker(how, *unpack.worker_plan(ctx.engine, how))
        with _interrupted(ctx, container, strategy, backup_name, stop_timeout) as window:
            logger.info("restoring one path", extra={**fields, "members": members})
            unpack.run_worker(ctx.engine, how, plan)
        return window.seconds if window is not None else 0.0


@contextlib.contextmanager
def _interrupted(ctx: Context, container, strategy: Strategy, backup_name: str,
                 stop_timeout: int) -> Iterator[Interruption | None]:
    kind = {Strategy.STOP: InterruptionKind.STOPPED, Strategy.PAUSE: InterruptionKind.PAUSED}.get(strategy)
    current = ctx.engine.inspect(container.id)
    if kind is None or current.state is not ContainerState.RUNNING:
        yield None
        return
    with Interruption(ctx, current, kind, backup_name, stop_timeout) as window:
        yield window


def _join_parts(folder: Path) -> int:
    """The dump's parts written into `folder` joined into its file, in order (what `tar -xf
    ARCHIVE && cat FILE.* > FILE` does by hand); returns the files made."""
    files: dict[str, list[tuple[int, str]]] = {}
    for entry in os.scandir(folder):
        part = part_of(entry.name)
        if part is not None and entry.is_file(follow_symlinks=False):
            files.setdefault(part[0], []).append((part[1], entry.name))
    for file, parts in files.items():
        numbers = sorted(n for n, _ in parts)
        if numbers != list(range(len(numbers))):
            raise RestoreError(f"{folder}: the parts of {file} are not 0 to {len(numbers) - 1}: left as they are")
        fd = os.open(folder / file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            for _n, name in sorted(parts):
                with open(folder / name, "rb") as piece:
                    while chunk := piece.read(1 << 20):
                        out.write(chunk)
        for _n, name in parts:
            os.unlink(folder / name)
    return len(files)


# --- rows --------------------------------------------------------------------------------------

def _checked_selector(path: str | None, match: str | None) -> Callable[[str], bool]:
    try:
        return selector(path, match)
    except ValueError as err:
        raise ConfigError(f"--path: {err}") from None


def _row(ctx: Context, member: Member) -> FileRow:
    mode = stat.filemode(_TYPE_BITS[member.kind] | member.mode)
    when = datetime.fromtimestamp(member.mtime_ns / 1e9, ctx.settings.tz).isoformat(timespec="seconds")
    return FileRow(member.name or ".", member.kind.value, mode, member.realsize, when, member.linkname)
