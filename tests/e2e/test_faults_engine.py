"""Issue 11's fault suite, the engine's part: the Docker engine restarted while the daemon
idles and while a backup runs. A second engine of the test's own (TESTBED.md, "A second
Docker engine", tests/e2e/netns_engine.py), so the shared one is never disturbed; busybox is loaded into it with
`docker save | docker load`."""

from __future__ import annotations

import signal
import subprocess

import docker
import pytest

from .netns_engine import NamespacedEngine, tools_missing
from .support import BUSYBOX, IDLE, log_records, wait_for
from .test_faults import SLOW_DATA, assert_nothing_incomplete, journal

pytestmark = pytest.mark.slow


@pytest.fixture
def engine2(docker_client, tmp_path):
    if tools_missing():
        pytest.skip(tools_missing())
    engine = NamespacedEngine(tmp_path / "engine2")
    try:
        client = engine.start()
    except BaseException:
        engine.remove()
        raise
    saved = subprocess.Popen(["docker", "save", BUSYBOX], stdout=subprocess.PIPE)
    loaded = subprocess.run(["docker", "-H", engine.url, "load"], stdin=saved.stdout, capture_output=True)
    saved.wait(120)
    assert loaded.returncode == 0, loaded.stderr
    engine.client = client
    yield engine
    try:
        for container in client.containers.list(all=True):
            container.remove(force=True, v=True)
    except docker.errors.DockerException:
        pass
    client.close()
    engine.remove()


def _workload(client, project: str, labels: dict[str, str], volume: str, script: str | None = None):
    client.volumes.create(volume)
    if script:
        client.containers.run(BUSYBOX, ["sh", "-c", f"cd /data && {script}"], remove=True, network_mode="none",
                              volumes={volume: {"bind": "/data", "mode": "rw"}})
    return client.containers.run(
        BUSYBOX, ["sh", "-c", IDLE], detach=True, name=f"{project}-app", network_mode="none",
        restart_policy={"Name": "unless-stopped"},  # as Compose services usually are
        volumes={volume: {"bind": "/data", "mode": "rw"}},
        labels={"com.docker.compose.project": project, "com.docker.compose.service": "app", **labels})


def _state(client, container) -> str:
    return client.api.inspect_container(container.id)["State"]["Status"]


def test_engine_restarted_while_the_daemon_idles(lab, engine2):
    client = engine2.client
    project = lab.project
    app = _workload(client, project, {"backup.enable": "true", "backup.strategy": "stop"}, f"{project}_data",
                    "echo v > v.txt")
    daemon, log = lab.start_cli("run", log_name="daemon.log", DOCKER_HOST=engine2.url)
    wait_for(lambda: any(r["message"] == "sidecar running" for r in log_records(log)), timeout=60,
             what="the daemon to start")

    engine2.stop()
    engine2.client = client = engine2.start()
    wait_for(lambda: _state(client, app) == "running", timeout=60, what="the app to come back with the engine")
    wait_for(lambda: any("reconnecting" in r["message"] for r in log_records(log)), timeout=60,
             what="the daemon to notice the engine went away")
    # Re-listed and following events again: a container labelled after the restart is seen.
    client.volumes.create(f"{project}_new")
    client.containers.run(BUSYBOX, ["sh", "-c", IDLE], detach=True, name=f"{project}-new", network_mode="none",
                          volumes={f"{project}_new": {"bind": "/data", "mode": "rw"}},
                          labels={"com.docker.compose.project": project, "com.docker.compose.service": "new",
                                  "backup.enable": "true", "backup.strategy": "hot"})
    wait_for(lambda: any(r["message"] == "target found" and r.get("target") == "new" for r in log_records(log)),
             timeout=90, what="the daemon to find a container created after the restart")
    assert daemon.poll() is None
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0

    done = lab.cli("backup", "app", DOCKER_HOST=engine2.url)
    assert done.returncode == 0, done.stderr
    assert _state(client, app) == "running"
    assert len(assert_nothing_incomplete(lab)) == 1


def test_engine_restarted_while_a_backup_runs(lab, engine2):
    client = engine2.client
    project = lab.project
    app = _workload(client, project, {"backup.enable": "true", "backup.strategy": "stop",
                                      "backup.compression": "gzip", "backup.schedule": "* * * * * */5"},
                    f"{project}_data", SLOW_DATA)
    daemon, log = lab.start_cli("run", log_name="daemon.log", DOCKER_HOST=engine2.url)
    wait_for(lambda: _state(client, app) == "exited", timeout=120, interval=0.02, what="a scheduled backup's stop")

    engine2.stop()  # the engine goes away mid-read
    wait_for(lambda: any(r["message"] == "backup failed" for r in log_records(log)), timeout=120,
             what="the backup to fail")
    engine2.client = client = engine2.start()
    # unless-stopped: the engine does not start a container that was stopped; the daemon does.
    wait_for(lambda: _state(client, app) == "running", timeout=120, what="the daemon to put the app back")
    wait_for(lambda: any(r["message"] == "backup finished" for r in log_records(log)), timeout=300,
             what="a later scheduled backup to succeed")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(60) == 0
    assert _state(client, app) == "running"
    assert lab.archives("app_*") and journal(lab) == []
    assert_nothing_incomplete(lab)
    failed = [r for r in log_records(log) if r["message"] == "backup failed"]
    assert failed and failed[0]["level"] == "ERROR"
