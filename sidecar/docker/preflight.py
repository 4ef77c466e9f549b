"""The checks every command makes before it works: the Docker socket is there and this
process may use it, and BACKUP_DIR is a folder this process may read (and, for commands
that write, write and own). The image's entrypoint leaves them to the CLI, so the daemon,
every one-shot command and the CLI run on the host answer alike: one line naming the
setting, its value and the fix (PreflightError, exit 64), never a traceback.

Also the one-line wording of a BACKUP_DIR that fails during a run (full, read-only, not
ours): `describe_store_error`.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
import tempfile
from pathlib import Path

from sidecar.core.errors import ConfigError

DEFAULT_SOCKET = "/var/run/docker.sock"
SOCKET_MOUNT = f"-v {DEFAULT_SOCKET}:{DEFAULT_SOCKET}"
GUIDE = "docs/how-to/first-run.md"
# How deep the ownership check looks (as the entrypoint did): archives sit at depth 2, state at 2 to 3.
SCAN_DEPTH = 4
PROBE_PREFIX = ".backup-sidecar-write-test."


class PreflightError(ConfigError):
    """A setting the sidecar cannot work with, found before any work started."""


class Access(enum.Enum):
    """What a command does with BACKUP_DIR."""

    READ = "read"  # list, plan, restore-image: archives and state are read
    WRITE = "write"  # run, backup, restore, prune, sync: archives, journal, locks, indexes are written


def in_container() -> bool:
    return os.path.exists("/.dockerenv")


def socket_path(docker_host: str | None) -> tuple[str | None, str]:
    """(the unix socket's path or None for a remote engine, how the setting reads)."""
    if not docker_host:
        return DEFAULT_SOCKET, f"DOCKER_HOST unset (default unix://{DEFAULT_SOCKET})"
    if docker_host.startswith("unix://"):
        return docker_host[len("unix://"):], f"DOCKER_HOST={docker_host}"
    if docker_host.split("://", 1)[0] in ("tcp", "ssh", "http", "https") and docker_host.split("://", 1)[-1]:
        return None, f"DOCKER_HOST={docker_host}"  # a remote engine: connecting will tell
    raise PreflightError(f"DOCKER_HOST={docker_host} is not supported; expected unix:///path/to/docker.sock, "
                         "tcp://HOST:PORT or ssh://USER@HOST")


def check_docker_socket(docker_host: str | None) -> None:
    """The engine's unix socket exists, is a socket, and this process may read and write it."""
    path, setting = socket_path(docker_host)
    if path is None:
        return
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise PreflightError(f"{setting}: {path} does not exist; expected the Docker socket"
                             f"{' mounted, e.g. ' + SOCKET_MOUNT if in_container() else ' (is the engine running?)'}"
                             ) from None
    except PermissionError:
        raise PreflightError(f"{setting}: uid {os.getuid()} may not look up {path}; expected a socket path "
                             "this user can reach") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise PreflightError(f"{setting}: {path} is not a socket; expected the Docker engine's socket, e.g. "
                             f"{SOCKET_MOUNT}")
    if not os.access(path, os.R_OK | os.W_OK):
        raise PreflightError(socket_refused(setting, path, st))


def socket_refused(setting: str, path: str, st: os.stat_result) -> str:
    gid = st.st_gid
    groups = ",".join(str(g) for g in sorted({os.getgid(), *os.getgroups()}))
    who = f"uid {os.getuid()} (groups {groups}) may not use it (owner {st.st_uid}:{gid}, mode {stat.S_IMODE(st.st_mode):o})"
    if in_container():
        fix = (f"expected the socket's group on the container: Compose 'group_add: [\"{gid}\"]' (docker run "
               f"--group-add {gid}), or DOCKER_HOST=tcp://PROXY:2375 through a socket proxy")
    else:
        fix = f"expected this user in the socket's group {gid} (usermod -aG {gid} USER, then log in again), or root"
    return f"{setting}: {who}; {fix} ({GUIDE})"


def check_backup_dir(path: Path, access: Access) -> None:
    """BACKUP_DIR is a folder this process may use as `access` says: created when missing
    for a writing command; writable (not read-only, not full) and its contents ours for
    one; readable throughout (when it exists) for a reading one."""
    if not path.is_dir():
        if path.exists():
            raise PreflightError(f"BACKUP_DIR={path} is not a directory; expected a directory (mount a volume or "
                                 "host folder there)")
        if access is Access.READ:
            return  # nothing backed up yet: `list` says "no archives in BACKUP_DIR", `plan` "no backup yet"
        try:
            path.mkdir(parents=True, mode=0o700)
        except OSError as exc:
            raise PreflightError(f"BACKUP_DIR={path} does not exist and cannot be created ({exc.strerror}); "
                                 "expected a writable directory (mount a volume or host folder there)") from None
    if not os.access(path, os.R_OK | os.X_OK):
        raise PreflightError(not_ours(path, path))
    if access is Access.WRITE:
        _probe_write(path)
    stranger = first_stranger(path, access)
    if stranger is not None:
        raise PreflightError(not_ours(stranger, path))


def _probe_write(path: Path) -> None:
    # A name of its own: in containers every CLI is PID 1, and several may share BACKUP_DIR.
    try:
        fd, probe = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=path)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM) and path.stat().st_uid != os.getuid():
            raise PreflightError(not_ours(path, path)) from None
        raise PreflightError(describe_store_error(path, exc)) from None
    os.close(fd)
    os.unlink(probe)
    free = os.statvfs(path)
    if (free.f_bfree if os.getuid() == 0 else free.f_bavail) == 0:  # root may use the reserved blocks
        raise PreflightError(describe_store_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))))


