"""backup.exec.* against the real engine: the user it runs as, its timeout (killed inside the
container too, nothing left stopped) and its output streamed, never held whole."""

from __future__ import annotations

import subprocess
import sys

from .support import REPO, wait_for
from .test_presets_postgres import RSS_WRAPPER


def _labels(**extra: str) -> dict[str, str]:
    return {"backup.enable": "true", "backup.image": "never", "backup.strategy": "stop", **extra}


def test_pre_command_runs_as_the_labelled_user(lab):
    vol = lab.volume("data")
    app = lab.workload("app", labels=_labels(**{"backup.exec.pre": "id -u > /data/uid; id -u",
                                                "backup.exec.user": "65534:65534"}), volumes={vol: "/data"})
    app.exec_run(["chmod", "777", "/data"])
    done = lab.cli("backup", "app")
    assert done.returncode == 0, done.stderr[-2000:]
    assert app.exec_run(["cat", "/data/uid"]).output.strip() == b"65534"
    assert '"line": "65534"' in done.stderr  # its output went to the log, line by line


def test_pre_command_past_its_timeout_is_killed_and_nothing_is_stopped(lab):
    vol = lab.volume("data")
    app = lab.workload("app", labels=_labels(**{"backup.exec.pre": "echo waiting; sleep 321",
                                                "backup.exec.timeout": "2"}), volumes={vol: "/data"})
    done = lab.cli("backup", "app")
    assert done.returncode != 0
    assert "backup.exec.pre ran past its timeout" in done.stdout + done.stderr and "waiting" in done.stderr
    assert lab.state(app) == "running"
    wait_for(lambda: b"sleep 321" not in app.exec_run(["ps", "-o", "args"]).output, timeout=20,
             what="the command killed in the container")
    assert lab.archives() == []


def test_pre_command_output_is_streamed_not_held(lab):
    vol = lab.volume("data")
    # 300 MB of output without a newline, then the tool's last words and a failure.
    command = "head -c 300000000 /dev/zero; echo; echo 'the last words'; exit 3"
    lab.workload("app", labels=_labels(**{"backup.exec.pre": command}), volumes={vol: "/data"})
    done = subprocess.run([sys.executable, "-c", RSS_WRAPPER, sys.executable, "-m", "sidecar", "backup", "app"],
                          cwd=REPO, env=lab.env(), capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "backup.exec.pre exited with 3" in done.stdout + done.stderr and "the last words" in done.stderr
    peak_kib = int(done.stderr.rsplit("MAXRSS=", 1)[1].split()[0])
    assert peak_kib < 150 * 1024, peak_kib
