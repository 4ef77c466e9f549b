"""The off-site copy: every finished archive on the backup volume is copied to each
configured destination (S3, rclone remotes, a second disk) under the same relative path, verified, and rotated
there by the same rules as locally.

It is a sync, not fire-and-forget: each cycle compares what is on the backup volume with
what each destination holds and sends what is missing, so an outage heals on the next
cycle (after the next backup, or the daemon's periodic sync). A failed upload never
touches the local archive, and one destination failing or unreachable never keeps the
others from their copies. Promoted copies (weekly/, monthly/ hard links) become
server-side copies of the object already uploaded, not second uploads. Only the
`Destination` Protocol is used here; each destination has its own copy index.

With BACKUP_ENCRYPT_LOCAL=false and a key configured, local archives are plain and the
off-site copy is encrypted on its way out: the archive is encrypted into a temporary
file of the state folder (encrypted bytes only), uploaded as NAME.age, and removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..tarball.archive import ArchiveWriter, iter_raw, read_checksum
from ..destinations import CopyEntry, CopyIndex, Destination, RemoteObject
from ..core.errors import ChecksumMismatch, DestinationError, DestinationUnreachable, SidecarError
from ..core.model import Compression
from ..core.naming import ENCRYPTED_SUFFIX, IMAGE_FOLDER, PARTIAL_SUFFIX, parse_image_name, parse_name
from ..core.retention import Keep, PruneRefused, plan_prune, select_image_prune
from .context import Context

logger = logging.getLogger(__name__)

_SYNC_LOCK = threading.Lock()  # one sync at a time in this process; the file lock covers others


@dataclass(frozen=True)
class LocalItem:
    relpath: str  # e.g. daily/NAME or images/NAME
    path: Path
    sha256: str


@dataclass(frozen=True)
class SyncResult:
    """One destination's part of a sync."""

    destination: str = ""
    uploaded: tuple[str, ...] = ()
    copied: tuple[str, ...] = ()
    verified: tuple[str, ...] = ()  # found on the store and checked
    failed: tuple[tuple[str, str], ...] = ()  # (relpath, error)
    pending: tuple[str, ...] = ()  # not tried: the store was unreachable
    error: str | None = None
    skipped: bool = False  # another sync was running

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failed and not self.pending


@dataclass(frozen=True)
class SyncReport:
    """A sync of every destination: one result each, in configured order."""

    results: tuple[SyncResult, ...] = ()
    skipped: bool = False  # no destination configured, or another sync was running
    error: str | None = None  # why it was skipped

    @property
    def ok(self) -> bool:
        return self.error is None and all(r.ok for r in self.results)

    def result(self, destination: str) -> SyncResult | None:
        return next((r for r in self.results if r.destination == destination), None)

    @property
    def synced(self) -> tuple[str, ...]:
        """Destinations whose sync went through: only those are rotated after it."""
        return () if self.skipped else tuple(r.destination for r in self.results if r.ok)


def copy_index(ctx: Context, destination: Destination | str) -> CopyIndex:
    """The copy index of a destination as this node uses it (its own folder with
    BACKUP_NODE_PREFIX)."""
    name = destination if isinstance(destination, str) else destination.name
    return CopyIndex(ctx.store.state_dir, name, ctx.prefix_node)


def remote_relpath(ctx: Context, item_relpath: str) -> str:
    """Where a local archive lives in the store: the same path, plus .age when only the
    off-site copy is encrypted."""
    if ctx.settings.encryption is not None and not ctx.settings.encrypt_local \
            and not item_relpath.endswith(ENCRYPTED_SUFFIX):
        return item_relpath + ENCRYPTED_SUFFIX
    return item_relpath


def local_items(ctx: Context) -> list[LocalItem]:
    """Finished archives and image exports that have their checksum, oldest first."""
    items = []
    archives = [(a.path, a.name.relpath) for a in ctx.store.archives()]
    archives += [(i.path, i.name.relpath) for i in ctx.store.image_exports()]
    for path, relpath in archives:
        try:
            digest = read_checksum(path)
        except SidecarError:
            digest = None
        if digest is not None:
            items.append(LocalItem(relpath, path, digest))
    return items


