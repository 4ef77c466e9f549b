"""The `postgres` preset: PostgreSQL's own dump, taken in the target with its own
(version-matched) client while the server runs: `pg_dumpall --clean --if-exists` (plain
SQL, roles and every database), or `pg_dump -Fc` of `backup.preset.database`. Restore
feeds it back through `psql` or `pg_restore --clean --if-exists --create`.

Credentials never pass through the sidecar: a small shell prologue in the container reads
them from the container's own environment (`PGUSER`, else `POSTGRES_USER`, else
`postgres`; `PGPASSWORD`, else `POSTGRES_PASSWORD_FILE`'s contents, else
`POSTGRES_PASSWORD`), so nothing secret is in an argument, a label or a log line. The
label `backup.preset.user` sets the role."""

from __future__ import annotations

import logging
import re

from ....core.errors import RestoreError, SidecarError
from ....core.model import Target
from ....core.presetnames import dump_type
from ...context import Context
from ..base import RestoreOutcome, RestoreRequest
from .dump import (
    DumpCommand, dump_capture, feed_dump, in_shell, needs_quiesce, one_archive, preset_user, restoring,
)

logger = logging.getLogger(__name__)

NAME = "postgres"
ITEM = dump_type(NAME)
describe = one_archive(ITEM)

# $1...: the tool and its arguments. The password is exported only when one is found.
_PROLOGUE = (
    'PGUSER="${PRESET_USER:-${PGUSER:-${POSTGRES_USER:-postgres}}}"; export PGUSER; unset PRESET_USER; '
    'if [ -z "${PGPASSWORD:-}" ]; then '
    'if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then PGPASSWORD="$(cat "$POSTGRES_PASSWORD_FILE")" || exit 1; '
    'else PGPASSWORD="${POSTGRES_PASSWORD:-}"; fi; fi; '
    '[ -n "$PGPASSWORD" ] && export PGPASSWORD || unset PGPASSWORD; '
    'command -v "$1" >/dev/null 2>&1 || { echo "$1: not found in the container (PATH=$PATH)" >&2; exit 127; }; '
    'exec "$@"'
)
_argv = in_shell(_PROLOGUE)
_DUMPALL_END = b"PostgreSQL database cluster dump complete"
# Databases besides postgres and the templates, plus tables in postgres itself.
_DATA_QUERY = ("SELECT (SELECT count(*) FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1'))"
               " + (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN "
               "('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%')")
# What psql says about pg_dumpall's own role, which a new cluster has already: not an error of the restore.
_EXPECTED = re.compile(r'ERROR:\s+(current user cannot be dropped|role "[^"]+" already exists)')


def dump_command(target: Target) -> DumpCommand:
    database = target.config.preset_database
    if database:
        return DumpCommand(_argv("pg_dump", "-Fc", "--dbname", database), f"{database}.pgdump", "pg_dump",
                           preset_user(target), _custom_format)
    return DumpCommand(_argv("pg_dumpall", "--clean", "--if-exists"), "pg_dumpall.sql", "pg_dumpall",
                       preset_user(target), _dumpall_complete)


def _dumpall_complete(head: bytes, tail: bytes) -> str | None:
    if _DUMPALL_END not in tail:
        return "the dump does not end with pg_dumpall's last line (truncated)"
    return None


def _custom_format(head: bytes, tail: bytes) -> str | None:
    if not head.startswith(b"PGDMP"):
        return "the output is not pg_dump's custom format (no PGDMP header)"
    return None


capture = dump_capture(ITEM, dump_command)


# --- restore ------------------------------------------------------------------------------

def restore(ctx: Context, request: RestoreRequest) -> RestoreOutcome:
    """Check the archive, check that the server holds no data of its own (or --force), then
    feed the dump to `psql` / `pg_restore` in the running container. Nothing is stopped."""
    container, path = request.container, request.archive
    with restoring(ctx, request, request.item,
                   "the postgres preset restores through the running server's own client") as r:
        fields = r.fields
        file = r.dump.file
        database = file.removesuffix(".pgdump") if file.endswith(".pgdump") else None
        if database is not None and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_$.-]{0,62}", database):
            raise RestoreError(f"{path.name}: {database!r} is not a database name this preset writes")
        _refuse_if_data(ctx, request, fields)
        if database is not None and request.force:  # its sessions would keep DROP DATABASE from running
            _query(ctx, container.id, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                   f"WHERE datname = '{database}' AND pid <> pg_backend_pid()", fields)
        tool = ("pg_restore", "--clean", "--if-exists", "--create", "--dbname", "postgres") if database else \
            ("psql", "-X", "-q", "-d", "postgres")
        logger.info("restoring through the server's client", extra={**fields, "tool": tool[0]})
        result = feed_dump(ctx, r, _argv(*tool), tool[0])
    errors = [line for line in result.tail if "ERROR" in line and not _EXPECTED.search(line)]
    if errors:  # pg_dumpall's own roles exist already in a new cluster: reported, not fatal
        logger.warning("the client reported errors while restoring", extra={**fields, "errors": errors[-10:]})
    return r.outcome()


def _query(ctx: Context, container_id: str, sql: str, fields: dict) -> str:
    stream = ctx.engine.exec_stream(container_id, list(_argv("psql", "-XAtq", "-d", "postgres", "-c", sql)),
                                    timeout=60, fields=fields)
    out = b"".join(stream)
    result = stream.result()
    if not result.ok:
        raise RestoreError(f"psql {result.describe()}")
    return out.decode("utf-8", "replace").strip()


def _refuse_if_data(ctx: Context, request: RestoreRequest, fields: dict) -> None:
    """Without --force, the server must hold no database besides postgres and the templates."""
    if request.force:
        return
    try:
        count = _query(ctx, request.container.id, _DATA_QUERY, fields)
    except SidecarError as err:
        raise RestoreError(f"cannot look into the server of {request.container.name}: {err}") from err
    if count != "0":
        raise RestoreError(f"the server in {request.container.name} holds data already ({count} databases or tables "
                           "of its own); use --force to replace them with the dump's")
