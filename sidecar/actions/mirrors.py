"""Staging mirrors nobody uses any more: removed once their target volume is gone for
longer than its retention (issue 20).

A mirror (readers/mirror.py) belongs to one target volume. When no target volume of this
scope uses it (the target or the volume was removed), `plan` lists it as an UNUSED MIRROR;
once its last pass is older than the retention of its target (the target's backup.keep
when it still exists, BACKUP_KEEP for a target that is gone: discovery.keep_for), it is
removed, with one log line. A target skipped for bad labels (keep unknown) keeps its mirrors.

The mirror's copy is root's (vault/, 0700): a sidecar that is not root removes it through
a worker container (`rm -rf`, root with DAC_OVERRIDE, on the backup volume only).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..core.errors import BackupBusy, SidecarError
from ..core.model import WorkerSpec
from ..readers import READERS
from ..readers.mirror import kept_mirrors, mirror_bytes, mirror_updated
from ..readers.worker import NAME as WORKER
from ..readers.worker import STORE_LABEL, TARGET_LABEL
from ..core.retention import Keep
from .context import Context

logger = logging.getLogger(__name__)

REMOVE_TIMEOUT = 600.0


@dataclass(frozen=True)
class StaleMirror:
    target: str
    volume: str
    folder: Path
    mirror_bytes: int | None
    updated: float | None  # its last pass (a Unix time; None: none finished, the folder's mtime used)
    remove_after: float | None  # a Unix time; None: never (its keep is unknown)

    def due(self, now: float) -> bool:
        return self.remove_after is not None and now >= self.remove_after


def unused(ctx: Context, used: set[tuple[str, str]], keep_for: Callable[[str], Keep | None]) -> list[StaleMirror]:
    """Every mirror on the backup volume no (target, volume) in `used` uses, with when it goes."""
    found = []
    for target, volume, folder in kept_mirrors(ctx.store.state_dir):
        if (target, volume) in used:
            continue
        updated = mirror_updated(folder)
        since = updated
        if since is None:
            try:
                since = folder.stat().st_mtime
            except OSError:
                continue
        keep = keep_for(target)
        found.append(StaleMirror(target, volume, folder, mirror_bytes(folder), updated,
                                 since + keep.reach_seconds() if keep is not None else None))
    return found


def used_volumes(targets: Iterable) -> set[tuple[str, str]]:
    """(backup_name, volume_name) of every volume `targets` (discovery's) archive."""
    return {(t.backup_name, v.volume_name) for t in targets for v in t.volumes}


def remove_stale_mirrors(ctx: Context, used: set[tuple[str, str]], keep_for: Callable[[str], Keep | None],
                         now: float | None = None) -> list[StaleMirror]:
    """Remove the unused mirrors whose time has come; returns those removed. A mirror
    whose target's lock is held (a backup of a target of that name runs) is left for later.
    Never raises: a mirror that cannot be removed is logged and stays (plan still lists it)."""
    now = time.time() if now is None else now
    removed = []
    for mirror in unused(ctx, used, keep_for):
        if not mirror.due(now):
            continue
        fields = {"target": mirror.target, "volume": mirror.volume, "path": str(mirror.folder),
                  "bytes": mirror.mirror_bytes, "phase": "prune",
                  "last_pass": datetime.fromtimestamp(mirror.updated, ctx.settings.tz).isoformat()
                  if mirror.updated is not None else None}
        try:
            with ctx.store.target_lock(mirror.target):
                _remove_folder(ctx, mirror.folder)
        except BackupBusy:
            continue
        except (SidecarError, OSError) as exc:
            logger.error("unused staging mirror could not be removed", extra={**fields, "error": str(exc)})
            continue
        logger.info("unused staging mirror removed: its target volume is gone for longer than its retention",
                    extra=fields)
        removed.append(mirror)
    return removed


def _remove_here(folder: Path) -> None:
    shutil.rmtree(folder)


def _remove(ctx: Context, folder: Path) -> None:
    try:
        _remove_here(folder)
        return
    except PermissionError:  # the vault is root's: a worker removes what this process cannot
        pass
    site, why = READERS[WORKER].site(ctx.engine, ctx.worker_settings)
    if site is None:
        raise SidecarError(f"{folder} is root's and no worker container can run to remove it ({why})")
    spec = WorkerSpec(site.image, ("rm", "-rf", "--one-file-system", site.store.inside(folder)), "mirror-remove",
                      (site.store.mount,), labels={STORE_LABEL: site.store.key, TARGET_LABEL: folder.parent.name},
                      user="0", capabilities=("DAC_OVERRIDE",), timeout=REMOVE_TIMEOUT)
    result = ctx.engine.run_worker(spec, lambda line: False)
    if folder.exists():  # judged by the folder: what the worker was for
        raise SidecarError(f"the worker removing {folder} failed (exit {result.exit_code}): "
                           f"{' | '.join(result.tail[-3:]) or 'no output'}")


def _remove_folder(ctx: Context, folder: Path) -> None:
    if not folder.is_dir():  # removed meanwhile (another thread's look at the same list)
        return
    _remove(ctx, folder)
    try:
        folder.parent.rmdir()  # mirror/<target>/, once its last volume's mirror is gone
    except OSError:
        pass
