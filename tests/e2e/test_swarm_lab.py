"""The two-node Swarm lab itself (tests/e2e/swarm.py): two named nodes, a global service on
both, host networking to the host-side SeaweedFS, an overlay network with `tasks.<service>`."""

from __future__ import annotations

import pytest

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
