"""backup.format=restic to the destinations that are not S3 (tests/e2e/test_restic.py has
S3): a second disk (a folder) and an rclone remote (a real `rclone serve sftp`, restic's
own rclone backend), against FakeEngine and a real restic. Each destination's repository
opens with the plain restic CLI and holds the snapshots; a destination down fails the copy
with a clear message and the copies' state (plan, metrics) says so, and the next run after
it healed copies what it missed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sidecar.actions.backup import run_backup
from sidecar.actions.listing import run_list_snapshots
from sidecar.actions.plan import run_plan
from sidecar.actions.restore_dump import run_restore_dump
from sidecar.actions.status import copy_states
from sidecar.core.errors import NotFound
from sidecar.telemetry.metrics import Metrics, TargetView
from sidecar.store.restic import Repository
from tests.e2e.rcloneserver import RcloneServer

from .conftest import app_labels
from .test_presets import DUMPALL_END, _postgres
from .test_restic import IMAGE, PASSWORD, _target

pytestmark = [pytest.mark.usefixtures("fresh_worker_reader"),
              pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed (scripts/test "
                                 "installs it)")]


def _snapshots(location: str, **env: str) -> list[dict]:
    done = subprocess.run(["restic", "-r", location, "--no-cache", "snapshots", "--json"],
                          env={**os.environ, "RESTIC_PASSWORD": PASSWORD, **env}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _app(engine, tmp_path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f.bin").write_bytes(os.urandom(1 << 20))
    engine.add_container("app-1", app_labels(strategy="hot"), {"/data": data})
    return data


def _offsite(ctx, destination: str) -> float | None:
    metrics = Metrics(state_path=ctx.store.state_dir / "metrics.json")
    target = _target(ctx)
    metrics.discovered([TargetView("app", ("data",), 0.0, 86400.0)], 0)
    metrics.copy_state(copy_states(ctx, [target]))
    return metrics.registry.get_sample_value("backup_sidecar_offsite_last_success_timestamp_seconds",
                                             {"target": "app", "volume": "data", "destination": destination})


@pytest.mark.slow  # a second disk's repository; e2e test_restic keeps a destination in the default run
def test_a_second_disk_takes_a_repository_and_a_missing_mount_is_never_created(engine, make_ctx, tmp_path):
    engine.worker_images.add(IMAGE)
    disk = tmp_path / "disk"
    ctx = make_ctx(BACKUP_WORKER_IMAGE=IMAGE, BACKUP_FORMAT="restic", RESTIC_PASSWORD=PASSWORD,
                   BACKUP_DESTINATIONS=str(disk), BACKUP_PRUNE_DRY_RUN="true")
    data = _app(engine, tmp_path)
    # The disk is not mounted: the copy fails and says so; nothing is created in its place.
    down = run_backup(ctx, _target(ctx))
    assert down.ok and down.snapshots
    assert down.offsite_error and "local" in down.offsite_error and "is the disk mounted" in down.offsite_error
    assert not disk.exists()
    [row] = run_plan(ctx)[0]
    assert row.copies == 1 and row.offsite == "missing" and row.destinations == {"local": "missing"}
    assert _offsite(ctx, "local") == 0
    # Mounted again: the next run copies both snapshots, the one it missed too.
    disk.mkdir()
    (data / "f.bin").write_bytes(os.urandom(1 << 20))
    healed = run_backup(ctx, _target(ctx))
    assert healed.ok and healed.offsite_error is None, healed.offsite_error
    there = _snapshots(str(disk / "restic"))
    assert sorted(s["original"][:8] for s in there) == sorted(s.snapshot_id[:8] for s in down.snapshots + healed.snapshots)
    [row] = run_plan(ctx)[0]
    assert row.copies == 2 and row.destinations["local"].startswith("verified")
    assert _offsite(ctx, "local") > 0


def _served(kind: str, root: Path, password: str, log: Path):
    """An rclone server (`rclone serve KIND`) for the test's life."""
    if not RcloneServer.available():
        pytest.skip("rclone is not installed (scripts/test installs it)")
    server = RcloneServer(kind, root, "backup", password, log)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def sftp(tmp_path):
    yield from _served("sftp", tmp_path / "nas-root", "nas-Pw-5", tmp_path / "sftp.log")


