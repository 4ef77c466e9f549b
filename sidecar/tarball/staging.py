"""A volume's restore in one pass (issue 19's speed target): the checked extractor writes the
archive ONCE into a staging folder inside the volume's root (same filesystem), and only when
the whole archive was accepted and written does `swap` put it in place by renames.

    staging = make_staging(into)          # .backup-sidecar-restore-<random>, 0700
    summary = extract(archive, staging)   # every check of the writer; raises on a refusal
    swap(into, staging.name, summary.root)

Before the swap the volume holds its old entries untouched (plus the hidden staging folder,
which `remove` takes away on any refusal or error). `swap` makes the staged data durable
(syncfs), renames the old top-level entries into a second hidden folder, renames the staged
ones into place, removes the old ones, gives the root the archive's root entry (owner, mode,
xattrs, times) and syncs again. A swap that fails midway raises SwapFailed naming where the old
and the new entries are: the caller must not start the app on that volume.

Every step is relative to directory descriptors opened without following symlinks: nothing
in the volume can redirect a rename or a removal outside it. A volume with nested mounts is
not restored this way (a rename cannot cross filesystems); see sidecar/readers/unpack.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import secrets
import shutil
import stat
from pathlib import Path

from ..core.errors import SidecarError
from .extract import DirectoryWriter, Member

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".backup-sidecar-restore-"
ASIDE_PREFIX = ".backup-sidecar-old-"
# What a full volume says while staging: the volume cannot hold the old and the new at once
# (EFBIG: a sparse file larger than the filesystem allows).
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class SwapFailed(SidecarError):
    """The swap stopped midway: the volume holds part of the old and part of the new tree."""


def make_staging(into: Path, prefix: str = STAGING_PREFIX) -> Path:
    """A new folder in `into` with a name no archive chose (a random part), mode 0700."""
    with _opened(into) as fd:
        name = prefix + secrets.token_hex(8)
        os.mkdir(name, 0o700, dir_fd=fd)
        os.chmod(name, 0o700, dir_fd=fd, follow_symlinks=False)  # whatever the umask
    return into / name


def remove(into: Path, name: str) -> None:
    """Remove the folder `name` of `into` and everything in it (symlinks in it removed, never
    followed); nothing when it is not there."""
    with _opened(into) as fd:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=fd)
            return
        shutil.rmtree(name, dir_fd=fd)


def empty(into: Path) -> None:
    """Remove everything in `into`, dot files included (the two-pass path's emptying, done by
    the worker itself when it sees only that volume)."""
    with _opened(into) as fd:
        names = os.listdir(fd)
    for name in names:
        remove(into, name)


def sync(into: Path) -> None:
    """Make what was written on `into`'s filesystem durable: syncfs on it (os.sync where the
    C library has none)."""
    with _opened(into) as fd:
        syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
        if syncfs is None or syncfs(fd) != 0:
            os.sync()


def swap(into: Path, staging: str, root: Member | None) -> None:
    """Put the staged tree (`into`/`staging`) in place of `into`'s other entries, `root`
    (the archive's root entry, None: `into` keeps its owner, mode and times) applied to
    `into` itself. Raises SwapFailed when it stops once the first entry moved."""
    sync(into)  # the new data durable before the old goes
    with _opened(into) as top:
        before = os.fstat(top)
        aside = make_staging(into, ASIDE_PREFIX).name
        moved = False
        try:
            with _opened(into / aside) as old, _opened(into / staging) as new:
                for name in os.listdir(top):
                    if name not in (staging, aside):
                        os.rename(name, name, src_dir_fd=top, dst_dir_fd=old)
                        moved = True
                for name in os.listdir(new):
                    os.rename(name, name, src_dir_fd=new, dst_dir_fd=top)
                    moved = True
            os.rmdir(staging, dir_fd=top)
            remove(into, aside)
            if root is not None:
                DirectoryWriter(into).apply_folder(top, root)
            else:  # the renames changed its times: put them back
                os.utime(top, ns=(before.st_atime_ns, before.st_mtime_ns))
        except OSError as exc:
            if not moved:
                with contextlib.suppress(OSError):
                    os.rmdir(aside, dir_fd=top)
                raise
            raise SwapFailed(
                f"swapping the restored tree into {into} failed midway ({exc}): the old entries moved aside are in "
                f"{into / aside}, the new ones not yet moved in are in {into / staging}") from exc
    sync(into)


@contextlib.contextmanager
def _opened(path: Path):
    fd = os.open(path, _DIR_FLAGS)
    try:
        yield fd
    finally:
        os.close(fd)
