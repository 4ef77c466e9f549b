"""The off-site copy: every finished archive on the backup volume is copied to S3 under
the same relative path, verified, and rotated there by the same rules as locally.

It is a sync, not fire-and-forget: each cycle compares what is on the backup volume with
what the store holds and sends what is missing, so an outage heals on the next cycle
(after the next backup, or the daemon's periodic sync). A failed upload never touches
the local archive. Promoted copies (weekly/, monthly/ hard links) become server-side
copies of the object already uploaded, not second uploads.

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

from ..archive import ArchiveWriter, iter_raw, read_checksum
from ..errors import ChecksumMismatch, RemoteError, SidecarError
from ..model import Compression
from ..naming import ENCRYPTED_SUFFIX, PARTIAL_SUFFIX, parse_image_name, parse_name
from ..remote import RemoteObject, RemoteStore
from ..retention import Keep, PruneRefused, plan_prune, select_image_prune
from ..storage import RemoteEntry, RemoteIndex
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
    uploaded: tuple[str, ...] = ()
    copied: tuple[str, ...] = ()
    verified: tuple[str, ...] = ()  # found on the store and checked
    failed: tuple[tuple[str, str], ...] = ()  # (relpath, error)
    pending: tuple[str, ...] = ()  # not tried: the store was unreachable
    error: str | None = None
    skipped: bool = False  # no store configured, or another sync was running

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failed and not self.pending


def remote_index(ctx: Context) -> RemoteIndex:
    return RemoteIndex(ctx.store.state_dir / "remote.json")


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


def run_sync(ctx: Context) -> SyncResult:
    remote = ctx.remote
    if remote is None:
        return SyncResult(skipped=True)
    if not _SYNC_LOCK.acquire(blocking=False):
        return SyncResult(skipped=True, error="another sync is running")
    try:
        ctx.store.prepare()
        with ctx.store.target_lock(".sync"):
            return _sync(ctx, remote)
    except SidecarError as err:  # BackupBusy from another process's sync
        return SyncResult(skipped=True, error=str(err))
    finally:
        _SYNC_LOCK.release()


def _sync(ctx: Context, remote: RemoteStore) -> SyncResult:
    started = time.monotonic()
    index = remote_index(ctx)
    try:
        listing = {o.relpath: o for o in remote.list()}
    except RemoteError as err:
        pending = tuple(i.relpath for i in local_items(ctx) if remote_relpath(ctx, i.relpath) not in index.entries())
        logger.error("off-site copy failed: the store cannot be listed; retrying on the next cycle",
                     extra={"phase": "upload", "error": str(err), "pending": len(pending)})
        return SyncResult(pending=pending, error=str(err))
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
        fields = {"phase": "upload", "path": item.relpath, "key": remote.key(rel)}
        try:
            if rel in listing and entry is None and rel == item.relpath:
                # On the store but not in our index (a new backup volume, a lost index): check it.
                head = remote.head(rel)
                if head is not None and head.sha256 == item.sha256:
                    index.record(_entry(rel, item, head))
                    verified.append(item.relpath)
                    continue
            twin = by_local_sha.get(item.sha256)
            if twin is not None and twin.relpath in listing:
                obj = remote.copy(twin.relpath, rel)  # a promoted hard link: server-side copy
                copied.append(item.relpath)
            else:
                obj = _upload(ctx, remote, item, rel)
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
        except RemoteError as err:
            failed.append((item.relpath, str(err)))
            logger.error("off-site copy failed; the local archive is kept and the upload is retried on the "
                         "next cycle", extra={**fields, "error": str(err)})
            if _unreachable(err):
                pending = tuple(i.relpath for i in items[position + 1:]
                                if remote_relpath(ctx, i.relpath) not in known)
                return SyncResult(tuple(uploaded), tuple(copied), tuple(verified), tuple(failed), pending, str(err))
    result = SyncResult(tuple(uploaded), tuple(copied), tuple(verified), tuple(failed))
    if uploaded or copied or failed:
        logger.info("sync finished", extra={"phase": "upload", "uploaded": len(uploaded), "copied": len(copied),
                                            "failed": len(failed), "seconds": round(time.monotonic() - started, 3)})
    return result


def _unreachable(err: RemoteError) -> bool:
    text = str(err).lower()
    return any(s in text for s in ("could not connect", "connect timeout", "connection", "timed out",
                                   "endpoint url", "failed after"))


def _entry(rel: str, item: LocalItem, obj: RemoteObject) -> RemoteEntry:
    return RemoteEntry(rel, item.relpath, obj.sha256 or "", item.sha256, obj.size, time.time())


def _upload(ctx: Context, remote: RemoteStore, item: LocalItem, rel: str) -> RemoteObject:
    if rel == item.relpath:
        return remote.upload(item.path, rel, item.sha256)
    # Only the off-site copy is encrypted: encrypt into a temporary file (ciphertext only).
    temp_dir = ctx.store.state_dir / "outgoing"
    temp_dir.mkdir(mode=0o700, exist_ok=True)
    temp = temp_dir / Path(rel).name
    with contextlib.ExitStack() as stack:
        stack.callback(_unlink, temp)
        stack.callback(_unlink, temp.with_name(temp.name + ".sha256"))
        with ArchiveWriter(temp, Compression.NONE, 0o600, ctx.settings.encryption) as writer:
            writer.write_stream(iter_raw(item.path))
            result = writer.finish()
        return remote.upload(result.path, rel, result.sha256)


def _unlink(path: Path) -> None:
    for candidate in (path, path.with_name(path.name + PARTIAL_SUFFIX)):
        try:
            os.unlink(candidate)
        except FileNotFoundError:
            pass


# --- rotation on the store ---------------------------------------------------------------

@dataclass(frozen=True)
class RemotePrune:
    deleted: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()
    error: str | None = None
    dry_run: bool = False
    kept: tuple[str, ...] = field(default=(), repr=False)


def run_remote_prune(ctx: Context, keep_for, service: str | None = None, dry_run: bool = False,
                     images_keep: int | None = None) -> RemotePrune:
    """Apply the local rotation rules to the store's listing (archive names carry the
    dates). `keep_for(service)` gives a target's Keep, or None to leave it alone."""
    remote = ctx.remote
    if remote is None:
        return RemotePrune()
    try:
        listing = remote.list()
    except RemoteError as err:
        logger.error("off-site rotation skipped: the store cannot be listed", extra={"phase": "prune",
                                                                                      "error": str(err)})
        return RemotePrune(error=str(err))
    archives = [o for o in listing if (n := parse_name(o.relpath.rsplit("/", 1)[-1])) is not None
                and o.relpath.split("/", 1)[0] == n.frequency.value and (service is None or n.service == service)]
    deleted: list[str] = []
    refused: list[str] = []
    by_service: dict[str, list[RemoteObject]] = {}
    for obj in archives:
        by_service.setdefault(parse_name(obj.relpath.rsplit("/", 1)[-1]).service, []).append(obj)
    for name, objects in sorted(by_service.items()):
        keep: Keep | None = keep_for(name)
        if keep is None:
            continue
        try:
            plan = plan_prune(objects, lambda o: parse_name(o.relpath.rsplit("/", 1)[-1]), lambda _s: keep)
        except PruneRefused as err:
            refused.append(name)
            logger.error("off-site prune refused", extra={"target": name, "phase": "prune", "error": str(err)})
            continue
        deleted += [o.relpath for o in plan.delete]
    if images_keep is not None:
        deleted += _image_deletions([o for o in listing if o.relpath.startswith("images/")], images_keep)
    for rel in deleted:
        logger.info("would delete off-site copy (dry run)" if dry_run else "off-site copy deleted",
                    extra={"phase": "prune", "key": remote.key(rel), "dry_run": dry_run})
    if deleted and not dry_run:
        try:
            remote.delete(deleted)
        except RemoteError as err:
            logger.error("off-site prune failed", extra={"phase": "prune", "error": str(err)})
            return RemotePrune(error=str(err), refused=tuple(refused))
        remote_index(ctx).forget(deleted)
    return RemotePrune(tuple(deleted), tuple(refused), dry_run=dry_run)


def _image_deletions(objects: list[RemoteObject], keep: int) -> list[str]:
    named = [(o.relpath, parse_image_name(o.relpath.rsplit("/", 1)[-1])) for o in objects]
    return select_image_prune([(rel, n) for rel, n in named if n is not None], keep)