def first_stranger(root: Path, access: Access) -> Path | None:
    """The first entry below `root` (to SCAN_DEPTH) this process cannot read, or (for
    WRITE) a folder it cannot write: what an older image that ran as root left."""
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return folder
        for entry in sorted(entries, key=lambda e: e.name):
            if depth == 0 and entry.name == "lost+found":
                continue
            is_dir = entry.is_dir(follow_symlinks=False)
            wanted = os.R_OK | (os.X_OK if is_dir else 0) | (os.W_OK if is_dir and access is Access.WRITE else 0)
            if not os.access(entry.path, wanted, follow_symlinks=False) and not entry.is_symlink():
                return Path(entry.path)
            if is_dir and depth + 1 < SCAN_DEPTH:
                stack.append((Path(entry.path), depth + 1))
    return None


def not_ours(path: Path, backup_dir: Path) -> str:
    try:
        st = os.stat(path)
        owner = f"belongs to uid {st.st_uid} (mode {stat.S_IMODE(st.st_mode):o})"
    except OSError:
        owner = "cannot be read"
    uid = os.getuid()
    if in_container():
        fix = (f"hand it over once with `chown -R {uid}:{uid} FOLDER` on the host, or `docker run --rm --user 0 "
               f"-v VOLUME_OR_FOLDER:{backup_dir} IMAGE true` (started as root, the entrypoint gives BACKUP_DIR to "
               f"uid {uid}, then drops to it)")
    else:
        fix = f"run as its owner, or hand it over with `chown -R {uid}:{os.getgid()} {backup_dir}`"
    return (f"BACKUP_DIR: {path} {owner} and the sidecar runs as uid {uid}; expected the backup folder to be its "
            f"own (an older image ran as root, or `docker run -v` created the host folder as root): {fix} ({GUIDE})")


# errno -> (what BACKUP_DIR is, what to do)
STORE_ERRORS = {
    errno.ENOSPC: ("is full", "expected free space: prune old archives (`backup-sidecar prune`), lower backup.keep, "
                              "or give the volume more room"),
    errno.EDQUOT: ("is over its quota", "expected room within the quota: prune old archives or raise the quota"),
    errno.EROFS: ("is on a read-only filesystem", "expected it mounted read-write (drop `:ro` from the mount)"),
    errno.EACCES: ("is not writable by this user", "expected a folder the sidecar's user may write (its own, mode "
                                                   "0700)"),
    errno.EPERM: ("is not writable by this user", "expected a folder the sidecar's user may write (its own, mode "
                                                  "0700)"),
}


def is_store_error(exc: BaseException, backup_dir: Path) -> bool:
    """An OSError of the kind STORE_ERRORS names, about a path in `backup_dir`."""
    if not isinstance(exc, OSError) or exc.errno not in STORE_ERRORS:
        return False
    name = exc.filename if exc.filename is not None else exc.filename2
    if name is None:
        return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # a write on an open file: no name
    try:
        return Path(os.fsdecode(name)).resolve().is_relative_to(backup_dir.resolve())
    except (OSError, ValueError):
        return False


def describe_store_error(backup_dir: Path, exc: OSError) -> str:
    """One line: BACKUP_DIR, what is wrong with it, where, and the fix."""
    what, fix = STORE_ERRORS.get(exc.errno, ("cannot be written", "expected a writable directory"))
    name = exc.filename if exc.filename is not None else None
    where = f" (writing {os.fsdecode(name)}: {exc.strerror})" if name and os.fsdecode(name) != str(backup_dir) \
        else f" ({exc.strerror})"
    return f"BACKUP_DIR={backup_dir} {what}{where}; {fix}"