@pytest.mark.slow  # a real SFTP server and an outage; e2e test_restic keeps a destination in the default run
def test_an_rclone_remote_takes_a_repository_and_catches_up_after_an_outage(engine, make_ctx, tmp_path, sftp):
    engine.worker_images.add(IMAGE)
    obscured = subprocess.run(["rclone", "obscure", sftp.password], capture_output=True, text=True,
                              check=True).stdout.strip()
    remote = {"RCLONE_CONFIG_NAS_TYPE": "sftp", "RCLONE_CONFIG_NAS_HOST": "127.0.0.1",
              "RCLONE_CONFIG_NAS_PORT": str(sftp.port), "RCLONE_CONFIG_NAS_USER": sftp.user,
              "RCLONE_CONFIG_NAS_PASS": obscured, "RCLONE_RETRIES": "1", "RCLONE_CONTIMEOUT": "5s"}
    ctx = make_ctx(BACKUP_WORKER_IMAGE=IMAGE, BACKUP_FORMAT="restic", RESTIC_PASSWORD=PASSWORD,
                   BACKUP_DESTINATIONS="nas:backups/host1", BACKUP_PRUNE_DRY_RUN="true", **remote)
    data = _app(engine, tmp_path)
    first = run_backup(ctx, _target(ctx))
    assert first.ok and first.offsite_error is None, first.offsite_error
    # The repository is on the SFTP server's disk, and opens with the plain CLI through rclone.
    assert (sftp.root / "backups" / "host1" / "restic" / "config").is_file()
    assert [s["original"][:8] for s in _snapshots("rclone:nas:backups/host1/restic", **remote)] == \
        [first.snapshots[0].snapshot_id[:8]]  # restic copy: a new id, the original named
    stamp = _offsite(ctx, "nas")
    assert stamp and stamp > 0

    sftp.stop()
    (data / "f.bin").write_bytes(os.urandom(1 << 20))
    down = run_backup(ctx, _target(ctx))
    assert down.ok and down.offsite_error and down.offsite_error.startswith("nas: ")
    [row] = run_plan(ctx)[0]
    assert row.copies == 1 and row.destinations["nas"].startswith("behind")
    assert _offsite(ctx, "nas") == stamp  # the last success stays where it was

    sftp.start()
    (data / "f.bin").write_bytes(os.urandom(1 << 20))
    healed = run_backup(ctx, _target(ctx))
    assert healed.ok and healed.offsite_error is None, healed.offsite_error
    there = {s["original"][:8] for s in _snapshots("rclone:nas:backups/host1/restic", **remote)}
    assert there == {o.snapshots[0].snapshot_id[:8] for o in (first, down, healed)}
    assert _offsite(ctx, "nas") > stamp
    [row] = run_plan(ctx)[0]
    assert row.copies == 2


@pytest.fixture
def webdav(tmp_path):
    yield from _served("webdav", tmp_path / "dav-root", "dav-Pw-7", tmp_path / "webdav.log")