def run_sync(ctx: Context, new_cycle: bool = True) -> SyncReport:
    """Copy what is missing to every destination, one after the other. A sync starts a
    new cycle (the daemon's periodic sync, the `sync` command): every destination is tried.
    The sync after a backup passes new_cycle=False: a destination found unreachable earlier
    in the cycle (`ctx.unreachable`) is not tried again until the next cycle."""
    if not ctx.destinations:
        return SyncReport(skipped=True)
    if not _SYNC_LOCK.acquire(blocking=False):
        return SyncReport(skipped=True, error="another sync is running")
    try:
        if new_cycle:
            ctx.unreachable.clear()
        ctx.store.prepare()
        with ctx.store.target_lock(".sync"):
            _clean_outgoing(ctx)
            return SyncReport(tuple(_marked_down(ctx, d) or _sync(ctx, d) for d in ctx.destinations))
    except SidecarError as err:  # BackupBusy from another process's sync
        return SyncReport(skipped=True, error=str(err))
    finally:
        _SYNC_LOCK.release()


def _marked_down(ctx: Context, destination: Destination) -> SyncResult | None:
    """The result of not trying a destination that was unreachable earlier in this cycle."""
    if destination.name not in ctx.unreachable:
        return None
    index = copy_index(ctx, destination).entries()
    pending = tuple(i.relpath for i in local_items(ctx) if remote_relpath(ctx, i.relpath) not in index)
    logger.warning("off-site copy not tried: the store was unreachable earlier in this cycle; retrying on the "
                   "next sync cycle", extra={"phase": "upload", "destination": destination.name,
                                             "pending": len(pending)})
    return SyncResult(destination.name, pending=pending, error=f"{destination.name} is unreachable (marked down "
                      "until the next sync cycle)")


def _mark_down(ctx: Context, destination: Destination, err: DestinationError) -> None:
    if isinstance(err, DestinationUnreachable):
        ctx.unreachable.add(destination.name)


def _sync(ctx: Context, destination: Destination) -> SyncResult:
    started = time.monotonic()
    index = copy_index(ctx, destination)
    name = destination.name
    try:
        listing = {o.relpath: o for o in destination.list()}
    except DestinationError as err:
        _mark_down(ctx, destination, err)
        pending = tuple(i.relpath for i in local_items(ctx) if remote_relpath(ctx, i.relpath) not in index.entries())
        logger.error("off-site copy failed: the store cannot be listed; retrying on the next cycle",
                     extra={"phase": "upload", "destination": name, "error": str(err), "pending": len(pending)})
        return SyncResult(name, pending=pending, error=str(err))
    known = index.entries()
    index.forget([rel for rel in known if rel not in listing])  # deleted on the store: unknown again
    known = {rel: e for rel, e in known.items() if rel in listing}
    by_local_sha = {e.local_sha256: e for e in known.values()}

    uploaded, copied, verified, failed = [], [], [], []
    items = local_items(ctx)
    for position, item in enumerate(items):
        rel = remote_relpath(ctx, item.relpath)
        entry = known.get(rel)
        if entry is not None and entry.local_sha256 == item.sha256:
            continue  # copied and verified before
        fields = {"phase": "upload", "destination": name, "path": item.relpath, "key": destination.key(rel)}
        try:
            if rel in listing and entry is None and rel == item.relpath:
                # On the store but not in our index (a new backup volume, a lost index): check it.
                head = destination.head(rel)
                if head is not None and head.sha256 == item.sha256:
                    index.record(_entry(rel, item, head))
                    verified.append(item.relpath)
                    continue
            twin = by_local_sha.get(item.sha256)
            if twin is not None and twin.relpath in listing:
                obj = destination.copy(twin.relpath, rel)  # a promoted hard link: server-side copy
                copied.append(item.relpath)
            else:
                obj = _upload(ctx, destination, item, rel)
                uploaded.append(item.relpath)
            new = _entry(rel, item, obj)
            index.record(new)
            by_local_sha[item.sha256] = new
            listing[rel] = obj
            logger.info("off-site copy verified", extra={**fields, "bytes": obj.size,
                                                         "copied": twin is not None and item.relpath in copied})
        except ChecksumMismatch as err:
            failed.append((item.relpath, str(err)))
            logger.error("off-site copy failed: the local archive does not match its checksum",
                         extra={**fields, "error": str(err)})
        except OSError as exc:  # encrypting the outgoing copy (disk full...): this archive only
            failed.append((item.relpath, f"preparing the encrypted copy: {exc}"))
            logger.error("off-site copy failed: the encrypted copy could not be written; retried on the next "
                         "cycle", extra={**fields, "error": str(exc)})
        except DestinationError as err:
            failed.append((item.relpath, str(err)))
            logger.error("off-site copy failed; the local archive is kept and the upload is retried on the "
                         "next cycle", extra={**fields, "error": str(err)})
            if isinstance(err, DestinationUnreachable):
                _mark_down(ctx, destination, err)
                pending = tuple(i.relpath for i in items[position + 1:]
                                if remote_relpath(ctx, i.relpath) not in known)
                return SyncResult(name, tuple(uploaded), tuple(copied), tuple(verified), tuple(failed), pending,
                                  str(err))
    result = SyncResult(name, tuple(uploaded), tuple(copied), tuple(verified), tuple(failed))
    if uploaded or copied or failed:
        logger.info("sync finished", extra={"phase": "upload", "destination": name, "uploaded": len(uploaded),
                                            "copied": len(copied), "failed": len(failed),
                                            "seconds": round(time.monotonic() - started, 3)})
    return result


