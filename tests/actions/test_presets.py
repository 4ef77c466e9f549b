"""Presets against FakeEngine: the container's tools are stand-in scripts run as local
processes (FakeEngine.exec_stream), so the dump really streams through the archive writer,
and the failures (exit codes, empty or truncated output, timeouts) are the tools' own."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import time
from pathlib import Path

import pytest
import zstandard

from sidecar.actions.backup import BackupResult, run_backup
from sidecar.actions.plan import run_plan
from sidecar.actions.restore_dump import run_restore_dump
from sidecar.actions.sources.presets import dump
from sidecar.core.errors import ArchiveError, EngineError, NotFound, RestoreError, RestoreLeftStopped, UnsafeArchive
from sidecar.core.model import ContainerState
from sidecar.tarball.archive import write_checksum

from .conftest import app_labels

# A preset's restore reads its archive in an extract worker (`--stream`; the fake engine runs it
# as a host process): no worker, no restore. Backups still read through the engine's archive API.
pytestmark = pytest.mark.usefixtures("restore_worker")

DUMPALL_END = "--\n-- PostgreSQL database cluster dump complete\n--\n\n"


def _tools(root: Path, **scripts: str) -> Path:
    """A folder of stand-in tools (sh scripts) for the container's PATH."""
    folder = root / "bin"
    folder.mkdir(exist_ok=True)
    for name, body in scripts.items():
        path = folder / name
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(0o755)
    return folder


def _postgres(engine, tmp_path, labels=None, env=None, **scripts):
    app = engine.add_container("db-1", app_labels(preset="postgres", image="never", **(labels or {})),
                               image="postgres:15")
    c = engine.containers[app.id]
    c.bin = _tools(tmp_path, **scripts)
    c.env = dict(env or {})
    return app


def _target(ctx, name="app"):
    target = ctx.discover().find(name)
    assert target is not None, ctx.discover().skipped
    return target


def _dump_of(path: Path) -> bytes:
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(path.read_bytes()), read_across_frames=True).read()
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        return b"".join(tar.extractfile(m).read() for m in tar)


def _nothing_written(ctx) -> bool:
    return not [p for p in ctx.store.root.rglob("*") if p.is_file() and ".sidecar" not in p.parts]


def test_pg_dumpall_streams_into_a_dump_archive_named_by_the_preset(engine, ctx, tmp_path):
    app = _postgres(engine, tmp_path, env={"POSTGRES_USER": "app", "POSTGRES_PASSWORD": "pw-1"},
                    pg_dumpall=f'echo "user=$PGUSER pass=$PGPASSWORD args=$*"; printf "%s" "{DUMPALL_END}"')
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.ok, outcome.error
    [archive] = outcome.archives
    assert archive.path.name.startswith("app_postgres+dump_") and archive.path.name.endswith(".tar.zst")
    assert archive.path.with_name(archive.path.name + ".sha256").exists()
    assert _dump_of(archive.path) == b"user=app pass=pw-1 args=--clean --if-exists\n" + DUMPALL_END.encode()
    assert outcome.volumes == ("postgres+dump",)
    assert engine.names("stop") == [] and engine.names("pause") == []  # never interrupted
    assert engine.state(app.id) is ContainerState.RUNNING
    # The secret came from the container's own environment, never through the sidecar.
    assert all("pw-1" not in str(options) for options in engine.exec_options)


