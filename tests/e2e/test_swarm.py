"""Issue 13 end to end, on the two-node Swarm lab (tests/e2e/swarm.py): the sidecar image as a
global service on node1 (manager) and node2 (worker), each backing up its own node's volume
to the shared SeaweedFS under its node's prefix; the fleet's metrics scraped through the
tasks' addresses on an overlay network (as Prometheus does with `tasks.backup`) and through
the nodes' addresses (a port published in host mode); a replicated service backed up by its
slot-1 node only; a restore on
node2 from node1's prefix.

Contract (issue 13): node name = the engine's `docker info` Name; with BACKUP_NODE_PREFIX=auto
(default) on a swarm node every destination path gets `{node}/` after the destination's own
prefix; every metric has a `node` label; a manager's sidecar exports
backup_sidecar_swarm_node_ready{swarm_node=...}; `restore NAME --from s3 --node OTHER`.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import uuid

import pytest
import zstandard

from .swarm import IDLE, metric_samples, s3_env, scrape, sidecar_service_options
from .support import wait_for

pytestmark = pytest.mark.slow

SIDECAR = "backup"  # the sidecar's service name: Prometheus finds it as tasks.backup
APP = "app"
APP_VOLUME = "appdata"
BACKUP_VOLUME = "bst-backups"  # the sidecar's backup volume, one per node
METRICS_PORT = 9918
NODE_METRICS_PORT = 19918  # published in host mode: each task on its node's address
PREFIX = "fleet"


@pytest.fixture(scope="module")
def fleet(swarm_lab, swarm_s3, worker_image):
    """The sidecar as a global service on an attachable overlay network, with S3 settings for a
    bucket of the module's own; a labelled global app with a named volume holding different
    bytes on each node. Everything removed at the end of the module."""
    lab = swarm_lab
    before = lab.snapshot()
    bucket = "bst-swarm-" + uuid.uuid4().hex[:12]
    swarm_s3.client().create_bucket(Bucket=bucket)
    try:
        lab.manager.docker("network", "create", "-d", "overlay", "--attachable", "fleet")
        env = {"BACKUP_PROJECT": "*", "LOG_FORMAT": "json", "TZ": "UTC",
               "METRICS_PORT": str(METRICS_PORT), "METRICS_ADDR": "0.0.0.0", **s3_env(swarm_s3, bucket, PREFIX)}
        lab.create_service(SIDECAR, *sidecar_service_options(lab, env, network="fleet", backup_volume=BACKUP_VOLUME,
                                                             publish=(NODE_METRICS_PORT, METRICS_PORT)),
                           image=worker_image)
        # on-failure: the pause strategy never ends the task; a restore's stop (exit 0) is not
        # fought by a replacement task (finding 3 in swarm.py).
        lab.create_service(APP, "--mode", "global", "--restart-condition", "on-failure",
                           "--mount", f"type=volume,src={APP_VOLUME},dst=/data",
                           "--container-label", "backup.enable=true", "--container-label", "backup.name=app",
                           "--container-label", "backup.strategy=pause",
                           command=["sh", "-c", IDLE])
        lab.wait_running(SIDECAR, 2)
        lab.wait_running(APP, 2)
        for node in lab.nodes:
            lab.run_on(node, f"echo 'data of {node.name}' > who.txt; mkdir -p sub; "
                             f"head -c 200000 /dev/urandom > sub/blob.bin; echo {node.name} > sub/{node.name}.txt",
                       {APP_VOLUME: "/data"})
        yield lab, swarm_s3, bucket
    finally:
        lab.restore(before)
        try:
            swarm_s3.client().delete_bucket(Bucket=bucket)
        except Exception:  # noqa: BLE001 - best effort; the store's folder goes with tmp
            pass


def keys(s3, bucket: str, prefix: str) -> list[str]:
    client = s3.client()
    found = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found += [item["Key"] for item in page.get("Contents", [])]
    return sorted(found)


def archive_files(data: bytes) -> dict[str, bytes]:
    """{path: bytes} of the regular files in a .tar.zst archive."""
    stream = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    files = {}
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if member.isfile():
                files[member.name.removeprefix("./")] = tar.extractfile(member).read()
    return files


@pytest.fixture(scope="module")
def backed_up(fleet):
    """One backup of the app on each node, by that node's sidecar: {node name: archive key}."""
    lab, s3, bucket = fleet
    found = {}
    for node in lab.nodes:
        code, out = lab.sidecar(node, "backup", APP)
        assert code == 0, f"backup on {node.name}: {out}"
        daily = f"{PREFIX}/{node.name}/daily/"
        archives = [k for k in keys(s3, bucket, daily) if k.endswith(".tar.zst")]
        assert archives, f"no archive under {daily} after `backup {APP}` on {node.name}; the bucket holds " \
                         f"{keys(s3, bucket, '')}; the sidecar said:\n{out[-3000:]}"
        found[node.name] = archives[-1]
    return found


def test_each_node_backs_up_its_own_volume_under_its_prefix(fleet, backed_up):
    lab, s3, bucket = fleet
    client = s3.client()
    for node in lab.nodes:
        key = backed_up[node.name]
        name = key.rsplit("/", 1)[1]
        assert name.startswith(f"{APP}_") and name.endswith("_daily.tar.zst"), key
        answer = client.get_object(Bucket=bucket, Key=key)
        data = answer["Body"].read()
        # The checksum travels as the object's metadata and as the .sha256 beside the archive
        # in that node's own backup volume.
        local = lab.volume_tar(node, BACKUP_VOLUME)
        checksum = local[f"daily/{name}.sha256"].decode().split()[0]
        assert answer["Metadata"]["sha256"] == checksum == hashlib.sha256(data).hexdigest()
        assert local[f"daily/{name}"] == data
        files = archive_files(data)
        assert files == lab.volume_tar(node, APP_VOLUME)
        assert files["who.txt"] == f"data of {node.name}\n".encode()
    # Nothing outside the node prefixes: each node wrote only under its own.
    assert {k.split("/")[1] for k in keys(s3, bucket, f"{PREFIX}/")} == {"node1", "node2"}


