"""BACKUP_FORMAT=restic against FakeEngine and a real restic on a temporary folder: the
fake's run_worker runs the real `python -m sidecar.worker restic` (restic itself) as a host
process with the mounts' folders in place of their paths; a preset's stand-in tool streams
into `restic backup --stdin`. What is asserted is what restic itself reports."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import time
import uuid

import pytest

from sidecar import readers
from sidecar.actions.backup import BackupResult, run_backup
from sidecar.actions.formats.restic import HOST_LABEL, worker_host_prefix
from sidecar.actions.listing import run_list_snapshots
from sidecar.actions.maintenance import due, run_check, run_prune
from sidecar.actions.plan import run_plan
from sidecar.actions.recover import run_recovery
from sidecar.actions import restore_snapshot
from sidecar.actions.restore_snapshot import run_restore_snapshot
from sidecar.core.errors import EngineError
from sidecar.core.model import ContainerState
from sidecar.telemetry.metrics import Metrics, TargetView
from sidecar.core.model import ContainerInfo, ContainerState
from sidecar.core.snapshots import parse_snapshots
from sidecar.store.restic import Repository
from sidecar.worker.restic import open_gate

real_snapshots = Repository.snapshots

from .conftest import app_labels
from .test_presets import DUMPALL_END, _postgres

IMAGE = "backup-sidecar:fake"
PASSWORD = "restic-pw-Zq7"

pytestmark = [pytest.mark.usefixtures("fresh_worker_reader"), pytest.mark.skipif(subprocess.run(["sh", "-c", "command -v restic"], capture_output=True).returncode,
                                reason="restic is not installed (scripts/test installs it)")]




@pytest.fixture
def rctx(make_ctx, engine):
    engine.worker_images.add(IMAGE)
    return make_ctx(BACKUP_WORKER_IMAGE=IMAGE, BACKUP_FORMAT="restic", RESTIC_PASSWORD=PASSWORD)


def _target(ctx, name="app"):
    target = ctx.discover().find(name)
    assert target is not None, ctx.discover().skipped
    return target


def restic(ctx, *args: str) -> str:
    """The plain restic CLI on the sidecar's repository."""
    env = {**os.environ, "RESTIC_PASSWORD": PASSWORD}
    return subprocess.run(["restic", "-r", str(ctx.store.root / "restic"), "--no-cache", *args], env=env,
                          check=True, capture_output=True, text=True).stdout


def test_a_volume_becomes_one_tagged_snapshot_per_run_and_the_second_run_is_incremental(engine, rctx, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "big.bin").write_bytes(os.urandom(3 << 20))
    (data / "small.txt").write_text("one\n")
    app = engine.add_container("app-1", app_labels(strategy="stop"), {"/data": data})
    first = run_backup(rctx, _target(rctx))
    assert first.ok, first.error
    [snap1] = first.snapshots
    assert first.archives == () and snap1.item == "data" and snap1.raw_bytes >= 3 << 20
    assert not list((rctx.store.root / "daily").glob("*")) if (rctx.store.root / "daily").exists() else True
    (data / "small.txt").write_text("two\n")
    second = run_backup(rctx, _target(rctx))
    assert second.ok, second.error
    [snap2] = second.snapshots
    assert snap2.files_changed == 1 and snap2.files_unmodified == 1
    assert snap2.added_bytes < 64 << 10  # the 3 MiB file is not stored again
    # The container was stopped for each read and runs again.
    assert len(engine.names("stop")) == 2 and engine.state(app.id) is ContainerState.RUNNING
    # restic keeps one snapshot per period (hour, day, ...): the first run's is forgotten.
    found = parse_snapshots(restic(rctx, "snapshots", "--json"))
    assert [s.short_id for s in found] == [snap2.snapshot_id[:8]] != [snap1.snapshot_id[:8]]
    assert all(s.host == "fake-node" and s.backup_name == "app" and s.item == "data" for s in found)
    # The password reached the worker as a file that is gone now, never in its arguments.
    specs = [s for s in engine.workers_run if s.purpose == "restic-backup"]
    assert specs and all(PASSWORD not in " ".join(s.command) for s in specs)
    assert not list((rctx.store.state_dir / "workers").glob("*.keys"))
    assert oct((rctx.store.root / "restic").stat().st_mode & 0o777) == "0o700"
    # Metrics: read vs added bytes per volume, snapshots per volume, the repository's size.
    metrics = Metrics(state_path=rctx.store.state_dir / "metrics.json")
    metrics.observe(second)
    metrics.discovered([TargetView("app", ("data",), 0.0, 86400.0)], 0)
    get = metrics.registry.get_sample_value
    assert get("backup_sidecar_restic_added_bytes", {"target": "app", "volume": "data"}) == snap2.added_bytes
    assert get("backup_sidecar_restic_read_bytes", {"target": "app", "volume": "data"}) == snap2.raw_bytes
    assert get("backup_sidecar_restic_snapshots", {"target": "app", "volume": "data"}) == 1
    assert get("backup_sidecar_restic_repository_bytes", {}) > 3 << 20


