"""The `prometheus` preset: the TSDB snapshot API (`POST /api/v1/admin/tsdb/snapshot`, which
needs Prometheus started with `--web.enable-admin-api`), called from inside the target
(with its `wget`, `curl` or `python3`); the snapshot's folder is streamed out as a tar and
deleted, on every path out. The storage path comes from the server itself
(`/api/v1/status/flags`). `backup.preset.url` is not needed: the API is asked at
`http://localhost:9090` unless the container's `PROMETHEUS_URL` says otherwise.

Restore asks the running server for its storage path, refuses a TSDB holding blocks unless
--force, has an extract worker check the archive and the snapshot tar inside the dump (regular
files and folders only: it was made in the app's container), stops the container, empties the
storage folder (a helper container), writes the snapshot's blocks into it and starts it again,
on every path out. The engine's unpacker (`PUT /archive`) only ever gets the checked files and
folders, re-serialised by that worker with headers we write (extract.files_tar, `--stream
files`); the sidecar parses neither tar."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

from ....core.errors import RestoreError, SidecarError
from ....core.model import ContainerInfo, Target
from ....core.presetnames import dump_type
from ...context import Context
from ...interrupt import Interruption, InterruptionKind
from ..base import RestoreOutcome, RestoreRequest
from .dump import (
    DumpCommand, ask, dump_capture, left_stopped, needs_quiesce, one_archive, restoring,
)

logger = logging.getLogger(__name__)

NAME = "prometheus"
ITEM = dump_type(NAME)
describe = one_archive(ITEM)

_HTTP = (
    'u="${PROMETHEUS_URL:-http://localhost:9090}"; '
    'http() { if command -v wget >/dev/null 2>&1; then wget -qO- ${2:+--post-data=} "$u$1" 2>&1; '
    'elif command -v curl >/dev/null 2>&1; then curl -sS ${2:+-X POST} "$u$1"; '
    'elif command -v python3 >/dev/null 2>&1; then python3 -c "import sys, urllib.request, urllib.error\n'
    'try:\n    r = urllib.request.urlopen(urllib.request.Request(sys.argv[1], method=sys.argv[2]))\n'
    'except urllib.error.HTTPError as e:\n    r = e\nsys.stdout.write(r.read().decode())" "$u$1" "${2:-GET}"; '
    'else echo "no wget, curl or python3 in the container to call the Prometheus API" >&2; return 127; fi; }; '
    'field() { sed -n "s/.*\\"$1\\":\\"\\([^\\"]*\\)\\".*/\\1/p"; }; '
    'flags=$(http /api/v1/status/flags) || { echo "the Prometheus API at $u did not answer: $flags" >&2; exit 1; }; '
    'tsdb=$(printf "%s" "$flags" | field storage.tsdb.path); '
    'case "$tsdb" in "") echo "no storage.tsdb.path in $u/api/v1/status/flags: $flags" >&2; exit 1;; '
    '/*) ;; *) tsdb="$(readlink /proc/1/cwd)/$tsdb";; esac; '
)
_SNAPSHOT = _HTTP + (
    'resp=$(http /api/v1/admin/tsdb/snapshot POST); '
    'name=$(printf "%s" "$resp" | field name); '
    'if [ -z "$name" ]; then echo "the TSDB snapshot API refused: $resp (start Prometheus with '
    '--web.enable-admin-api)" >&2; exit 1; fi; '
    'snap="$tsdb/snapshots/$name"; trap \'rm -rf "$snap"\' EXIT; '
    'tar -C "$snap" -cf - .'
)
# One line: the storage path|how many blocks it holds.
_WHERE = _HTTP + 'echo "$tsdb|$(ls -d "$tsdb"/01* 2>/dev/null | wc -l)"'
_CLEAR = 'cd "$1" && rm -rf -- ..?* .[!.]* *'


def dump_command(target: Target) -> DumpCommand:
    return DumpCommand(("sh", "-c", _SNAPSHOT), "snapshot.tar", "prometheus snapshot", (), _tar)


def _tar(head: bytes, tail: bytes) -> str | None:
    return None if len(head) >= 512 and head[257:262] == b"ustar" else "the snapshot stream is no tar"


capture = dump_capture(ITEM, dump_command)


def restore(ctx: Context, request: RestoreRequest) -> RestoreOutcome:
    container, path = request.container, request.archive
    # `files`: the worker checked the snapshot tar inside the dump too, before anything is stopped or
    # emptied, and sends it re-serialised as regular files and folders only, for the engine's unpacker.
    with restoring(ctx, request, ITEM, "the prometheus preset asks the server for its storage path",
                   kind="files") as r:
        current, fields = r.container, r.fields
        tsdb = _where(ctx, current, request.force, fields)
        with Interruption(ctx, current, InterruptionKind.STOPPED, request.backup_name, request.stop_timeout) as stop:
            image = ctx.settings.helper_image or current.image_id
            try:
                code, logs = ctx.engine.run_helper(image, container.id, ["sh", "-c", _CLEAR, "sh", tsdb])
                if code != 0:
                    raise RestoreError(f"emptying {tsdb} in {container.name} failed (exit {code}: "
                                       f"{logs.strip()[-300:]})")
                logger.info("restoring the TSDB snapshot", extra={**fields, "path": tsdb})
                ctx.engine.put_archive(container.id, tsdb, r.dump.data())
            except SidecarError as err:
                raise left_stopped(stop, container.name, ITEM, f"EMPTYING {tsdb}", err) from err
    return r.outcome(stop.seconds)


def _where(ctx: Context, container: ContainerInfo, force: bool, fields: dict) -> str:
    out = ask(ctx, container, ["sh", "-c", _WHERE], fields, unreachable=f"cannot ask the server in {container.name}",
              failed=f"asking the server in {container.name} failed:", well_formed=lambda out: out.count("|") == 1)
    tsdb, blocks = out.split("|")
    if not tsdb.startswith("/") or tsdb.rstrip("/") in ("", "/"):
        raise RestoreError(f"the server in {container.name} reports an unusable storage path {tsdb!r}")
    if not force and blocks.strip() not in ("", "0"):
        raise RestoreError(f"the TSDB of {container.name} ({tsdb}) holds {blocks} blocks; use --force to replace it")
    return tsdb
