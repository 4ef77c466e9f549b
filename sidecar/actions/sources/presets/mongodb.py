"""The `mongodb` preset: `mongodump --archive` in the target (one consistent-per-collection
stream, `--oplog` is for replica sets and not used), restored with `mongorestore --archive`
(`--drop` with --force). Credentials from the container's own environment, read in the
container: user `backup.preset.user`, else `MONGO_INITDB_ROOT_USERNAME`; password from
`MONGO_INITDB_ROOT_PASSWORD_FILE`'s contents, else `MONGO_INITDB_ROOT_PASSWORD`, handed to
the tool in a `--config` file on a file descriptor (never an argument, never on disk).
MongoDB has no Debian package here: this preset is tested against stand-in tools only."""

from __future__ import annotations

import logging

from ....core.errors import RestoreError
from ....core.model import ContainerInfo, Target
from ....core.presetnames import dump_type
from ...context import Context
from ..base import RestoreOutcome, RestoreRequest
from .dump import (
    DumpCommand, ask, dump_capture, feed_dump, in_shell, needs_quiesce, one_archive, preset_user, restoring,
)

logger = logging.getLogger(__name__)

NAME = "mongodb"
ITEM = dump_type(NAME)
describe = one_archive(ITEM)
_ARCHIVE_MAGIC = bytes.fromhex("6de29981")  # mongodump's archive format starts with it

# $1: the tool, then its arguments. Credentials go through a config file on fd 3.
_PROLOGUE = (
    'command -v "$1" >/dev/null 2>&1 || { echo "$1: not found in the container (PATH=$PATH)" >&2; exit 127; }; '
    'u="${PRESET_USER:-${MONGO_INITDB_ROOT_USERNAME:-}}"; unset PRESET_USER; '
    'if [ -n "${MONGO_INITDB_ROOT_PASSWORD_FILE:-}" ]; then p="$(cat "$MONGO_INITDB_ROOT_PASSWORD_FILE")" || exit 1; '
    'else p="${MONGO_INITDB_ROOT_PASSWORD:-}"; fi; '
    'if [ -n "$u" ]; then tool=$1; shift; p=$(printf "%s" "$p" | sed \'s/\\\\/\\\\\\\\/g; s/"/\\\\"/g\'); '
    'exec "$tool" --username "$u" --authenticationDatabase admin --config /dev/fd/3 "$@" 3<<EOF\n'
    'password: "$p"\nEOF\nfi; exec "$@"'
)
_argv = in_shell(_PROLOGUE)
_DATA_QUERY = ("db.adminCommand({listDatabases: 1}).databases.filter(d => !['admin', 'config', 'local']"
               ".includes(d.name)).length")


def dump_command(target: Target) -> DumpCommand:
    database = target.config.preset_database
    return DumpCommand(_argv("mongodump", "--archive", *(("--db", database) if database else ())),
                       f"{database or 'all'}.mongoarchive", "mongodump", preset_user(target), _archive)


def _archive(head: bytes, tail: bytes) -> str | None:
    return None if head.startswith(_ARCHIVE_MAGIC) else "the output is no mongodump archive (bad magic number)"


capture = dump_capture(ITEM, dump_command)


def restore(ctx: Context, request: RestoreRequest) -> RestoreOutcome:
    with restoring(ctx, request, ITEM, "the mongodb preset restores through the running server's own client") as r:
        if not request.force:
            _refuse_if_data(ctx, request.container, r.fields)
        feed_dump(ctx, r, _argv("mongorestore", "--archive", *(("--drop",) if request.force else ())), "mongorestore")
    return r.outcome()


def _refuse_if_data(ctx: Context, container: ContainerInfo, fields: dict) -> None:
    out = ask(ctx, container, _argv("mongosh", "--quiet", "--eval", _DATA_QUERY), fields,
              unreachable=f"cannot look into the server of {container.name}", failed="mongosh")
    if out.splitlines()[-1:] != ["0"]:
        raise RestoreError(f"the server in {container.name} holds databases of its own ({out[-50:]}); use --force "
                           "to replace them (mongorestore --drop)")
