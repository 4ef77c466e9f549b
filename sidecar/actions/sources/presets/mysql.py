"""The `mysql` preset (also `mariadb`, an alias in presetnames.ALIASES): the server's own dump tool in the target,
`mariadb-dump` when the image has it, else `mysqldump`, with `--single-transaction
--all-databases --routines --events` (or `--databases` of `backup.preset.database`): one
consistent snapshot of InnoDB tables without locking the app out. Restore feeds it to
`mariadb` / `mysql` in the running container.

Credentials never pass through the sidecar: a shell prologue in the container reads them
from the container's own environment: user `backup.preset.user`, else `root`; password
`MYSQL_PWD`, else the file of `MARIADB_ROOT_PASSWORD_FILE` / `MYSQL_ROOT_PASSWORD_FILE`, else
`MARIADB_ROOT_PASSWORD` / `MYSQL_ROOT_PASSWORD`, given to the client as `MYSQL_PWD` (never
an argument)."""

from __future__ import annotations

import logging
import re

from ....core.errors import RestoreError
from ....core.model import ContainerInfo, Target
from ....core.presetnames import dump_type
from ...context import Context
from ..base import RestoreOutcome, RestoreRequest
from .dump import (
    DumpCommand, ask, dump_capture, feed_dump, in_shell, needs_quiesce, one_archive, preset_user, restoring,
)

logger = logging.getLogger(__name__)

NAME = "mysql"
ITEM = dump_type(NAME)
describe = one_archive(ITEM)

# $1: "dump" or "client", then the tool's arguments.
_PROLOGUE = (
    'if command -v mariadb-dump >/dev/null 2>&1; then d=mariadb-dump; c=mariadb; '
    'elif command -v mysqldump >/dev/null 2>&1; then d=mysqldump; c=mysql; '
    'else echo "mysqldump/mariadb-dump: not found in the container (PATH=$PATH)" >&2; exit 127; fi; '
    'if [ -z "${MYSQL_PWD:-}" ]; then '
    'f="${MARIADB_ROOT_PASSWORD_FILE:-${MYSQL_ROOT_PASSWORD_FILE:-}}"; '
    'if [ -n "$f" ]; then MYSQL_PWD="$(cat "$f")" || exit 1; '
    'else MYSQL_PWD="${MARIADB_ROOT_PASSWORD:-${MYSQL_ROOT_PASSWORD:-}}"; fi; fi; '
    '[ -n "$MYSQL_PWD" ] && export MYSQL_PWD || unset MYSQL_PWD; '
    'u="${PRESET_USER:-root}"; unset PRESET_USER; '
    'if [ "$1" = dump ]; then b=$d; else b=$c; fi; shift; exec "$b" --user="$u" "$@"'
)
_argv = in_shell(_PROLOGUE)
_DUMP_END = b"-- Dump completed"
# Databases of its own that hold tables (a new server may have an empty `test`).
_DATA_QUERY = ("SELECT count(DISTINCT table_schema) FROM information_schema.tables WHERE table_schema NOT IN "
               "('mysql', 'information_schema', 'performance_schema', 'sys')")


def dump_command(target: Target) -> DumpCommand:
    database = target.config.preset_database
    scope = ("--databases", database) if database else ("--all-databases",)
    return DumpCommand(_argv("dump", "--single-transaction", "--routines", "--events", "--triggers", *scope),
                       f"{database or 'all-databases'}.sql", "mysqldump", preset_user(target), _complete)


def _complete(head: bytes, tail: bytes) -> str | None:
    if _DUMP_END not in tail:
        return "the dump does not end with the tool's 'Dump completed' line (truncated)"
    return None


capture = dump_capture(ITEM, dump_command)


def restore(ctx: Context, request: RestoreRequest) -> RestoreOutcome:
    """Check the archive and that the server holds no database of its own (or --force), then
    feed the dump to the client in the running container. Nothing is stopped."""
    with restoring(ctx, request, ITEM, "the mysql preset restores through the running server's own client") as r:
        if not request.force:
            _refuse_if_data(ctx, request.container, r.fields)
        feed_dump(ctx, r, _argv("client"), "the mysql client")
    return r.outcome()


def _refuse_if_data(ctx: Context, container: ContainerInfo, fields: dict) -> None:
    out = ask(ctx, container, _argv("client", "-N", "-B", "-e", _DATA_QUERY), fields,
              unreachable=f"cannot look into the server of {container.name}", failed="the mysql client")
    if not re.fullmatch(r"0", out):
        raise RestoreError(f"the server in {container.name} holds {out} database(s) with tables of its own already; use "
                           "--force to load the dump over them")