@pytest.mark.slow  # a destination variant with a real server; the default run keeps e2e test_restic's S3 copy
def test_a_webdav_remote_takes_a_repository_looked_for_once_and_made_again_when_gone(engine, make_ctx, tmp_path,
                                                                                     webdav, monkeypatch):
    """restic's rclone backend on a WebDAV server (`rclone serve webdav`): the repository is
    created once, later runs copy without looking for it first (each look is a restic
    start with its key derivation), and a repository that vanished is created again by the
    run that finds it gone, which still copies."""
    engine.worker_images.add(IMAGE)
    obscured = subprocess.run(["rclone", "obscure", webdav.password], capture_output=True, text=True,
                              check=True).stdout.strip()
    remote = {"RCLONE_CONFIG_DAV_TYPE": "webdav", "RCLONE_CONFIG_DAV_URL": f"http://127.0.0.1:{webdav.port}/",
              "RCLONE_CONFIG_DAV_VENDOR": "other", "RCLONE_CONFIG_DAV_USER": webdav.user,
              "RCLONE_CONFIG_DAV_PASS": obscured, "RCLONE_RETRIES": "1", "RCLONE_CONTIMEOUT": "5s"}
    ctx = make_ctx(BACKUP_WORKER_IMAGE=IMAGE, BACKUP_FORMAT="restic", RESTIC_PASSWORD=PASSWORD,
                   BACKUP_DESTINATIONS="dav:backups/host1", BACKUP_PRUNE_DRY_RUN="true", **remote)
    looked: list[str] = []
    exists = Repository.exists
    monkeypatch.setattr(Repository, "exists", lambda self: looked.append(self.location) or exists(self))
    data = _app(engine, tmp_path)
    runs = [run_backup(ctx, _target(ctx))]
    assert runs[0].ok and runs[0].offsite_error is None, runs[0].offsite_error
    assert (webdav.root / "backups" / "host1" / "restic" / "config").is_file()
    assert looked.count("rclone:dav:backups/host1/restic") == 1
    (data / "f.bin").write_bytes(os.urandom(1 << 20))
    runs.append(run_backup(ctx, _target(ctx)))
    assert runs[1].ok and runs[1].offsite_error is None, runs[1].offsite_error
    assert looked.count("rclone:dav:backups/host1/restic") == 1  # not looked for again
    webdav.stop()  # the repository gone: a wiped server (rclone's server caches its listings: restarted)
    shutil.rmtree(webdav.root / "backups")
    webdav.start()
    (data / "f.bin").write_bytes(os.urandom(1 << 20))
    runs.append(run_backup(ctx, _target(ctx)))
    assert runs[2].ok and runs[2].offsite_error is None, runs[2].offsite_error
    there = [s["original"][:8] for s in _snapshots("rclone:dav:backups/host1/restic", **remote)]
    assert runs[2].snapshots[0].snapshot_id[:8] in there  # made again, with this run's snapshot
    assert _offsite(ctx, "dav") > 0  # the copies' state: the destination holds the newest


@pytest.mark.slow  # per-node snapshots (the Swarm group)
def test_another_nodes_snapshots_are_listed_and_restored_with_node(engine, make_ctx, tmp_path):
    """A Swarm of two nodes sharing one destination: node-b lists node-a's snapshots in the
    destination's repository with --node and restores one of them; without --node it looks
    for its own and names the node that has some. (A preset's dump: the fake engine's
    workers see a volume at its host folder, not at /volume, so a volume snapshot taken here
    is refused by the restore, as one not written by a worker would be.)"""
    engine.worker_images.add(IMAGE)
    disk = tmp_path / "disk"
    disk.mkdir()
    common = dict(BACKUP_WORKER_IMAGE=IMAGE, BACKUP_FORMAT="restic", RESTIC_PASSWORD=PASSWORD,
                  BACKUP_DESTINATIONS=str(disk))
    node_a = make_ctx(BACKUP_NODE_NAME="node-a", BACKUP_DIR=str(tmp_path / "a"), **common)
    node_b = make_ctx(BACKUP_NODE_NAME="node-b", BACKUP_DIR=str(tmp_path / "b"), **common)
    received = tmp_path / "received.sql"
    _postgres(engine, tmp_path, pg_dumpall=f'printf "SELECT 1;\\n%s" "{DUMPALL_END}"',
              psql=f'case "$*" in *-c*) echo 0;; *) cat > {received};; esac')
    done = run_backup(node_a, _target(node_a))
    assert done.ok and done.offsite_error is None, done.offsite_error
    assert run_list_snapshots(node_b, "app") == []  # node-b's own repository is empty
    [row] = run_list_snapshots(node_b, "app", node="node-a")
    assert (row.host, row.volume, row.target) == ("node-a", "postgres+dump", "app")
    assert run_list_snapshots(node_b, "app", node="node-c") == []
    assert [r.host for r in run_list_snapshots(node_b, "app", remote=True)] == ["node-a"]

    with pytest.raises(NotFound, match="taken on node node-b.*node node-a.*--node"):
        run_restore_dump(node_b, "app", "latest", from_remote="local", restic=True)
    outcome = run_restore_dump(node_b, "app", "latest", node="node-a", restic=True)
    assert str(outcome.archive) == row.name and received.read_text() == "SELECT 1;\n" + DUMPALL_END