def test_password_file_and_labelled_role(engine, ctx, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("from-file")
    _postgres(engine, tmp_path, labels={"preset_user": "backup"}, env={"POSTGRES_PASSWORD_FILE": str(secret),
                                                                       "POSTGRES_USER": "app"},
              pg_dumpall=f'echo "$PGUSER:$PGPASSWORD"; printf "%s" "{DUMPALL_END}"')
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.ok, outcome.error
    assert _dump_of(outcome.archives[0].path).startswith(b"backup:from-file\n")


def test_per_database_dump_uses_pg_dump_custom_format(engine, ctx, tmp_path):
    _postgres(engine, tmp_path, labels={"preset_database": "shop"}, pg_dump='printf "PGDMP-%s" "$*"')
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.ok, outcome.error
    assert _dump_of(outcome.archives[0].path) == b"PGDMP--Fc --dbname shop"


@pytest.mark.parametrize("script, words", [
    ('echo \'pg_dumpall: error: FATAL:  password authentication failed for user "x"\' >&2; exit 1',
     'exited with 1: pg_dumpall: error: FATAL:  password authentication failed for user "x"'),
    ("exit 0", "wrote nothing (an empty dump)"),
    ('echo "CREATE TABLE t (a int);"', "does not end with pg_dumpall's last line (truncated)"),
    ('echo "pg_dumpall: error: server version: 16.1; pg_dumpall version: 15.5" >&2; exit 1',
     "server version: 16.1; pg_dumpall version: 15.5"),
])
def test_a_failed_dump_is_a_failed_run_without_an_archive(engine, ctx, tmp_path, script, words):
    _postgres(engine, tmp_path, pg_dumpall=script)
    outcome = run_backup(ctx, _target(ctx))
    assert (outcome.result, outcome.phase) == (BackupResult.FAILURE, "dump")
    assert words in outcome.error
    assert _nothing_written(ctx)


def test_a_missing_tool_is_named(engine, ctx, tmp_path):
    app = _postgres(engine, tmp_path)
    engine.containers[app.id].bin = tmp_path / "empty"
    (tmp_path / "empty").mkdir()
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.result is BackupResult.FAILURE and "pg_dumpall: not found in the container" in outcome.error
    assert _nothing_written(ctx)


def test_a_dump_past_its_timeout_is_killed(engine, ctx, tmp_path):
    _postgres(engine, tmp_path, labels={"exec_timeout": "1"}, pg_dumpall="echo partial; exec sleep 30")
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.result is BackupResult.FAILURE and "ran past its timeout" in outcome.error
    assert engine.exec_options[-1]["timeout"] == 1
    assert _nothing_written(ctx)


def test_a_preset_with_listed_volumes_archives_both(engine, ctx, tmp_path, data):
    app = engine.add_container("db-1", app_labels(preset="postgres", volumes="/data", strategy="hot",
                                                  image="never"), {"/data": data})
    engine.containers[app.id].bin = _tools(tmp_path, pg_dumpall=f'printf "%s" "{DUMPALL_END}"')
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.ok, outcome.error
    assert sorted(outcome.volumes) == ["data", "postgres+dump"]
    assert len(outcome.archives) == 2


def test_large_dump_is_cut_into_parts_and_joined_back(tmp_path):
    chunks = [os.urandom(1000) for _ in range(50)]
    raw = b"".join(dump.parts_tar(iter(chunks), "all.sql", part_size=4096))
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        members = tar.getmembers()
        assert [m.name for m in members][:3] == ["all.sql.000000", "all.sql.000001", "all.sql.000002"]
        assert b"".join(tar.extractfile(m).read() for m in members) == b"".join(chunks)
        assert {m.size for m in members[:-1]} == {4096}


def test_an_empty_dump_is_still_one_member():
    raw = b"".join(dump.parts_tar(iter([]), "x.sql"))
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        assert [(m.name, m.size) for m in tar] == [("x.sql.000000", 0)]


# --- restore --------------------------------------------------------------------------------

def _backed_up(engine, ctx, tmp_path, received: Path):
    app = _postgres(engine, tmp_path, pg_dumpall=f'printf "SELECT 1;\\n%s" "{DUMPALL_END}"',
                    psql=f'case "$*" in *-c*) echo 0;; *) cat > {received};; esac')
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.ok, outcome.error
    return app, outcome.archives[0].path


def test_restore_dump_feeds_psql(engine, ctx, tmp_path):
    received = tmp_path / "received.sql"
    app, archive = _backed_up(engine, ctx, tmp_path, received)
    outcome = run_restore_dump(ctx, "app", "latest")
    assert outcome.archive == archive and outcome.volume == "postgres+dump"
    assert received.read_text() == "SELECT 1;\n" + DUMPALL_END
    assert engine.names("stop") == []


def test_restore_dump_refuses_a_server_with_data_unless_forced(engine, ctx, tmp_path):
    received = tmp_path / "received.sql"
    app, archive = _backed_up(engine, ctx, tmp_path, received)
    _tools(tmp_path, psql=f'case "$*" in *-c*) echo 3;; *) cat > {received};; esac')
    with pytest.raises(RestoreError, match="holds data already"):
        run_restore_dump(ctx, "app", str(archive))
    assert not received.exists()
    run_restore_dump(ctx, "app", str(archive), force=True)
    assert received.read_text().startswith("SELECT 1;")


def test_restore_dump_refuses_a_stopped_server_and_a_damaged_archive(engine, ctx, tmp_path):
    app, archive = _backed_up(engine, ctx, tmp_path, tmp_path / "r.sql")
    engine.set_state(app.id, ContainerState.EXITED)
    with pytest.raises(RestoreError, match="not running"):
        run_restore_dump(ctx, "app", "latest")
    engine.set_state(app.id, ContainerState.RUNNING)
    data = bytearray(archive.read_bytes())
    data[-5] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(Exception, match="SHA-256|damaged|checksum"):
        run_restore_dump(ctx, "app", "latest")


def test_restore_dump_without_any_dump_says_so(engine, ctx, tmp_path):
    engine.add_container("other", {"backup.enable": "true", "backup.name": "other"}, {"/data": tmp_path / "d"})
    with pytest.raises(NotFound, match="no preset dump"):
        run_restore_dump(ctx, "other", "latest")


# --- plan -----------------------------------------------------------------------------------

def test_plan_warns_about_a_database_copied_hot(engine, ctx, tmp_path):
    engine.add_container("pg", {**app_labels(strategy="hot"), "backup.name": "pg"}, {"/data": tmp_path / "p"},
                         image="postgres:15")
    mysql = engine.add_container("my", {**app_labels(strategy="hot"), "backup.name": "my"}, {"/d": tmp_path / "m"},
                                 image="registry.local/custom:1")
    engine.containers[mysql.id].command = ("docker-entrypoint.sh", "mysqld")
    engine.add_container("ok", {**app_labels(strategy="pause"), "backup.name": "ok"}, {"/d": tmp_path / "o"},
                         image="postgres:15")
    rows, _ = run_plan(ctx)
    warnings = {r.target: r.warnings for r in rows}
    assert "backup.preset=postgres" in warnings["pg"][0]
    assert "MySQL/MariaDB" in warnings["my"][0] and "backup.preset=mysql" in warnings["my"][0]
    assert warnings["ok"] == ()


def test_plan_lists_the_preset_archive(engine, ctx, tmp_path):
    _postgres(engine, tmp_path)
    [row] = run_plan(ctx)[0]
    assert row.volumes == ("postgres+dump=preset",) and row.warnings == ()


# --- mysql / mariadb ------------------------------------------------------------------------

def _mysql(engine, tmp_path, preset="mysql", labels=None, env=None, **scripts):
    app = engine.add_container("my-1", app_labels(preset=preset, image="never", **(labels or {})), image="mysql:8")
    engine.containers[app.id].bin = _tools(tmp_path, **scripts)
    engine.containers[app.id].env = dict(env or {})
    return app


DUMP_DONE = "-- Dump completed on 2026-12-02  3:00:00"


def test_mysqldump_with_the_root_password_from_the_environment(engine, ctx, tmp_path):
    _mysql(engine, tmp_path, env={"MYSQL_ROOT_PASSWORD": "pw-9"},
           mysqldump=f'echo "pwd=$MYSQL_PWD args=$*"; echo "{DUMP_DONE}"')
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.ok, outcome.error
    [archive] = outcome.archives
    assert archive.path.name.startswith("app_mysql+dump_")
    assert _dump_of(archive.path) == (b"pwd=pw-9 args=--user=root --single-transaction --routines --events "
                                      b"--triggers --all-databases\n" + DUMP_DONE.encode() + b"\n")
    assert all("pw-9" not in str(options) for options in engine.exec_options)


def test_mariadb_dump_is_preferred_and_one_database_can_be_named(engine, ctx, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("from-file")
    _mysql(engine, tmp_path, preset="mariadb", labels={"preset_database": "shop", "preset_user": "backup"},
           env={"MARIADB_ROOT_PASSWORD_FILE": str(secret)},
           **{"mariadb-dump": f'echo "$MYSQL_PWD $*"; echo "{DUMP_DONE}"', "mysqldump": "exit 9"})
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.ok, outcome.error
    assert _dump_of(outcome.archives[0].path).startswith(
        b"from-file --user=backup --single-transaction --routines --events --triggers --databases shop\n")


def test_a_truncated_or_failed_mysqldump_fails(engine, ctx, tmp_path):
    _mysql(engine, tmp_path, mysqldump='echo "CREATE TABLE t (a int);"')
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.result is BackupResult.FAILURE and "Dump completed" in outcome.error and _nothing_written(ctx)
    _tools(tmp_path, mysqldump="echo \"mysqldump: Got error: 1045: Access denied for user 'root'@'localhost'\" >&2; exit 2")
    outcome = run_backup(ctx, _target(ctx))
    assert "exited with 2: mysqldump: Got error: 1045: Access denied" in outcome.error and _nothing_written(ctx)


def test_mysql_restore_feeds_the_client_and_refuses_data_without_force(engine, ctx, tmp_path):
    received = tmp_path / "received.sql"
    _mysql(engine, tmp_path, mysqldump=f'echo "INSERT 1;"; echo "{DUMP_DONE}"',
           mysql=f'case "$*" in *-e*) echo 2;; *) cat > {received};; esac')
    assert run_backup(ctx, _target(ctx)).ok
    with pytest.raises(RestoreError, match="holds 2 database"):
        run_restore_dump(ctx, "app", "latest")
    outcome = run_restore_dump(ctx, "app", "latest", force=True)
    assert outcome.volume == "mysql+dump" and received.read_text().startswith("INSERT 1;")


# --- redis ----------------------------------------------------------------------------------

# A Redis as the snapshot script sees it: LASTSAVE moves (in whole seconds) only when a
# save succeeds. CLOCK=1: LASTSAVE and a save's time are the real clock's seconds (a save in
# the second of the last one does not move it); BUSY=N: N looks at INFO find someone else's
# save running; RACE=1: the first BGSAVE meets a save someone else just started (which writes
# its own RDB and moves LASTSAVE).
REDIS_CLI = r'''
state="$STATE"
[ -f "$state" ] || { if [ -n "$CLOCK" ]; then date +%s; else echo 100; fi > "$state"; echo "${BUSY:-0}" > "$state.busy"; }
save() { printf '%s' "$1" > "$RDB_HOST/dump.rdb"; at=$(( $(cat "$state") + 1 )); [ -z "$CLOCK" ] || at=$(date +%s)
        echo "$at" > "$state"; }
[ "$1" = --raw ] && shift
case "$1 $2" in
  "LASTSAVE "*) cat "$state";;
  "TIME "*) date +%s; echo 0;;
  "BGSAVE "*)
    if [ -n "$RACE" ] && [ ! -f "$state.raced" ]; then : > "$state.raced"; save REDIS0011-someone-elses
      echo "ERR Background save already in progress"; exit 0; fi
    [ "$BGSAVE_STATUS" = ok ] && save "REDIS0011-snapshot-$REDISCLI_AUTH"
    echo "$BGSAVE_STATUS" > "$state.status"; echo "Background saving started";;
  "INFO persistence")
    busy=$(cat "$state.busy"); [ "$busy" -gt 0 ] && echo $(( busy - 1 )) > "$state.busy"
    echo "rdb_bgsave_in_progress:$(( busy > 0 ))"; echo "rdb_last_bgsave_status:$(cat "$state.status" 2>/dev/null || echo ok)"
    echo "aof_rewrite_in_progress:0";;
  "CONFIG GET") echo "$3"; case "$3" in dir) echo "$RDB_DIR";; dbfilename) echo dump.rdb;; appendonly) echo "$AOF";; esac;;
  "DBSIZE "*) echo "$KEYS";;
esac
'''


def _redis(engine, tmp_path, data, env=None, timeout="3600"):
    app = engine.add_container("cache-1", app_labels(preset="redis", image="never", exec_timeout=timeout),
                               {"/data": data},
                               image="redis:7")
    engine.containers[app.id].bin = _tools(tmp_path, **{"redis-cli": REDIS_CLI, "sed": 'exec /bin/sed "$@"',
                                                         "grep": 'exec /bin/grep "$@"', "stat": "exit 1",
                                                         "date": 'exec /bin/date "$@"', "tr": 'exec /usr/bin/tr "$@"'})
    engine.containers[app.id].env = {"STATE": str(tmp_path / "lastsave"), "RDB_HOST": str(data),
                                     "RDB_DIR": str(data), "BGSAVE_STATUS": "ok", "AOF": "no", "KEYS": "0",
                                     "REDIS_PASSWORD": "pw-r", **(env or {})}
    return app


def test_redis_bgsave_then_the_rdb(engine, ctx, tmp_path, data):
    _redis(engine, tmp_path, data)
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.ok, outcome.error
    assert outcome.archives[0].path.name.startswith("app_redis+dump_")
    assert _dump_of(outcome.archives[0].path) == b"REDIS0011-snapshot-pw-r"
    assert all("pw-r" not in str(options) for options in engine.exec_options)


def test_a_failed_bgsave_fails_the_run(engine, ctx, tmp_path, data):
    """Redis leaves LASTSAVE as it was when a save fails: the end of the save is the failure,
    with the server's status, not a wait until the command's timeout."""
    _redis(engine, tmp_path, data, env={"BGSAVE_STATUS": "err"}, timeout="30")
    started = time.monotonic()
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.result is BackupResult.FAILURE and "BGSAVE failed: rdb_last_bgsave_status:err" in outcome.error
    assert time.monotonic() - started < 20, outcome.error
    assert _nothing_written(ctx)


@pytest.mark.parametrize("env", [{"CLOCK": "1"}, {"BUSY": "3"}, {"RACE": "1"}, {"CLOCK": "1", "RACE": "1"}],
                         ids=["save-in-the-same-second", "someone-elses-save-running", "someone-elses-save-first",
                              "both"])
def test_the_rdb_is_from_our_bgsave_whatever_else_saves(engine, ctx, tmp_path, data, env):
    """LASTSAVE counts whole seconds and moves on anyone's save: a save in the second of the
    last one is still seen (not a wait until the timeout), and someone else's save, running or
    just started, is waited for and never taken for ours."""
    _redis(engine, tmp_path, data, env=env, timeout="30")
    started = time.monotonic()
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.ok, outcome.error
    assert _dump_of(outcome.archives[0].path) == b"REDIS0011-snapshot-pw-r"
    assert time.monotonic() - started < 20


def test_redis_restore_stops_puts_the_rdb_back_and_starts(engine, ctx, tmp_path, data):
    app = _redis(engine, tmp_path, data)
    assert run_backup(ctx, _target(ctx)).ok
    (data / "dump.rdb").write_bytes(b"REDIS-newer")
    engine.containers[app.id].env.update(RDB_DIR="/data", KEYS="5")
    with pytest.raises(RestoreError, match="holds 5 keys"):
        run_restore_dump(ctx, "app", "latest")
    engine.containers[app.id].env["AOF"] = "yes"
    with pytest.raises(RestoreError, match="appendonly yes"):
        run_restore_dump(ctx, "app", "latest", force=True)
    engine.containers[app.id].env["AOF"] = "no"
    outcome = run_restore_dump(ctx, "app", "latest", force=True)
    assert (data / "dump.rdb").read_bytes() == b"REDIS0011-snapshot-pw-r"
    assert [c[0] for c in engine.calls if c[0] in ("stop", "start")] == ["stop", "start"]
    assert engine.state(app.id) is ContainerState.RUNNING and outcome.downtime >= 0


# --- prometheus -----------------------------------------------------------------------------

WGET = r'''
url=""; post=0
for a in "$@"; do case "$a" in --post-data=*) post=1;; -*) ;; *) url="$a";; esac; done
case "$url" in
  */api/v1/status/flags) echo '{"status":"success","data":{"storage.tsdb.path":"'"${TSDB_SHOWN:-$TSDB}"'","web.enable-admin-api":"x"}}';;
  */api/v1/admin/tsdb/snapshot)
    if [ "$ADMIN" != on ]; then echo "wget: server returned error: HTTP/1.1 403 Forbidden" >&2; exit 8; fi
    mkdir -p "$TSDB/snapshots/20261202T000000Z-abc/01BLOCK" && echo chunk > "$TSDB/snapshots/20261202T000000Z-abc/01BLOCK/meta.json"
    (cd "$TSDB/snapshots/20261202T000000Z-abc" && eval "${SNAPSHOT_EXTRA:-:}")
    echo '{"status":"success","data":{"name":"20261202T000000Z-abc"}}';;
esac
'''


def _prometheus(engine, tmp_path, data, admin="on", extra=""):
    app = engine.add_container("prom-1", app_labels(preset="prometheus", image="never"), {"/prometheus": data},
                               image="prom/prometheus:v2")
    engine.containers[app.id].bin = _tools(tmp_path, wget=WGET, sed='exec /bin/sed "$@"', tar='exec /bin/tar "$@"',
                                           rm='exec /bin/rm "$@"', mkdir='exec /bin/mkdir "$@"',
                                           ls='exec /bin/ls "$@"', readlink='exec /bin/readlink "$@"',
                                           ln='exec /bin/ln "$@"', chmod='exec /bin/chmod "$@"')
    engine.containers[app.id].env = {"TSDB": str(data), "ADMIN": admin, "SNAPSHOT_EXTRA": extra}
    return app


def test_prometheus_snapshot_is_archived_and_deleted(engine, ctx, tmp_path, data):
    _prometheus(engine, tmp_path, data)
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.ok, outcome.error
    dumped = _dump_of(outcome.archives[0].path)
    with tarfile.open(fileobj=io.BytesIO(dumped), mode="r:") as tar:
        assert "./01BLOCK/meta.json" in tar.getnames()
    assert not (data / "snapshots" / "20261202T000000Z-abc").exists()


def test_prometheus_without_the_admin_api_names_the_flag(engine, ctx, tmp_path, data):
    _prometheus(engine, tmp_path, data, admin="off")
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.result is BackupResult.FAILURE and "--web.enable-admin-api" in outcome.error
    assert "403 Forbidden" in outcome.error and _nothing_written(ctx)


def test_prometheus_restore_writes_checked_files_and_folders(engine, ctx, tmp_path, data):
    app = _prometheus(engine, tmp_path, data, extra="echo run > 01BLOCK/tool && chmod 4755 01BLOCK/tool")
    assert run_backup(ctx, _target(ctx)).ok
    engine.containers[app.id].env["TSDB_SHOWN"] = "/prometheus"  # its path in the container, for the restore
    for entry in data.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    run_restore_dump(ctx, "app", "latest")
    assert (data / "01BLOCK" / "meta.json").read_text() == "chunk\n"
    assert (data / "01BLOCK" / "tool").read_text() == "run\n"
    assert (data / "01BLOCK" / "tool").stat().st_mode & 0o7777 == 0o755  # the setuid bit never reaches the engine
    assert [c[0] for c in engine.calls if c[0] in ("stop", "start")] == ["stop", "start"]


@pytest.mark.parametrize("extra, kind", [
    ("ln -s /etc 01BLOCK/out", "outside the volume"),
    ("ln -s meta.json 01BLOCK/in", "is a symlink"),
    ("echo x > f && ln f 01BLOCK/f2", "is a hardlink"),
])
def test_prometheus_restore_refuses_a_snapshot_with_links(engine, ctx, tmp_path, data, extra, kind):
    app = _prometheus(engine, tmp_path, data, extra=extra)
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.ok, outcome.error
    engine.containers[app.id].env["TSDB_SHOWN"] = "/prometheus"
    for entry in data.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    (data / "kept").write_text("untouched")
    with pytest.raises(UnsafeArchive) as err:
        run_restore_dump(ctx, "app", "latest", force=True)
    message = str(err.value)
    assert kind in message and "prom-1" in message and outcome.archives[0].path.name in message
    # Refused before anything was stopped, emptied or sent to the engine's unpacker.
    assert not [c for c in engine.calls if c[0] in ("stop", "run_helper", "put_archive")]
    assert [p.name for p in data.iterdir()] == ["kept"] and engine.state(app.id) is ContainerState.RUNNING


def test_an_encrypted_dump_is_restored_through_the_client(engine, make_ctx, tmp_path):
    ctx = make_ctx(BACKUP_AGE_PASSPHRASE="correct horse battery staple 9")
    received = tmp_path / "received.sql"
    _postgres(engine, tmp_path, pg_dumpall=f'printf "SELECT 2;\\n%s" "{DUMPALL_END}"',
              psql=f'case "$*" in *-c*) echo 0;; *) cat > {received};; esac')
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.ok, outcome.error
    assert outcome.archives[0].path.name.endswith(".tar.zst.age")
    assert b"SELECT 2" not in outcome.archives[0].path.read_bytes()
    run_restore_dump(ctx, "app", "latest")
    assert received.read_text() == "SELECT 2;\n" + DUMPALL_END


# --- mongodb --------------------------------------------------------------------------------

def _mongo(engine, tmp_path, env=None, **scripts):
    app = engine.add_container("mongo-1", app_labels(preset="mongodb", image="never"), image="mongo:7")
    engine.containers[app.id].bin = _tools(tmp_path, sed='exec /bin/sed "$@"', **scripts)
    engine.containers[app.id].env = dict(env or {})
    return app


MAGIC = r"\155\342\231\201"


def test_mongodump_archive_with_credentials_on_a_file_descriptor(engine, ctx, tmp_path):
    _mongo(engine, tmp_path, env={"MONGO_INITDB_ROOT_USERNAME": "root", "MONGO_INITDB_ROOT_PASSWORD": 'p"w\\1'},
           mongodump=f'printf "{MAGIC}"; echo " $*"; cat /dev/fd/3')
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.ok, outcome.error
    assert outcome.archives[0].path.name.startswith("app_mongodb+dump_")
    assert _dump_of(outcome.archives[0].path) == (
        bytes.fromhex("6de29981") + b" --username root --authenticationDatabase admin --config /dev/fd/3 --archive\n"
        b'password: "p\\"w\\\\1"\n')
    assert all('p"w' not in str(options) for options in engine.exec_options)


def test_mongodump_output_must_be_an_archive(engine, ctx, tmp_path):
    _mongo(engine, tmp_path, mongodump='echo "not an archive"')
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.result is BackupResult.FAILURE and "no mongodump archive" in outcome.error and _nothing_written(ctx)


def test_mongorestore_gets_the_archive_and_drop_with_force(engine, ctx, tmp_path):
    received = tmp_path / "received"
    _mongo(engine, tmp_path, mongodump=f'printf "{MAGIC}data"', mongosh="echo 2",
           mongorestore=f'echo "$*" > {received}.args; cat > {received}')
    assert run_backup(ctx, _target(ctx)).ok
    with pytest.raises(RestoreError, match="holds databases of its own"):
        run_restore_dump(ctx, "app", "latest")
    run_restore_dump(ctx, "app", "latest", force=True)
    assert received.read_bytes() == bytes.fromhex("6de29981") + b"data"
    assert (tmp_path / "received.args").read_text().split() == ["--archive", "--drop"]


def test_a_redis_restore_failing_while_writing_leaves_the_container_stopped(engine, ctx, tmp_path, data):
    app = _redis(engine, tmp_path, data)
    assert run_backup(ctx, _target(ctx)).ok
    engine.containers[app.id].env.update(RDB_DIR="/data")
    engine.fail("put_archive", EngineError("the engine went away"))
    with pytest.raises(RestoreLeftStopped, match="RESTORE FAILED AFTER WRITING /data/dump.rdb"):
        run_restore_dump(ctx, "app", "latest", force=True)
    assert engine.state(app.id) is ContainerState.EXITED
    assert [e.action for e in ctx.journal.entries()] == ["left-stopped"]


# --- issue 19: a preset's archive is read by a worker (`--stream`), never by the sidecar's parser

def _refused(*args, **kwargs):
    raise AssertionError("the sidecar parsed the archive")


def _parser_refused(monkeypatch) -> None:
    """The checked parser made unusable in this process (the fake engine's workers are host
    processes of their own, where it works): whatever reads an archive here fails."""
    for name in ("_Pass.__init__", "verify", "dump_data", "canonical_tar", "files_tar"):
        monkeypatch.setattr(f"sidecar.tarball.extract.{name}", _refused)


def _stream_workers(engine) -> list:
    return [s for s in engine.workers_run if s.purpose == "extract" and "--stream" in s.command]


def test_a_preset_restore_with_the_sidecars_parser_refused_still_works(engine, ctx, tmp_path, data, monkeypatch):
    """The restore works with the parser patched to raise in the sidecar: the patches the parser
    gets show it is the worker's (backup volume read-only and nothing else) that reads the dump."""
    received = tmp_path / "received.sql"
    _backed_up(engine, ctx, tmp_path, received)
    _parser_refused(monkeypatch)
    outcome = run_restore_dump(ctx, "app", "latest")
    assert received.read_text() == "SELECT 1;\n" + DUMPALL_END and outcome.tar_bytes > 0
    [worker] = _stream_workers(engine)
    assert worker.command[worker.command.index("--stream") + 1] == "dump"
    assert [(m.target, m.read_only) for m in worker.mounts] == [("/backups", True)]
    assert engine.running_workers() == []


def test_a_redis_restore_with_the_sidecars_parser_refused(engine, ctx, tmp_path, data, monkeypatch):
    rdb = data
    app = _redis(engine, tmp_path, rdb)
    assert run_backup(ctx, _target(ctx)).ok
    engine.containers[app.id].env.update(RDB_DIR="/data", KEYS="0")
    (rdb / "dump.rdb").write_bytes(b"REDIS-newer")
    _parser_refused(monkeypatch)
    run_restore_dump(ctx, "app", "latest")
    assert (rdb / "dump.rdb").read_bytes() == b"REDIS0011-snapshot-pw-r"
    assert [s.command[s.command.index("--stream") + 1] for s in _stream_workers(engine)] == ["dump"]


def test_a_prometheus_restore_with_the_sidecars_parser_refused(engine, ctx, tmp_path, data, monkeypatch):
    app = _prometheus(engine, tmp_path, data)
    assert run_backup(ctx, _target(ctx)).ok
    engine.containers[app.id].env["TSDB_SHOWN"] = "/prometheus"
    for entry in data.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    _parser_refused(monkeypatch)
    run_restore_dump(ctx, "app", "latest")
    assert (data / "01BLOCK" / "meta.json").read_text() == "chunk\n"
    assert [s.command[s.command.index("--stream") + 1] for s in _stream_workers(engine)] == ["files"]


def _crafted(archive: Path, *members: tuple[str, bytes, bytes]) -> None:
    """`archive` replaced by a tar of `members` (name, type, data) with a checksum that matches:
    whoever can write to the backup volume can write both."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, content in members:
            info = tarfile.TarInfo(name)
            info.type, info.mode = kind, 0o4755
            if kind == tarfile.SYMTYPE:
                info.linkname = content.decode()
            else:
                info.size = len(content)
            tar.addfile(info, io.BytesIO(content) if kind == tarfile.REGTYPE else None)
    raw = zstandard.ZstdCompressor().compress(buf.getvalue())
    archive.write_bytes(raw)
    write_checksum(archive, hashlib.sha256(raw).hexdigest(), 0o600)


@pytest.mark.parametrize("members, words", [
    ([("usr/local/bin/backdoor", tarfile.REGTYPE, b"#!/bin/sh\n")], "is not part 0 of a dump"),
    ([("pg_dumpall.sql.000000", tarfile.REGTYPE, b"SELECT 1;"), ("pg_dumpall.sql.000002", tarfile.REGTYPE, b"x")],
     "is not part 1 of a dump"),
    ([("pg_dumpall.sql.000000", tarfile.REGTYPE, b"SELECT 1;"), ("pg_dumpall.sql.000001", tarfile.SYMTYPE,
                                                                 b"pg_dumpall.sql.000000")], "is not part 1 of a dump"),
])
def test_a_crafted_dump_archive_is_refused_by_the_worker_with_nothing_fed(engine, ctx, tmp_path, members, words):
    received = tmp_path / "received.sql"
    _app, archive = _backed_up(engine, ctx, tmp_path, received)
    _crafted(archive, *members)
    with pytest.raises(ArchiveError, match=words) as err:
        run_restore_dump(ctx, "app", "latest", force=True)
    assert "refused before anything reached db-1" in str(err.value)
    assert not received.exists()
    assert not [o for o in engine.exec_options if o["argv"][-1] == "postgres"]  # no client started for the dump
    assert engine.running_workers() == []


def test_a_preset_restore_without_a_worker_is_refused_naming_the_setting(engine, make_ctx, tmp_path, monkeypatch):
    received = tmp_path / "received.sql"
    _backed_up(engine, make_ctx(), tmp_path, received)
    _parser_refused(monkeypatch)
    with pytest.raises(RestoreError, match="BACKUP_WORKER_IMAGE") as err:
        run_restore_dump(make_ctx(BACKUP_WORKER_IMAGE="none"), "app", "latest")
    assert "no worker container can run" in str(err.value) and not received.exists()


def test_a_client_that_stops_reading_ends_the_worker(engine, ctx, tmp_path):
    received = tmp_path / "received.sql"
    _postgres(engine, tmp_path, pg_dumpall=f'head -c 3000000 /dev/urandom | base64; printf "%s" "{DUMPALL_END}"',
              psql=f'case "$*" in *-c*) echo 0;; *) head -c 10 > {received}; exit 3;; esac')
    assert run_backup(ctx, _target(ctx)).ok
    with pytest.raises(RestoreError, match="psql"):
        run_restore_dump(ctx, "app", "latest")
    assert len(received.read_bytes()) == 10 and engine.running_workers() == []