def test_a_preset_dump_goes_through_restic_backup_stdin_uncompressed(engine, rctx, tmp_path):
    _postgres(engine, tmp_path, env={"POSTGRES_USER": "app"},
              pg_dumpall=f'echo "dump of $PGUSER"; printf "%s" "{DUMPALL_END}"')
    outcome = run_backup(rctx, _target(rctx))
    assert outcome.ok, outcome.error
    [snap] = outcome.snapshots
    assert snap.item == "postgres+dump"
    dumped = restic(rctx, "dump", snap.snapshot_id, "/pg_dumpall.sql")
    assert dumped == "dump of app\n" + DUMPALL_END


def test_a_truncated_dump_leaves_no_snapshot(engine, rctx, tmp_path):
    _postgres(engine, tmp_path, pg_dumpall='echo "half a dump"')  # no last line: truncated
    outcome = run_backup(rctx, _target(rctx))
    assert outcome.result is BackupResult.FAILURE and "truncated" in outcome.error
    assert json.loads(restic(rctx, "snapshots", "--json")) == []


@pytest.mark.slow  # test_prune_forgets_by_the_keep_rules_and_frees_the_space_its_log_counts covers forget in the default run
def test_forget_keeps_what_backup_keep_says_per_item(engine, rctx, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    engine.add_container("app-1", app_labels(strategy="hot", keep="daily=1,weekly=0,monthly=0,hourly=0"),
                         {"/data": data})
    for n in range(3):
        (data / "f").write_text(str(n))
        assert run_backup(rctx, _target(rctx)).ok
    # Three runs on one day: daily=1 and the newest (--keep-last 1) are one snapshot.
    assert len(parse_snapshots(restic(rctx, "snapshots", "--json"))) == 1


def test_without_a_worker_image_the_restic_format_says_why(engine, make_ctx, tmp_path):
    ctx = make_ctx(BACKUP_FORMAT="restic", RESTIC_PASSWORD=PASSWORD)
    data = tmp_path / "data"
    data.mkdir()
    engine.add_container("app-1", app_labels(strategy="hot"), {"/data": data})
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.result is BackupResult.FAILURE
    assert "worker container" in outcome.error and "BACKUP_WORKER_IMAGE" in outcome.error


def test_the_label_chooses_restic_for_one_container_while_the_default_stays_archive(engine, make_ctx, tmp_path):
    engine.worker_images.add(IMAGE)
    ctx = make_ctx(BACKUP_WORKER_IMAGE=IMAGE, RESTIC_PASSWORD=PASSWORD)
    data = tmp_path / "data"
    data.mkdir()
    (data / "a").write_text("a")
    engine.add_container("app-1", app_labels(strategy="hot", format="restic"), {"/data": data})
    engine.add_container("other-1", {**app_labels(strategy="hot"), "backup.name": "other"}, {"/data": data})
    assert run_backup(ctx, _target(ctx)).snapshots
    other = run_backup(ctx, _target(ctx, "other"))
    assert other.ok and other.archives and not other.snapshots


def _two_runs(engine, rctx, tmp_path, **labels):
    data = tmp_path / "data"
    data.mkdir()
    engine.add_container("app-1", app_labels(strategy="hot", **labels), {"/data": data})
    for n in range(2):
        (data / "f.bin").write_bytes(os.urandom(1 << 20))
        assert run_backup(rctx, _target(rctx)).ok


def test_the_state_file_keeps_one_record_per_item_from_the_runs_own_forget(engine, rctx, tmp_path, monkeypatch):
    """restic.json: `items` {id, time} of each item's newest snapshot (restic's own time), the
    old `parents`/`newest` pair gone; the run lists no snapshots of its own (its forget's
    answer says what each item keeps) and its parent is that record's id."""
    state = rctx.store.state_dir / "restic.json"
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"parents": {"fake-node/app/data": "0" * 64}, "newest": {"app/data": 1.0}}))
    listed = []
    monkeypatch.setattr(Repository, "snapshots", lambda self, *a, **k: listed.append(a) or real_snapshots(self, *a, **k))
    _two_runs(engine, rctx, tmp_path)
    [newest] = parse_snapshots(restic(rctx, "snapshots", "--json"))
    doc = json.loads(state.read_text())
    assert "parents" not in doc and "newest" not in doc
    assert doc["items"] == {"fake-node/app/data": {"id": newest.id, "time": newest.time.timestamp()}}
    assert doc["snapshots"] == {"app/data": 1}
    assert len(listed) == 1  # the first run's parent lookup (the old record names no snapshot there); no more
    specs = [s for s in engine.workers_run if s.purpose == "restic-backup"]
    assert "--parent" in specs[-1].command  # the second run's parent: the first's, from the record


