"""The `redis` preset: a fresh RDB snapshot taken by the server itself (`BGSAVE`, then
waiting for its end: `LASTSAVE` moved, else the save failed; see _SNAPSHOT), streamed out of the target
with `cat` (the RDB is written to a temporary file and renamed by Redis, so the file read is
always one whole snapshot). Password: `REDISCLI_AUTH`, else `REDIS_PASSWORD` of the
container's environment, read in the container.

Restore asks the running server where its RDB lives (`CONFIG GET dir`, `dbfilename`) and
refuses when append-only persistence is on (the server would load its AOF, not the RDB) or
when it holds keys (unless --force); then stops the container (Redis writes its own RDB on
shutdown), puts the RDB in place and starts it again, on every path out."""

from __future__ import annotations

import logging
import tarfile
import time
from pathlib import PurePosixPath
from typing import Iterator

from ....core.errors import RestoreError, SidecarError
from ....core.model import ContainerInfo, Target
from ....core.presetnames import dump_type
from ...context import Context
from ...interrupt import Interruption, InterruptionKind
from ..base import RestoreOutcome, RestoreRequest
from .dump import (
    DumpCommand, Restoring, ask, dump_capture, left_stopped, needs_quiesce, one_archive, restoring,
)

logger = logging.getLogger(__name__)

NAME = "redis"
ITEM = dump_type(NAME)
describe = one_archive(ITEM)

_CLI = ('command -v redis-cli >/dev/null 2>&1 || { echo "redis-cli: not found in the container" >&2; exit 127; }; '
        '[ -n "${REDISCLI_AUTH:-}" ] || REDISCLI_AUTH="${REDIS_PASSWORD:-}"; '
        '[ -n "$REDISCLI_AUTH" ] && export REDISCLI_AUTH || unset REDISCLI_AUTH; '
        'cli() { out=$(redis-cli --raw "$@" 2>&1) && case "$out" in *ERR*|*NOAUTH*|*WRONGPASS*|*"Could not connect"*) '
        'echo "redis-cli $1: $out" >&2; return 1;; esac && printf "%s\\n" "$out" || { echo "redis-cli $1: $out" >&2; '
        'return 1; }; }; ')
# Prints the RDB on stdout once a BGSAVE started now has finished well. LASTSAVE is the time
# (whole seconds) of the last *successful* save, so: a save already running (the server's own
# `save` rules, someone's BGSAVE) is waited for and the BGSAVE retried, never taken for ours;
# a save finishing in the second of the last one would not move LASTSAVE, so the first waits
# for the next second; and a BGSAVE that fails leaves LASTSAVE as it was: its end (no save in
# progress, LASTSAVE unmoved) is the failure, with the server's status, not an endless wait.
_SNAPSHOT = _CLI + (
    'busy() { cli INFO persistence | grep -Eq "(rdb_bgsave|aof_rewrite)_in_progress:1"; }; '
    'while :; do '
    'while busy; do sleep 0.2; done; '
    'before=$(cli LASTSAVE) && now=$(cli TIME | sed -n 1p) || exit 1; '
    '[ "$before" -lt "$now" ] || sleep 1; '
    'out=$(cli BGSAVE 2>&1) && break; '
    'case "$out" in *"in progress"*|*"Another child"*) ;; *) echo "$out" >&2; exit 1;; esac; '
    'done; '
    'while :; do '
    'info=$(cli INFO persistence) && last=$(cli LASTSAVE) || exit 1; '
    '[ "$last" != "$before" ] && break; '
    'case "$info" in *"rdb_bgsave_in_progress:1"*) sleep 0.2;; *) echo "BGSAVE failed: $(printf "%s\\n" "$info" '
    '| grep rdb_last_bgsave_status | tr -d "\\r") (the server\x27s log says why)" >&2; exit 1;; esac; '
    'done; '
    'cli INFO persistence | grep -q "rdb_last_bgsave_status:ok" || { echo "BGSAVE failed: $(cli INFO persistence '
    '| grep rdb_last_bgsave_status | tr -d "\\r")" >&2; exit 1; }; '
    'dir=$(cli CONFIG GET dir | sed -n 2p) && file=$(cli CONFIG GET dbfilename | sed -n 2p) || exit 1; '
    'exec cat "$dir/$file"')
