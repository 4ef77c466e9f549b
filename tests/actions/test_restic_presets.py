"""backup.format=restic with every preset, against FakeEngine and a real restic: each
preset's dump goes into a snapshot and `restore NAME --dump latest|SNAPSHOT` puts it back
through the preset's own restore (read out of the snapshot into a checked archive first),
and a failed `restic check` is a notification like a failed backup."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from sidecar.actions.backup import run_backup
from sidecar.actions.listing import run_list_snapshots
from sidecar.actions.maintenance import CHECK_TARGET, run_due
from sidecar.actions.restore_dump import run_restore_dump
from sidecar.core.errors import NotFound, RestoreError
from sidecar.core.model import ContainerState
from sidecar.notify.sender import Notifier
from sidecar.core.notify_urls import NotifyConfig, NotifyOn
from sidecar.core.snapshots import parse_snapshots

from .conftest import app_labels
from .test_presets import DUMP_DONE, DUMPALL_END, MAGIC, _mongo, _mysql, _postgres, _prometheus, _redis, _tools
from .test_restic import IMAGE, PASSWORD, _target, _two_runs, rctx  # noqa: F401  (rctx: a fixture)

pytestmark = [pytest.mark.usefixtures("fresh_worker_reader"),
              pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed (scripts/test "
                                 "installs it)")]


def _no_dump_left(ctx) -> bool:
    """The archive a restore reads the snapshot into is gone afterwards."""
    folder = ctx.store.state_dir / "restic-dumps"
    return not folder.exists() or not list(folder.iterdir())


def test_a_postgres_dump_snapshot_is_restored_through_psql_latest_or_by_name(engine, make_ctx, tmp_path):
    engine.worker_images.add(IMAGE)
    rctx = make_ctx(BACKUP_WORKER_IMAGE=IMAGE, BACKUP_FORMAT="restic", RESTIC_PASSWORD=PASSWORD,
                    BACKUP_PRUNE_DRY_RUN="true")  # both runs of the day are kept
    received = tmp_path / "received.sql"
    _postgres(engine, tmp_path, pg_dumpall=f'printf "SELECT 1;\\n%s" "{DUMPALL_END}"',
              psql=f'case "$*" in *-c*) echo 0;; *) cat > {received};; esac')
    first = run_backup(rctx, _target(rctx))
    assert first.ok, first.error
    outcome = run_restore_dump(rctx, "app", "latest", restic=True)
    assert received.read_text() == "SELECT 1;\n" + DUMPALL_END
    [row] = run_list_snapshots(rctx, "app")
    assert outcome.volume == "postgres+dump" and str(outcome.archive) == row.name
    assert engine.names("stop") == [] and _no_dump_left(rctx)
    # A second dump; the first one chosen by its id, then by its name.
    _tools(tmp_path, pg_dumpall=f'printf "SELECT 2;\\n%s" "{DUMPALL_END}"')
    assert run_backup(rctx, _target(rctx)).ok
    run_restore_dump(rctx, "app", first.snapshots[0].snapshot_id[:8], restic=True)
    assert received.read_text().startswith("SELECT 1;")
    run_restore_dump(rctx, "app", "latest", restic=True)
    assert received.read_text().startswith("SELECT 2;")
    run_restore_dump(rctx, "app", row.name, restic=True)  # the first one by its name
    assert received.read_text().startswith("SELECT 1;")


def test_a_restic_dump_restore_refuses_what_the_archive_restore_refuses(engine, rctx, tmp_path):
    received = tmp_path / "received.sql"
    _postgres(engine, tmp_path, pg_dumpall=f'printf "SELECT 1;\\n%s" "{DUMPALL_END}"',
              psql=f'case "$*" in *-c*) echo 3;; *) cat > {received};; esac')
    assert run_backup(rctx, _target(rctx)).ok
    with pytest.raises(RestoreError, match="holds data already"):
        run_restore_dump(rctx, "app", "latest", restic=True)
    assert not received.exists() and _no_dump_left(rctx)
    with pytest.raises(NotFound, match="no snapshot 'deadbeef'"):
        run_restore_dump(rctx, "app", "deadbeef", restic=True)
    run_restore_dump(rctx, "app", "latest", force=True, restic=True)
    assert received.read_text().startswith("SELECT 1;")


@pytest.mark.slow  # real restic; a corner of presets in restic
def test_a_volume_snapshot_is_not_taken_for_a_dump(engine, rctx, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("x")
    engine.add_container("app-1", app_labels(strategy="hot"), {"/data": data})
    assert run_backup(rctx, _target(rctx)).ok
    with pytest.raises(NotFound, match="no preset dump snapshot"):
        run_restore_dump(rctx, "app", "latest", restic=True)


@pytest.mark.slow  # all presets through restic (postgres stays in the default run)
def test_mysql_dump_snapshot_round_trip(engine, rctx, tmp_path):
    received = tmp_path / "received.sql"
    _mysql(engine, tmp_path, mysqldump=f'echo "INSERT 1;"; echo "{DUMP_DONE}"',
           mysql=f'case "$*" in *-e*) echo 0;; *) cat > {received};; esac')
    assert run_backup(rctx, _target(rctx)).ok
    assert run_restore_dump(rctx, "app", "latest", restic=True).volume == "mysql+dump"
    assert received.read_text() == f"INSERT 1;\n{DUMP_DONE}\n"


@pytest.mark.slow  # all presets through restic (postgres stays in the default run)
def test_mongodb_dump_snapshot_round_trip(engine, rctx, tmp_path):
    received = tmp_path / "received"
    _mongo(engine, tmp_path, mongodump=f'printf "{MAGIC}data"', mongosh="echo 0",
           mongorestore=f'cat > {received}')
    assert run_backup(rctx, _target(rctx)).ok
    run_restore_dump(rctx, "app", "latest", restic=True)
    assert received.read_bytes() == bytes.fromhex("6de29981") + b"data"


@pytest.mark.slow  # all presets through restic (postgres stays in the default run)
def test_redis_dump_snapshot_round_trip(engine, rctx, tmp_path, data):
    app = _redis(engine, tmp_path, data)
    assert run_backup(rctx, _target(rctx)).ok
    (data / "dump.rdb").write_bytes(b"REDIS-newer")
    engine.containers[app.id].env.update(RDB_DIR="/data")
    outcome = run_restore_dump(rctx, "app", "latest", force=True, restic=True)
    assert (data / "dump.rdb").read_bytes() == b"REDIS0011-snapshot-pw-r"
    assert engine.state(app.id) is ContainerState.RUNNING and outcome.volume == "redis+dump"


@pytest.mark.slow  # all presets through restic (postgres stays in the default run)
def test_prometheus_dump_snapshot_round_trip(engine, rctx, tmp_path, data):
    app = _prometheus(engine, tmp_path, data)
    assert run_backup(rctx, _target(rctx)).ok
    engine.containers[app.id].env["TSDB_SHOWN"] = "/prometheus"
    for entry in data.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    run_restore_dump(rctx, "app", "latest", restic=True)
    assert (data / "01BLOCK" / "meta.json").read_text() == "chunk\n"


@pytest.mark.slow  # restic check against real restic
def test_a_failed_check_is_a_notified_failure_and_the_next_passing_one_a_recovery(engine, make_ctx, tmp_path):
    engine.worker_images.add("backup-sidecar:fake")
    ctx = make_ctx(BACKUP_WORKER_IMAGE="backup-sidecar:fake", BACKUP_FORMAT="restic", RESTIC_PASSWORD=PASSWORD,
                   BACKUP_RESTIC_CHECK_SUBSET="100%", BACKUP_RESTIC_PRUNE_INTERVAL="0")
    _two_runs(engine, ctx, tmp_path)
    pack = max((p for p in (ctx.store.root / "restic" / "data").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)
    good = pack.read_bytes()
    pack.chmod(0o600)
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0xFF
    pack.write_bytes(bytes(damaged))
    sent = []
    notifier = Notifier(NotifyConfig(urls=(), on=NotifyOn.FAILURE), ctx.store.state_dir / "notify.json",
                        send=sent.append)
    [failed] = run_due(ctx, lambda name: ctx.settings.keep, on_check=notifier.outcome)
    assert not failed.ok
    pack.write_bytes(good)
    (ctx.store.state_dir / "restic.json").write_text("{}")  # due again at once
    [passed] = run_due(ctx, lambda name: ctx.settings.keep, on_check=notifier.outcome)
    assert passed.ok
    notifier.close(timeout=10)
    assert [m.event for m in sent] == ["failure", "recovery"]
    assert sent[0].target == CHECK_TARGET and "restic check of" in sent[0].title and "failed" in sent[0].title
    assert "phase: check" in sent[0].body and "error: " in sent[0].body
    assert PASSWORD not in sent[0].body + sent[0].title