def scrape_tasks(lab, image: str) -> dict[str, str]:
    """{task IP: /metrics text} for every address `tasks.backup` resolves to, fetched from a
    container on the overlay network (what Prometheus's dns_sd_configs does)."""
    # getaddrinfo for IPv4 only, as Prometheus's `type: A` lookups: glibc's gethostbyname_ex
    # timed out here (the embedded DNS forwards what it does not answer to the node's
    # resolvers, unreachable in the lab).
    script = (
        "import json, socket, urllib.request\n"
        f"ips = sorted({{a[4][0] for a in socket.getaddrinfo('tasks.{SIDECAR}', {METRICS_PORT}, socket.AF_INET, "
        "socket.SOCK_STREAM)})\n"
        f"print(json.dumps({{ip: urllib.request.urlopen(f'http://{{ip}}:{METRICS_PORT}/metrics', timeout=10)"
        ".read().decode() for ip in ips}))\n")
    out = lab.manager.client.containers.run(image, ["-c", script], entrypoint=["python"], network="fleet",
                                            remove=True, stdout=True, stderr=True)
    return json.loads(out)


def task_ips(lab, service: str) -> set[str]:
    ips = set()
    for task in lab.tasks(service):
        for attachment in task.get("NetworksAttachments") or []:
            if attachment["Network"]["Spec"]["Name"] == "fleet":
                ips |= {a.split("/")[0] for a in attachment["Addresses"]}
    return ips


def test_fleet_metrics_through_the_tasks_addresses(fleet, worker_image):
    lab, _s3, _bucket = fleet

    def both_up():
        texts = scrape_tasks(lab, worker_image)
        up = [s for text in texts.values() for s in metric_samples(text, "backup_sidecar_up")]
        return texts if len(texts) == 2 and all(value == 1 for _, value in up) and len(up) == 2 else None

    texts = wait_for(both_up, timeout=120, interval=1, what="both sidecars to answer with backup_sidecar_up 1")
    assert set(texts) == task_ips(lab, SIDECAR)
    nodes = {labels.get("node") for text in texts.values() for labels, _ in metric_samples(text, "backup_sidecar_up")}
    assert nodes == {"node1", "node2"}
    by_node = {metric_samples(text, "backup_sidecar_up")[0][0]["node"]: text for text in texts.values()}
    ready = {labels["swarm_node"]: value
             for labels, value in metric_samples(by_node["node1"], "backup_sidecar_swarm_node_ready")}
    assert ready == {"node1": 1, "node2": 1}
    # A worker cannot read the cluster: no node series from node2's sidecar.
    assert metric_samples(by_node["node2"], "backup_sidecar_swarm_node_ready") == []

    # The same fleet from outside the swarm: each node's address (as the manager lists it),
    # the port published in host mode there.
    for name, address in lab.node_addresses().items():
        [(labels, value)] = metric_samples(scrape(address, NODE_METRICS_PORT), "backup_sidecar_up")
        assert labels.get("node") == name and value == 1


def test_restore_on_node2_from_node1s_prefix(fleet, backed_up):
    lab, _s3, _bucket = fleet
    node1_data = lab.volume_tar("node1", APP_VOLUME)
    assert lab.volume_tar("node2", APP_VOLUME) != node1_data
    code, out = lab.sidecar("node2", "restore", APP, "--volume", APP_VOLUME, "--from", "s3",
                            "--node", "node1", "--force")
    assert code == 0, out
    # node2's backup volume holds an archive of the same name (its own backup of the day): the
    # restore must use node1's, not skip the download because a file of that name is there.
    assert lab.volume_tar("node2", APP_VOLUME) == node1_data, out


def test_a_replicated_service_is_backed_up_by_its_slot_1_node_only(fleet):
    lab, _s3, _bucket = fleet
    lab.create_service("rep", "--replicas", "2", "--replicas-max-per-node", "1",
                       "--mount", "type=volume,src=repdata,dst=/data",
                       "--container-label", "backup.enable=true", "--container-label", "backup.name=rep",
                       "--container-label", "backup.strategy=hot", command=["sh", "-c", IDLE])
    tasks = lab.wait_running("rep", 2)
    slot1 = lab.node_of_task(next(t for t in tasks if t["Slot"] == 1))
    other = next(node for node in lab.nodes if node is not slot1)
    for node in lab.nodes:
        lab.run_on(node, f"echo 'replica on {node.name}' > who.txt", {"repdata": "/data"})

    code, out = lab.sidecar(slot1, "backup", "rep")
    assert code == 0, out
    code, out = lab.sidecar(other, "backup", "rep")
    assert code != 0 and "rep" in out, out  # not a target there: slot 1 runs elsewhere
    archives = {node.name: sorted(k for k in lab.volume_tar(node, BACKUP_VOLUME)
                                  if k.startswith("daily/rep_") and k.endswith(".tar.zst"))
                for node in lab.nodes}
    assert len(archives[slot1.name]) == 1 and archives[other.name] == []
    data = lab.volume_tar(slot1, BACKUP_VOLUME)[archives[slot1.name][0]]
    assert archive_files(data) == lab.volume_tar(slot1, "repdata")