# One line: dir|dbfilename|appendonly|dbsize|uid:gid of the RDB (else of its folder).
_WHERE = _CLI + ('d=$(cli CONFIG GET dir | sed -n 2p); f=$(cli CONFIG GET dbfilename | sed -n 2p); '
                 'o=$(stat -c %u:%g "$d/$f" 2>/dev/null || stat -c %u:%g "$d"); '
                 'echo "$d|$f|$(cli CONFIG GET appendonly | sed -n 2p)|$(cli DBSIZE)|$o"')


def dump_command(target: Target) -> DumpCommand:
    return DumpCommand(("sh", "-c", _SNAPSHOT), "dump.rdb", "redis BGSAVE", (), _rdb)


def _rdb(head: bytes, tail: bytes) -> str | None:
    return None if head.startswith(b"REDIS") else "the file read is no RDB (no REDIS header)"


capture = dump_capture(ITEM, dump_command)


def restore(ctx: Context, request: RestoreRequest) -> RestoreOutcome:
    container, path = request.container, request.archive
    with restoring(ctx, request, ITEM, "the redis preset asks the server where its RDB lives") as r:
        folder, file, owner = _where(ctx, r.container, request.force, r.fields)
        with Interruption(ctx, r.container, InterruptionKind.STOPPED, request.backup_name,
                          request.stop_timeout) as stop:
            logger.info("restoring the RDB", extra={**r.fields, "path": f"{folder}/{file}"})
            try:
                ctx.engine.put_archive(container.id, folder, _single(file, owner, r))
            except SidecarError as err:  # the RDB may be half written
                raise left_stopped(stop, container.name, ITEM, f"WRITING {folder}/{file}", err) from err
    return r.outcome(stop.seconds)


def _where(ctx: Context, container: ContainerInfo, force: bool, fields: dict) -> tuple[str, str, tuple[int, int]]:
    out = ask(ctx, container, ["sh", "-c", _WHERE], fields, unreachable=f"cannot ask the server in {container.name}",
              failed=f"asking the server in {container.name} failed:", well_formed=lambda out: out.count("|") == 4)
    folder, file, appendonly, keys, owner = out.split("|")
    if appendonly.strip() == "yes":
        raise RestoreError(f"{container.name} has appendonly yes: Redis would load its AOF, not the RDB; turn it off "
                           "for the restore (and on again after)")
    if not force and keys.strip() not in ("", "0"):
        raise RestoreError(f"the server in {container.name} holds {keys} keys; use --force to replace them")
    if not folder.startswith("/") or "/" in file or not file:
        raise RestoreError(f"the server in {container.name} reports an unusable RDB path {folder!r}/{file!r}")
    uid, _, gid = owner.strip().partition(":")
    return folder, file, (int(uid) if uid.isdigit() else 0, int(gid) if gid.isdigit() else 0)


def _single(file: str, owner: tuple[int, int], r: Restoring) -> Iterator[bytes]:
    """A one-member tar of the RDB for put_archive, owned as the file it replaces (its size
    is what the worker's check counted; the worker streams the bytes: readers/unpack.py)."""
    data_size = r.dump.size
    info = tarfile.TarInfo(PurePosixPath(file).name)
    info.size, info.mode, info.mtime = data_size, 0o600, int(time.time())
    info.uid, info.gid = owner
    yield info.tobuf(format=tarfile.PAX_FORMAT)
    yield from r.dump.data()
    if data_size % tarfile.BLOCKSIZE:
        yield b"\0" * (tarfile.BLOCKSIZE - data_size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)
