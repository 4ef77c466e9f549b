"""The two-node Swarm lab itself (tests/e2e/swarm.py): two named nodes, a global service on
both, host networking to the host-side SeaweedFS, an overlay network with `tasks.<service>`."""

from __future__ import annotations

import urllib.request

import docker.errors
import pytest

from .support import BUSYBOX, wait_for
from .swarm import IDLE

pytestmark = pytest.mark.slow


def test_two_named_nodes_run_a_global_service(swarm):
    assert {n.client.info()["Name"] for n in swarm.nodes} == {"node1", "node2"}
    assert swarm.worker.client.info()["Swarm"]["ControlAvailable"] is False
    swarm.create_service("idle", "--mode", "global", command=["sh", "-c", IDLE])
    tasks = swarm.wait_running("idle", 2)
    assert {swarm.node_of_task(t).name for t in tasks} == {"node1", "node2"}
    code, out = swarm.exec_in_task("idle", "node2", ["hostname"])
    assert code == 0 and out.strip() != "node2"  # not host network: the container's own name


def test_host_network_tasks_serve_on_the_node_addresses_and_reach_the_host(swarm, swarm_s3):
    port = 18080
    s3_host, s3_port = swarm_s3.endpoint_url.removeprefix("http://").split(":")
    # Each task answers with its hostname (the node's, on the host network) and whether it
    # reached the host-side SeaweedFS (any HTTP answer).
    script = (f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {s3_host} {s3_port} | head -1 > /tmp/s3; "
              f"echo $(hostname) $(cat /tmp/s3) > /tmp/index.html; exec httpd -f -p {port} -h /tmp")
    swarm.create_service("web", "--mode", "global", "--network", "host", "--stop-grace-period", "1s",
                         command=["sh", "-c", script])
    swarm.wait_running("web", 2)
    for node in swarm.nodes:
        answer = wait_for(lambda: _get(f"http://{node.address}:{port}/index.html"), timeout=30,
                          what=f"the task on {node.name} to serve")
        name, _, status = answer.partition(" ")
        assert name == node.name and status.startswith("HTTP/"), answer


def test_overlay_dns_lists_every_task(swarm):
    swarm.manager.docker("network", "create", "-d", "overlay", "--attachable", "labnet")
    swarm.create_service("ov", "--mode", "global", "--network", "labnet", command=["sh", "-c", IDLE])
    tasks = swarm.wait_running("ov", 2)
    ips = {a.split("/")[0] for t in tasks for n in t["NetworksAttachments"] if n["Network"]["Spec"]["Name"] == "labnet"
           for a in n["Addresses"]}
    # From a container on node2, the name resolves to both tasks, one on each node (VXLAN).
    def resolved():
        out = swarm.worker.client.containers.run(BUSYBOX, ["nslookup", "tasks.ov", "127.0.0.11"], network="labnet",
                                                 remove=True).decode()
        return {line.split()[-1] for line in out.splitlines() if line.startswith("Address:")} - {"127.0.0.11:53"}
    assert wait_for(lambda: resolved() == ips, timeout=30, what="tasks.ov to list both tasks")


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:
            return answer.read().decode().strip()
    except OSError:
        return None


def test_scale_to_zero_removes_the_task_container_and_keeps_the_volume(swarm):
    """Finding 2 (swarm.py): the task container goes (stopped, then removed), its volume stays,
    and the service's Version.Index moves only with our own spec updates."""
    swarm.create_service("rep", "--replicas", "1", "--constraint", "node.hostname==node2",
                         "--mount", "type=volume,src=repdata,dst=/data", command=["sh", "-c", IDLE])
    swarm.wait_running("rep", 1)
    old = swarm.task_container("rep", "node2").id
    swarm.scale("rep", 0)
    version = swarm.service_version("rep")
    swarm.wait_running("rep", 0, timeout=60)
    wait_for(lambda: not swarm.service_containers("rep", all=True), timeout=60, what="the task container's removal")
    assert "repdata" in {v.name for v in swarm.worker.client.volumes.list()}
    swarm.scale("rep", 1)
    swarm.wait_running("rep", 1)
    assert swarm.task_container("rep", "node2").id != old
    assert swarm.service_version("rep") > version  # our second update
    assert swarm.replicas("rep") == 1


def test_task_labels_and_a_worker_that_cannot_read_the_cluster(swarm):
    """Finding 5 (swarm.py): stack `labels:` land on containers, `deploy.labels` on the service."""
    swarm.deploy_stack("lst", f"""
version: "3.8"
services:
  app:
    image: {BUSYBOX}
    command: ["sh", "-c", {IDLE.replace("$", "$$")!r}]
    labels: {{backup.enable: "true"}}
    deploy: {{mode: global, labels: {{backup.strategy: hot}}}}
""")
    swarm.wait_running("lst_app", 2)
    labels = swarm.task_container("lst_app", "node2").labels
    assert labels["backup.enable"] == "true" and "backup.strategy" not in labels
    assert labels["com.docker.swarm.service.name"] == "lst_app" and labels["com.docker.stack.namespace"] == "lst"
    assert {"com.docker.swarm.node.id", "com.docker.swarm.task.id", "com.docker.swarm.task.name"} <= set(labels)
    assert swarm.manager.client.api.inspect_service("lst_app")["Spec"]["Labels"]["backup.strategy"] == "hot"
    with pytest.raises(docker.errors.APIError) as refused:
        swarm.worker.client.api.services()
    assert refused.value.status_code == 503 and "not a swarm manager" in str(refused.value)