def _entry(rel: str, item: LocalItem, obj: RemoteObject) -> CopyEntry:
    return CopyEntry(rel, item.relpath, obj.sha256 or "", item.sha256, obj.size, time.time())


def _upload(ctx: Context, destination: Destination, item: LocalItem, rel: str) -> RemoteObject:
    if rel == item.relpath:
        return destination.upload(item.path, rel, item.sha256)
    # Only the off-site copy is encrypted: encrypt into a temporary file (ciphertext only).
    temp_dir = _outgoing(ctx)
    temp_dir.mkdir(mode=0o700, exist_ok=True)
    temp = temp_dir / Path(rel).name
    _unlink(temp)  # what a killed sync left (the .sync lock is ours: no one else writes here)
    with contextlib.ExitStack() as stack:
        stack.callback(_unlink, temp)
        stack.callback(_unlink, temp.with_name(temp.name + ".sha256"))
        with ArchiveWriter(temp, Compression.NONE, 0o600, ctx.settings.encryption) as writer:
            writer.write_stream(iter_raw(item.path))
            result = writer.finish()
        return destination.upload(result.path, rel, result.sha256)


def _outgoing(ctx: Context) -> Path:
    return ctx.store.state_dir / "outgoing"


def _clean_outgoing(ctx: Context) -> None:
    """Remove what a sync killed mid-encryption left in outgoing/ (called under the .sync
    lock, so no live sync is writing there): stale copies would fill the disk and make
    the next encryption of the same name fail."""
    folder = _outgoing(ctx)
    if not folder.is_dir():
        return
    for entry in os.scandir(folder):
        try:
            os.unlink(entry.path)
        except OSError as exc:
            logger.warning("could not remove a stale outgoing copy", extra={"path": entry.path, "error": str(exc)})
        else:
            logger.info("removed a stale outgoing copy left by an interrupted sync", extra={"path": entry.path})


def _unlink(path: Path) -> None:
    for candidate in (path, path.with_name(path.name + PARTIAL_SUFFIX)):
        try:
            os.unlink(candidate)
        except FileNotFoundError:
            pass


# --- rotation on the store ---------------------------------------------------------------

