"""The two-node Swarm lab itself (tests/e2e/swarm.py): two named nodes, a global service on
both, host networking to the host-side SeaweedFS, an overlay network with `tasks.<service>`."""

from __future__ import annotations

import urllib.request

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
    swarm.create_service("web", "--mode", "global", "--network", "host", command=["sh", "-c", script])
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
