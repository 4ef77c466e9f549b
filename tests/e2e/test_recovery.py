"""A sidecar killed while it has a container stopped or paused puts it back on its next start."""

from __future__ import annotations

import json
import signal

import pytest

from .support import log_records, wait_for

# gzip of random data is slow enough that the read lasts a few seconds: time to kill.
SLOW_DATA = "dd if=/dev/urandom of=blob bs=1M count=150 2>/dev/null"


@pytest.mark.parametrize("strategy, interrupted", [  # pause: the slow group (the actions tier covers both)
    ("stop", "exited"), pytest.param("pause", "paused", marks=pytest.mark.slow)])
def test_sigkill_mid_backup_is_repaired_on_next_start(lab, strategy, interrupted):
    volume = lab.volume("data")
    lab.populate(volume, SLOW_DATA)
    app = lab.workload("app", {"backup.enable": "true", "backup.strategy": strategy,
                               "backup.compression": "gzip"}, {volume: "/data"})

    proc, _log = lab.start_cli("backup", "app", log_name="killed.log")
    wait_for(lambda: lab.state(app) == interrupted or proc.poll() is not None, timeout=60, interval=0.01,
             what=f"the container to be {interrupted}")
    assert proc.poll() is None, "the backup finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)

    # Nobody put it back: the journal on the backup volume names it.
    assert lab.state(app) == interrupted
    journal = json.loads((lab.backup_dir / ".sidecar" / "journal.json").read_text())
    assert [e["container_id"] for e in journal["interrupted"]] == [app.id]
    assert oct((lab.backup_dir / ".sidecar" / "journal.json").stat().st_mode & 0o777) == "0o600"
    partials = list(lab.backup_dir.rglob("*.partial"))
    assert partials and not lab.archives()  # half-written, nothing that looks finished

    daemon, log = lab.start_cli("run", log_name="daemon.log")
    wait_for(lambda: lab.state(app) == "running", timeout=60, what="the daemon to put the container back")
    wait_for(lambda: any("put back" in r["message"] for r in log_records(log)), timeout=30,
             what="the daemon to log the repair")
    record = next(r for r in log_records(log) if "put back" in r["message"])
    assert record["container"] == app.name and record["level"] == "WARNING"
    assert not list(lab.backup_dir.rglob("*.partial"))
    assert json.loads((lab.backup_dir / ".sidecar" / "journal.json").read_text())["interrupted"] == []
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0


def test_sigterm_aborts_a_backup_and_restarts_the_container(lab):
    volume = lab.volume("data")
    lab.populate(volume, SLOW_DATA)
    app = lab.workload("app", {"backup.enable": "true", "backup.strategy": "stop",
                               "backup.compression": "gzip"}, {volume: "/data"})
    proc, log = lab.start_cli("backup", "app")
    wait_for(lambda: lab.state(app) == "exited" or proc.poll() is not None, timeout=60, interval=0.01,
             what="the container to be stopped")
    assert proc.poll() is None, "the backup finished before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 1
    assert lab.state(app) == "running"
    assert not lab.archives() and not list(lab.backup_dir.rglob("*.partial"))
    assert any(r["message"] == "backup failed" and "shutting down" in r["error"] for r in log_records(log))


def test_daemon_sigterm_mid_backup_puts_the_container_back_within_the_grace(lab):
    volume = lab.volume("data")
    lab.populate(volume, SLOW_DATA)
    app = lab.workload("app", {"backup.enable": "true", "backup.strategy": "stop", "backup.compression": "gzip",
                               "backup.schedule": "* * * * * */2"}, {volume: "/data"})
    daemon, log = lab.start_cli("run", log_name="daemon.log", BACKUP_SHUTDOWN_GRACE="1")
    wait_for(lambda: lab.state(app) == "exited", timeout=60, interval=0.01, what="a scheduled stop")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(10) == 0  # compose's default grace period is 10 s
    assert lab.state(app) == "running"
    assert not list(lab.backup_dir.rglob("*.partial"))
    messages = [r["message"] for r in log_records(log)]
    assert "aborting backups still running; their containers are put back" in messages


@pytest.mark.slow  # the actions tier covers the run lock beside a running backup
def test_one_shot_command_beside_a_running_backup_leaves_it_alone(lab):
    """`docker compose exec backup backup-sidecar backup other` while the daemon has a
    container stopped: the one-shot command's start-up recovery must not start that
    container nor delete the daemon's partial archive."""
    volume = lab.volume("data")
    lab.populate(volume, SLOW_DATA)
    app = lab.workload("app", {"backup.enable": "true", "backup.strategy": "stop", "backup.compression": "gzip",
                               "backup.schedule": "* * * * * */2"}, {volume: "/data"})
    other_vol = lab.volume("other")
    lab.workload("other", {"backup.enable": "true", "backup.strategy": "hot"}, {other_vol: "/data"})
    daemon, log = lab.start_cli("run", log_name="daemon.log")
    wait_for(lambda: lab.state(app) == "exited", timeout=60, interval=0.01, what="the daemon to stop the app")

    beside = lab.cli("backup", "other")
    assert beside.returncode == 0, beside.stderr
    assert lab.state(app) == "exited"  # still down: the daemon is reading it
    assert list(lab.backup_dir.rglob("app_*.partial"))

    wait_for(lambda: lab.archives("app_data_*"), timeout=120, what="the daemon's backup to complete")
    wait_for(lambda: lab.state(app) == "running", timeout=30, what="the app to run again")
    # "backup finished" follows the archive and the restart (after rotation and the sync).
    wait_for(lambda: any(r["message"] == "backup finished" and r["target"] == "app" for r in log_records(log)),
             timeout=30, what="the daemon to log the finished backup")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
