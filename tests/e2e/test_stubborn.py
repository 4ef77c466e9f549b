"""A container that ignores SIGTERM: the stop is logged with its timeout, the engine's kill
is reported, and a sidecar told to stop meanwhile exits after its grace instead of waiting
out the engine's stop (the journal puts the container back on its next start)."""

from __future__ import annotations

import json
import signal
import time
import pytest

from .support import BUSYBOX, log_records, stderr_records, wait_for

STUBBORN = 'trap "" TERM; while :; do sleep 1; done'  # PID 1 ignoring SIGTERM: only SIGKILL stops it


def _stubborn(lab, labels: dict[str, str]):
    volume = lab.volume("data")
    lab.populate(volume, "echo v > v")
    return lab.container(BUSYBOX, name=f"{lab.project}-app", command=["sh", "-c", STUBBORN], network_mode="none",
                         volumes={volume: {"bind": "/data", "mode": "rw"}},
                         labels={"com.docker.compose.project": lab.project, "com.docker.compose.service": "app",
                                 "backup.enable": "true", "backup.strategy": "stop", **labels})


def test_a_killed_container_is_reported(lab):
    app = _stubborn(lab, {"backup.stop-timeout": "2"})
    done = lab.cli("backup", "app")
    assert done.returncode == 0, done.stderr
    records = stderr_records(done.stderr)
    [sent] = [r for r in records if r["message"] == "stop sent"]
    assert sent["stop_timeout"] == 2
    [killed] = [r for r in records if r["level"] == "WARNING" and "killed" in r["message"]]
    assert killed["container"] == app.name and killed["stop_timeout"] == 2 and killed["seconds"] >= 1.5
    assert lab.state(app) == "running"


@pytest.mark.slow  # test_compose's SIGTERM during a one-shot backup stays in the default run
def test_sigterm_does_not_wait_for_a_stop_in_flight(lab):
    app = _stubborn(lab, {"backup.stop-timeout": "20", "backup.schedule": "* * * * * */2"})
    daemon, log = lab.start_cli("run", log_name="daemon.log", BACKUP_SHUTDOWN_GRACE="1")
    wait_for(lambda: any(r["message"] == "stop sent" for r in log_records(log)), timeout=30,
             what="the scheduled backup to send its stop")
    daemon.send_signal(signal.SIGTERM)
    asked = time.monotonic()
    daemon.wait(30)
    took = time.monotonic() - asked
    # Grace (1 s) + the put-back window (5 s) + slack; the engine's stop runs 20 s.
    assert took < 10, f"the sidecar took {took:.1f} s to exit"
    messages = [r["message"] for r in log_records(log)]
    assert any("aborting backups" in m for m in messages)
    assert any("blocked in an engine call" in m for m in messages)
    journal = json.loads((lab.backup_dir / ".sidecar" / "journal.json").read_text())
    assert app.id in json.dumps(journal)

    # The engine's stop ends in its kill; the next start puts the container back.
    wait_for(lambda: lab.state(app) == "exited", timeout=30, what="the engine to kill the container")
    again, _log = lab.start_cli("run", log_name="daemon2.log", BACKUP_SHUTDOWN_GRACE="1")
    wait_for(lambda: lab.state(app) == "running", timeout=30, what="recovery to start the container again")
    again.send_signal(signal.SIGTERM)
    again.wait(30)
