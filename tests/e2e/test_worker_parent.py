"""A worker never outlives the sidecar that started it (issue 20), on the real engine: the
sidecar SIGKILLed while a stop backup's held mirror worker waits for its go; the worker
is gone within seconds and the target's volume can be removed (`docker-compose down -v`
failed with `volume is in use` before)."""

from __future__ import annotations

import os
import signal
import time

import docker.errors

from .support import BUSYBOX

GONE_WITHIN = 10.0  # seconds from the SIGKILL


def _go_workers(client, volume: str) -> list[dict]:
    rows = client.api.containers(all=True, filters={"label": "backup-sidecar.worker=mirror", "volume": volume})
    return [r for r in rows if "--hold" in r.get("Command", "")]  # mirror --hold: one worker per backup


def _poll(what, deadline: float, interval: float = 0.1):
    end = time.monotonic() + deadline
    while True:
        got = what()
        if got or time.monotonic() > end:
            return got
        time.sleep(interval)


def test_a_killed_sidecar_leaves_no_worker_and_the_volume_can_be_removed(lab, worker_image):
    volume = lab.volume("dbdata")
    lab.populate(volume, "mkdir -p db && dd if=/dev/urandom of=db/data bs=1k count=256 2>/dev/null")
    # A container slow to stop (it ignores SIGTERM): the held mirror worker waits for its go
    # all that time, as it waits while a database shuts down.
    target = lab.container(BUSYBOX, name=f"{lab.project}-db", command=["sh", "-c", 'trap "" TERM; while :; do sleep 1; done'],
                           labels={"backup.enable": "true", "backup.strategy": "stop", "backup.stop-timeout": "120",
                                   "com.docker.compose.project": lab.project, "com.docker.compose.service": "db"},
                           volumes={volume: {"bind": "/data", "mode": "rw"}}, network_mode="none")
    proc, log = lab.start_cli("backup", "db", BACKUP_WORKER_IMAGE=worker_image)
    waiting = _poll(lambda: [r for r in _go_workers(lab.client, volume) if r["State"] == "running"], 120)
    assert waiting, f"no held mirror worker came up: {log.read_text()[-2000:]}"

    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    killed = time.monotonic()
    gone = _poll(lambda: not _go_workers(lab.client, volume), GONE_WITHIN)
    print(f"worker gone {time.monotonic() - killed:.2f} s after the sidecar's SIGKILL")
    assert gone, f"a worker outlived its sidecar: {_go_workers(lab.client, volume)}"

    lab.client.api.remove_container(target.id, force=True)
    try:
        lab.client.api.remove_volume(volume)
    except docker.errors.APIError as exc:  # e.g. "volume is in use"
        raise AssertionError(f"the volume could not be removed after the sidecar died: {exc}") from None