def test_prune_forgets_by_the_keep_rules_and_frees_the_space_its_log_counts(engine, make_ctx, tmp_path):
    engine.worker_images.add(IMAGE)
    ctx = make_ctx(BACKUP_WORKER_IMAGE=IMAGE, BACKUP_FORMAT="restic", RESTIC_PASSWORD=PASSWORD,
                   BACKUP_PRUNE_DRY_RUN="true")  # the runs keep both snapshots; prune forgets
    _two_runs(engine, ctx, tmp_path)
    assert len(parse_snapshots(restic(ctx, "snapshots", "--json"))) == 2
    result = run_prune(ctx, lambda name: ctx.discover().keep_for(name, ctx.settings.keep))
    assert result.ok and result.forgotten == 1, result
    assert len(parse_snapshots(restic(ctx, "snapshots", "--json"))) == 1
    freed = int(result.detail.split()[0])
    assert freed >= 1 << 20  # the forgotten run's random megabyte is gone from the disk
    state = json.loads((ctx.store.state_dir / "restic.json").read_text())
    assert state["prune"]["ok"] is True and state["snapshots"] == {"app/data": 1}


@pytest.mark.slow  # restic check against real restic
def test_check_reads_data_back_and_a_damaged_pack_fails_it_into_the_metrics(engine, rctx, tmp_path):
    _two_runs(engine, rctx, tmp_path)
    assert set(due(rctx)) == {"prune", "check"}  # never run yet
    assert run_check(rctx, "100%").ok
    assert due(rctx) == ("prune",)
    pack = max((rctx.store.root / "restic" / "data").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    pack.chmod(0o600)
    raw = bytearray(pack.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    pack.write_bytes(bytes(raw))
    failed = run_check(rctx, "100%")
    assert not failed.ok
    metrics = Metrics(state_path=rctx.store.state_dir / "metrics.json")
    assert metrics.registry.get_sample_value("backup_sidecar_restic_check_ok", {}) == 0
    assert metrics.registry.get_sample_value("backup_sidecar_restic_check_timestamp_seconds", {}) > 0


def _killed_holding_its_lock(ctx, tmp_path, hostname: str | None = None) -> list[str]:
    """A restic backup SIGKILLed while it held the repository's lock; the names in locks/.
    It is held at its gate (sidecar/worker/restic.py): restic reads its --exclude-file, here
    a FIFO, only once its lock is written and renamed into place, so no wait or deadline
    decides whether the lock is there. (Polling locks/ for any file raced restic's own
    write: the local backend writes `<id>-tmp-XXXX` first and renames it after an fsync, a
    long window under load, and a kill in it left only a temporary file, which no unlock
    removes: the flaky failure.) `hostname`: restic runs in a UTS namespace of that name."""
    gate = tmp_path / f"gate-{uuid.uuid4().hex[:8]}"
    os.mkfifo(gate)
    (tmp_path / "data").mkdir(exist_ok=True)
    argv = ["restic", "-r", str(ctx.store.root / "restic"), "--no-cache", "backup", str(tmp_path / "data"),
            "--exclude-file", str(gate)]
    if hostname is not None:
        argv = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname, *argv]
    proc = subprocess.Popen(argv, env={**os.environ, "RESTIC_PASSWORD": PASSWORD}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        fd = open_gate(proc, gate)
        assert fd is not None, proc.stderr.read()
        proc.kill()
        proc.wait()
        os.close(fd)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    names = sorted(p.name for p in (ctx.store.root / "restic" / "locks").iterdir())
    assert names and all(re.fullmatch(r"[0-9a-f]{64}", n) for n in names), names
    return names


@pytest.mark.slow  # test_recovery_removes_a_killed_workers_lock_and_never_a_live_one_or_another_hosts stays in the default run
def test_recovery_removes_a_stale_lock_of_a_killed_run(engine, rctx, tmp_path):
    _two_runs(engine, rctx, tmp_path)
    _killed_holding_its_lock(rctx, tmp_path)
    run_recovery(rctx)
    assert not list((rctx.store.root / "restic" / "locks").iterdir())


needs_unshare = pytest.mark.skipif(subprocess.run(["unshare", "--uts", "true"], capture_output=True).returncode != 0,
                                   reason="needs root for a UTS namespace (unshare --uts)")


@needs_unshare
def test_recovery_removes_a_killed_workers_lock_and_never_a_live_one_or_another_hosts(engine, rctx, tmp_path):
    """restic in a worker records the worker's host name and a pid of its own namespace, so
    restic's own unlock takes such a lock for another host's and keeps it for 30 minutes
    (prune, which needs the repository alone, fails meanwhile)."""
    _two_runs(engine, rctx, tmp_path)
    prefix = worker_host_prefix(rctx)
    [dead] = _killed_holding_its_lock(rctx, tmp_path, prefix + "deadbeef0001")
    live = set(_killed_holding_its_lock(rctx, tmp_path, prefix + "a11ve0000002")) - {dead}
    elsewhere = set(_killed_holding_its_lock(rctx, tmp_path, "another-host")) - {dead} - live
    engine.leftover_workers = [ContainerInfo("w", "w", IMAGE, "", ContainerState.RUNNING,
                                             {HOST_LABEL: prefix + "a11ve0000002"}, ())]
    run_recovery(rctx)
    assert {p.name for p in (rctx.store.root / "restic" / "locks").iterdir()} == live | elsewhere
    engine.leftover_workers = []  # the live worker ended without its unlock: the next recovery clears it
    run_recovery(rctx)
    assert {p.name for p in (rctx.store.root / "restic" / "locks").iterdir()} == elsewhere


def test_recovery_removes_a_killed_workers_temporary_packs_and_never_a_live_ones(engine, rctx):
    """restic's pack files on their way (TMPDIR: .sidecar/restic-tmp/HOST.ID of each worker)
    stay when a worker is killed; recovery removes those of workers that no longer run."""
    prefix = worker_host_prefix(rctx)
    tmp = rctx.store.root / ".sidecar" / "restic-tmp"
    folders = {name: tmp / name for name in (f"{prefix}deadbeef0001.aa", f"{prefix}a11ve0000002.bb",
                                             "restic-worker-0therno-de0000000003.cc")}
    for folder in folders.values():
        folder.mkdir(parents=True)
        (folder / "restic-temp-pack-123").write_bytes(b"x" * 1000)
    engine.leftover_workers = [ContainerInfo("w", "w", IMAGE, "", ContainerState.RUNNING,
                                             {HOST_LABEL: prefix + "a11ve0000002"}, ())]
    run_recovery(rctx)
    assert {p.name for p in tmp.iterdir()} == set(folders) - {f"{prefix}deadbeef0001.aa"}
    engine.leftover_workers = []
    run_recovery(rctx)  # another node's worker's folder (a shared backup volume) stays
    assert {p.name for p in tmp.iterdir()} == {"restic-worker-0therno-de0000000003.cc"}


def test_plan_and_list_show_snapshots_in_the_archive_vocabulary(engine, rctx, tmp_path):
    _two_runs(engine, rctx, tmp_path)
    [newest] = run_list_snapshots(rctx, "app")  # the first run's was forgotten (one per period)
    assert (newest.target, newest.volume, newest.frequency, newest.host) == ("app", "data", "daily", "fake-node")
    assert newest.name == f"app_data_{newest.date[:10]}_daily"
    [row] = run_plan(rctx)[0]
    assert row.latest == newest.name and row.copies == 1


def test_a_stop_targets_worker_holds_the_lock_before_the_stop_and_reads_what_the_stop_left(engine, rctx, tmp_path):
    """restic starts (key derivation, lock) before the stop and waits at its gate; the go
    comes once the container is down, so the snapshot is a read of the stopped volume: here
    the app's last write, made while it stops, is in it."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "state").write_text("running\n")
    engine.add_container("app-1", app_labels(strategy="stop"), {"/data": data})
    locks = rctx.store.root / "restic" / "locks"
    at_stop: list[list[str]] = []

    def on_stop(cid):
        at_stop.append(sorted(p.name for p in locks.iterdir()))
        (data / "state").write_text("stopped cleanly\n")  # the app's last write on SIGTERM

    engine.on_stop = on_stop
    assert run_backup(rctx, _target(rctx)).ok  # the first run creates the repository
    outcome = run_backup(rctx, _target(rctx))
    assert outcome.ok, outcome.error
    assert at_stop[-1], "restic held no lock when the container was stopped"
    [snap] = outcome.snapshots
    assert restic(rctx, "dump", snap.snapshot_id, f"{data}/state") == "stopped cleanly\n"  # the fake: host paths
    assert not list(locks.iterdir()) and not list((rctx.store.state_dir / "restic-go").iterdir())


def test_a_held_worker_is_called_off_when_the_stop_fails_and_leaves_no_lock_or_snapshot(engine, rctx, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    engine.add_container("app-1", app_labels(strategy="stop"), {"/data": data})
    assert run_backup(rctx, _target(rctx)).ok
    engine.fail("stop", EngineError("stop container: the engine said no"), times=1)
    outcome = run_backup(rctx, _target(rctx))
    assert outcome.result is BackupResult.FAILURE
    assert len(parse_snapshots(restic(rctx, "snapshots", "--json"))) == 1
    assert not list((rctx.store.root / "restic" / "locks").iterdir())


def test_a_held_worker_that_ends_before_its_gate_fails_the_backup_before_anything_stops(engine, rctx, tmp_path):
    """A worker that never reaches restic's gate (here: its container could not start; in the
    bench: an image of another protocol) took its go folder with it; the go was given anyway
    and the backup died with FileNotFoundError after the stop. It is judged before the stop."""
    data = tmp_path / "data"
    data.mkdir()
    app = engine.add_container("app-1", app_labels(strategy="stop"), {"/data": data})
    engine.fail("worker:restic-backup", EngineError("create worker container: the engine said no"), times=1)
    outcome = run_backup(rctx, _target(rctx))
    assert outcome.result is BackupResult.FAILURE
    assert "the engine said no" in str(outcome.error)
    assert not [c for c in engine.calls if c[0] == "stop"]
    assert engine.state(app.id) is ContainerState.RUNNING
    assert not list((rctx.store.state_dir / "restic-go").glob("*"))


@needs_unshare
@pytest.mark.slow  # a lock's corner during prune
def test_prune_clears_a_killed_workers_lock_instead_of_failing_for_30_minutes(engine, make_ctx, tmp_path):
    engine.worker_images.add(IMAGE)
    ctx = make_ctx(BACKUP_WORKER_IMAGE=IMAGE, BACKUP_FORMAT="restic", RESTIC_PASSWORD=PASSWORD,
                   BACKUP_PRUNE_DRY_RUN="true")
    _two_runs(engine, ctx, tmp_path)
    _killed_holding_its_lock(ctx, tmp_path, worker_host_prefix(ctx) + "deadbeef0003")
    result = run_prune(ctx, lambda name: ctx.discover().keep_for(name, ctx.settings.keep))
    assert result.ok and result.forgotten == 1, result
    assert not list((ctx.store.root / "restic" / "locks").iterdir())



def test_a_whole_volume_restore_empties_the_volume_in_restics_worker_and_starts_no_helper(engine, rctx, tmp_path,
                                                                                          monkeypatch):
    """One worker container empties the volume and runs restic restore (issue 21's restore
    time): no helper container, the container put back. The fake engine runs workers on the
    host, where the snapshot holds the volume's host path instead of /volume: restic
    restores it below a scratch folder (the worker's /restore) and the test reads it there."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "keep.bin").write_bytes(os.urandom(1 << 20))
    (data / "sub").mkdir()
    (data / "sub" / "notes.txt").write_text("notes\n")
    app = engine.add_container("app-1", app_labels(strategy="stop"), {"/data": data})
    assert run_backup(rctx, _target(rctx)).ok
    original = {p.relative_to(data): p.read_bytes() for p in data.rglob("*") if p.is_file()}
    (data / "keep.bin").write_bytes(b"changed")
    (data / ".stray").write_text("not in the snapshot\n")
    scratch = tmp_path / "restore-root"
    scratch.mkdir()
    monkeypatch.setattr(restore_snapshot, "VOLUME_PATH", str(data))  # the snapshot's one path here
    run_worker = engine.run_worker
    at_teardown: list[ContainerState] = []

    def restore_root_in_scratch(spec, on_line=None, on_start=None):
        if spec.purpose != "restic-restore":
            return run_worker(spec, on_line, on_start)
        spec = dataclasses.replace(spec, command=tuple(str(scratch) if a == "/restore" else a for a in spec.command))
        result = run_worker(spec, on_line, on_start)
        # The engine's teardown of the worker's container: the app does not wait for it (the
        # worker's `exit 0` record ended its writes); waited for, the app would still be stopped.
        deadline = time.monotonic() + 10
        while engine.state(app.id) is not ContainerState.RUNNING and time.monotonic() < deadline:
            time.sleep(0.01)
        at_teardown.append(engine.state(app.id))
        return result

    monkeypatch.setattr(engine, "run_worker", restore_root_in_scratch)
    done = run_restore_snapshot(rctx, "app", "data", force=True)
    assert at_teardown == [ContainerState.RUNNING]
    assert not any(data.iterdir())  # emptied, dot files too, by the worker
    restored = scratch / data.relative_to("/")
    assert {p.relative_to(restored): p.read_bytes() for p in restored.rglob("*") if p.is_file()} == original
    assert not engine.names("run_helper")  # no helper container emptied it
    [spec] = [s for s in engine.workers_run if s.purpose == "restic-restore"]
    emptied = spec.command[spec.command.index("--empty") + 1]
    assert [m.target for m in spec.mounts if not m.read_only] == [emptied]  # the one volume it writes: the target's
    assert engine.state(app.id) is ContainerState.RUNNING and done.downtime > 0