@dataclass(frozen=True)
class RemotePrune:
    """One destination's part of an off-site rotation."""

    destination: str = ""
    deleted: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()
    error: str | None = None
    dry_run: bool = False
    kept: tuple[str, ...] = field(default=(), repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None and not self.refused


def run_remote_prune(ctx: Context, keep_for, backup_name: str | None = None, dry_run: bool = False,
                     images_keep: int | None = None,
                     destinations: Iterable[str] | None = None) -> tuple[RemotePrune, ...]:
    """Apply the local rotation rules to each destination's listing (archive names carry
    the dates); one result per destination, in configured order. `keep_for(backup_name)`
    gives a target's Keep, or None to leave it alone; `destinations` limits it to those
    names (default: every one)."""
    wanted = None if destinations is None else set(destinations)
    return tuple(_remote_prune(ctx, d, keep_for, backup_name, dry_run, images_keep)
                 for d in ctx.destinations if wanted is None or d.name in wanted)


def _remote_prune(ctx: Context, destination: Destination, keep_for, backup_name: str | None, dry_run: bool,
                  images_keep: int | None) -> RemotePrune:
    name = destination.name
    try:
        listing = destination.list()
    except DestinationError as err:
        _mark_down(ctx, destination, err)
        logger.error("off-site rotation skipped: the store cannot be listed",
                     extra={"phase": "prune", "destination": name, "error": str(err)})
        return RemotePrune(name, error=str(err))
    deleted, refused = _archive_deletions(listing, keep_for, backup_name, name)
    if images_keep is not None:
        deleted += _image_deletions([o for o in listing if _in_folder(o.relpath, IMAGE_FOLDER)], images_keep)
    for rel in deleted:
        logger.info("would delete off-site copy (dry run)" if dry_run else "off-site copy deleted",
                    extra={"phase": "prune", "destination": name, "key": destination.key(rel), "dry_run": dry_run})
    if deleted and not dry_run:
        try:
            destination.delete(deleted)
        except DestinationError as err:
            _mark_down(ctx, destination, err)
            logger.error("off-site prune failed", extra={"phase": "prune", "destination": name, "error": str(err)})
            return RemotePrune(name, error=str(err), refused=tuple(refused))
        copy_index(ctx, destination).forget(deleted)
    return RemotePrune(name, tuple(deleted), tuple(refused), dry_run=dry_run)


def _archive_deletions(listing: list[RemoteObject], keep_for, backup_name: str | None,
                       destination: str) -> tuple[list[str], list[str]]:
    """(relpaths to delete, targets whose rotation was refused) by the local rules."""
    archives = [o for o in listing if (n := parse_name(o.relpath.rsplit("/", 1)[-1])) is not None
                and _in_folder(o.relpath, n.frequency.value) and (backup_name is None or n.backup_name == backup_name)]
    deleted: list[str] = []
    refused: list[str] = []
    by_backup_name: dict[str, list[RemoteObject]] = {}
    for obj in archives:
        by_backup_name.setdefault(parse_name(obj.relpath.rsplit("/", 1)[-1]).backup_name, []).append(obj)
    for name, objects in sorted(by_backup_name.items()):
        keep: Keep | None = keep_for(name)
        if keep is None:
            continue
        try:
            plan = plan_prune(objects, lambda o: parse_name(o.relpath.rsplit("/", 1)[-1]), lambda _s: keep)
        except PruneRefused as err:
            refused.append(name)
            logger.error("off-site prune refused", extra={"target": name, "phase": "prune",
                                                          "destination": destination, "error": str(err)})
            continue
        deleted += [o.relpath for o in plan.delete]
    return deleted, refused


def _in_folder(relpath: str, folder: str) -> bool:
    """`relpath` is a file right in `folder` ("daily/NAME"), not deeper: a single host's
    rotation sees nodes' folders ("NODE/daily/NAME") in its listing and must leave them alone."""
    return relpath.split("/")[:-1] == [folder]


def _image_deletions(objects: list[RemoteObject], keep: int) -> list[str]:
    named = [(o.relpath, parse_image_name(o.relpath.rsplit("/", 1)[-1])) for o in objects]
    return select_image_prune([(rel, n) for rel, n in named if n is not None], keep)
