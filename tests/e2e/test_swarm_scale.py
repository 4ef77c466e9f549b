"""Issue 13, `backup.strategy=stop` of a replicated Swarm service on the two-node lab
(tests/e2e/swarm.py): the service is scaled to 0 and back to its exact replica count, also
when the sidecar's task is SIGKILLed mid-backup (its next task scales it back from the
journal on the node's backup volume); a restore scales it the same way.

The sidecar runs as a global service (host network) on both nodes; the replicated service is
pinned to the manager (only a manager can scale, and a local volume does not move)."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import threading
import uuid

import pytest

from .swarm import IDLE, s3_env
from .support import Watcher, wait_for

pytestmark = pytest.mark.slow

SIDECAR = "bsc"
DB = "db"
DB_VOLUME = "dbdata"
BACKUP_VOLUME = "bsc-backups"
REPLICAS = 2


@pytest.fixture(scope="module")
def scaled(swarm_lab, swarm_s3, worker_image):
    lab = swarm_lab
    before = lab.snapshot()
    bucket = "bst-scale-" + uuid.uuid4().hex[:12]
    swarm_s3.client().create_bucket(Bucket=bucket)
    try:
        lab.deploy_sidecar(worker_image, {"BACKUP_PROJECT": "*", "LOG_FORMAT": "json", "TZ": "UTC", "METRICS_PORT": "0",
                                          **s3_env(swarm_s3, bucket, "scale")},
                           name=SIDECAR, backup_volume=BACKUP_VOLUME)
        manager = lab.manager
        lab.create_service(DB, "--replicas", str(REPLICAS), "--constraint", f"node.hostname=={manager.name}",
                           "--mount", f"type=volume,src={DB_VOLUME},dst=/data",
                           "--container-label", "backup.enable=true", "--container-label", f"backup.name={DB}",
                           "--container-label", "backup.strategy=stop",
                           # A long stopped read (no staging mirror, gzip) gives the kill test its window.
                           "--container-label", "backup.mirror=false", "--container-label", "backup.compression=gzip",
                           command=["sh", "-c", IDLE])
        lab.wait_running(DB, REPLICAS)
        lab.run_on(manager, "echo 'the data' > who.txt; mkdir -p sub; head -c 60000000 /dev/urandom > sub/blob.bin",
                   {DB_VOLUME: "/data"})
        yield lab
    finally:
        lab.restore(before)


def replica_watch(lab, service: str) -> Watcher:
    """What a stop made of the service's replica count meanwhile (`.values`)."""
    return Watcher(lambda: lab.replicas(service), interval=0.1)


def diagnose(lab, service: str) -> str:
    """What Swarm says of the service's tasks, and the last log lines of its containers on the manager."""
    ps = lab.manager.docker("service", "ps", "--no-trunc", service).stdout
    logs = []
    for c in lab.service_containers(service, lab.manager, all=True):
        logs.append(f"--- {c.name} ({c.status})\n" + c.logs(tail=30).decode(errors="replace"))
    return ps + "\n".join(logs)


def journal(lab) -> list[dict]:
    files = lab.volume_tar(lab.manager, BACKUP_VOLUME)
    raw = files.get(".sidecar/journal.json")
    return json.loads(raw).get("interrupted", []) if raw else []


def gz_files(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data)), mode="r:") as tar:
        return {m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar if m.isfile()}


def test_stop_scales_the_service_to_zero_and_back_to_its_count(scaled):
    lab = scaled
    version = lab.service_version(DB)
    with replica_watch(lab, DB) as watch:
        code, out = lab.sidecar(lab.manager, "backup", DB, service=SIDECAR)
    assert code == 0, out[-3000:]
    assert 0 in watch.values, f"never seen at 0 replicas: {watch.values}"
    assert lab.replicas(DB) == REPLICAS and lab.service_version(DB) > version
    lab.wait_running(DB, REPLICAS)
    assert journal(lab) == []
    backups = lab.volume_tar(lab.manager, BACKUP_VOLUME)
    (name,) = [k for k in backups if k.startswith(f"daily/{DB}_{DB_VOLUME}_") and k.endswith(".tar.gz")]
    assert gz_files(backups[name]) == lab.volume_tar(lab.manager, DB_VOLUME)


def test_a_sidecar_killed_mid_backup_scales_it_back_from_the_journal(scaled):
    lab = scaled
    manager = lab.manager
    old = lab.task_container(SIDECAR, manager).id
    result = {}
    runner = threading.Thread(target=lambda: result.update(out=lab.sidecar(manager, "backup", DB, service=SIDECAR)),
                              daemon=True)
    runner.start()
    wait_for(lambda: lab.replicas(DB) == 0, timeout=120, interval=0.05, what=f"{DB} scaled to 0 by the backup")
    entries = journal(lab)
    assert [(e["action"], e["replicas"]) for e in entries] == [("scaled", REPLICAS)], entries
    lab.kill_task_container(SIDECAR, manager)  # SIGKILL: no put back by the process itself
    runner.join(60)
    try:
        lab.wait_replaced(SIDECAR, manager, old, timeout=240)  # Swarm starts a new sidecar task; its start runs recovery
    except AssertionError as err:
        raise AssertionError(f"{err}\n{diagnose(lab, SIDECAR)}") from None
    wait_for(lambda: lab.replicas(DB) == REPLICAS, timeout=180, interval=0.5,
             what=f"{DB} scaled back to {REPLICAS} by the new sidecar task")
    lab.wait_running(DB, REPLICAS)
    wait_for(lambda: journal(lab) == [], timeout=60, interval=0.5, what="the journal entry cleared")


def test_a_restore_scales_to_zero_and_back(scaled):
    lab = scaled
    manager = lab.manager
    code, out = lab.sidecar(manager, "backup", DB, service=SIDECAR)
    assert code == 0, out[-3000:]
    before = lab.volume_tar(manager, DB_VOLUME)
    lab.run_on(manager, "echo changed > who.txt; rm -rf sub", {DB_VOLUME: "/data"})
    with replica_watch(lab, DB) as watch:
        code, out = lab.sidecar(manager, "restore", DB, "--volume", DB_VOLUME, "--force", service=SIDECAR)
    assert code == 0, out[-3000:]
    assert 0 in watch.values and lab.replicas(DB) == REPLICAS
    lab.wait_running(DB, REPLICAS)
    assert lab.volume_tar(manager, DB_VOLUME) == before
    assert journal(lab) == []


def test_the_worker_node_refuses_a_replicated_stop_with_the_reason(scaled):
    lab = scaled
    # The same labels on a service of the worker node: the worker's sidecar cannot scale it.
    lab.create_service("wdb", "--replicas", "1", "--constraint", f"node.hostname=={lab.worker.name}",
                       "--mount", "type=volume,src=wdbdata,dst=/data",
                       "--container-label", "backup.enable=true", "--container-label", "backup.name=wdb",
                       "--container-label", "backup.strategy=stop", command=["sh", "-c", IDLE])
    try:
        lab.wait_running("wdb", 1)
        code, out = lab.sidecar(lab.worker, "plan", service=SIDECAR)
        assert code == 0, out
        assert "wdb" in out and "manager" in out and "worker" in out, out
        assert lab.replicas("wdb") == 1
    finally:
        lab.remove_service("wdb")
