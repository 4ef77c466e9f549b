"""Docker Swarm, as far as the sidecar needs it: which service a task's container belongs
to, what its service says, and the rules that follow from how Swarm runs tasks. Pure:
the engine adapter fills these values in; discovery and the interruption act on them.

What a node can know. Every task container carries `com.docker.swarm.*` labels (service,
task, node) and the service's container labels (a stack file's `labels:` under the
service). The service itself (its `deploy.labels`, mode, replica count, restart policy,
placement) can only be read through a manager's engine: a worker answers "not a swarm
manager". So `SwarmTask.service` is None on a worker node.

Who backs up what. Swarm volumes with the local driver live on the node that runs the
task. A global service has one task, and one volume, on every node: each node backs up
its own. A replicated service is backed up once, by the node that runs its task in slot 1
(the first replica; its volume is there): the container of every other slot is not a
target. Each node decides this from its own containers' labels, with no coordination.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Mapping

SERVICE_ID = "com.docker.swarm.service.id"
SERVICE_NAME = "com.docker.swarm.service.name"
TASK_ID = "com.docker.swarm.task.id"
TASK_NAME = "com.docker.swarm.task.name"
NODE_ID = "com.docker.swarm.node.id"
STACK = "com.docker.stack.namespace"
_BACKUP_PREFIX = "backup."


class ServiceMode(enum.StrEnum):
    REPLICATED = "replicated"
    GLOBAL = "global"


@dataclass(frozen=True)
class SwarmService:
    """A service as a manager's engine describes it."""

    id: str
    name: str
    mode: ServiceMode
    replicas: int | None  # replicated services only
    labels: Mapping[str, str]  # the service's own labels (`deploy.labels`), not its containers'
    restart_condition: str  # "any" (Swarm's default), "on-failure" or "none"
    constraints: tuple[str, ...] = ()  # placement constraints, e.g. ("node.hostname==n1",)
    version: int = 0  # the spec's version index: it moves on every update of the spec
    # The last update changed more than the replica count (the spec differs from the one
    # before it in anything but its mode): a deploy or `service update`, not a scale.
    updated_besides_replicas: bool = False


@dataclass(frozen=True)
class SwarmTask:
    """The Swarm side of one task container, read from its labels (and, on a manager, from
    its service)."""

    service_id: str
    service_name: str
    task_id: str
    node_id: str
    slot: int | None  # a replicated task's slot (1, 2, ...); None for a global service's task
    stack: str | None = None
    service: SwarmService | None = field(default=None, compare=False)  # None: not a manager

    @property
    def mode(self) -> ServiceMode:
        if self.service is not None:
            return self.service.mode
        return ServiceMode.GLOBAL if self.slot is None else ServiceMode.REPLICATED

    @property
    def short_service_name(self) -> str:
        """The service's name inside its stack (`web` for stack `shop`'s `shop_web`)."""
        if self.stack and self.service_name.startswith(self.stack + "_"):
            return self.service_name[len(self.stack) + 1:]
        return self.service_name


def someone_elses_change(now: SwarmService, ours: int) -> str | None:
    """Why a service the sidecar scaled to 0 (its spec then at version `ours`) must be left
    as it is: someone else scaled it (to a count, or to 0 again: `docker service scale`), or
    None: nobody touched it, or someone updated something else (a deploy with a new image
    keeps the 0 the backup set; the service is scaled back, with their other changes)."""
    if now.version == ours:
        return None
    if now.replicas != 0:
        return f"someone else scaled it to {now.replicas} meanwhile"
    if not now.updated_besides_replicas:
        return "someone else scaled it to 0 meanwhile (docker service scale)"
    return None


def task_of(labels: Mapping[str, str]) -> SwarmTask | None:
    """The task a container runs, from the labels Swarm puts on it; None for a container
    Swarm did not start. A global task's name is `<service>.<node id>.<task id>`, a
    replicated one's `<service>.<slot>.<task id>`."""
    service_id, service_name = labels.get(SERVICE_ID), labels.get(SERVICE_NAME)
    if not service_id or not service_name:
        return None
    task_name = labels.get(TASK_NAME, "")
    middle = task_name[len(service_name) + 1:].rsplit(".", 1)[0] if task_name.startswith(service_name + ".") else ""
    slot = int(middle) if middle.isdigit() else None
    return SwarmTask(service_id, service_name, labels.get(TASK_ID, ""), labels.get(NODE_ID, ""), slot,
                     labels.get(STACK) or None)


def with_service(task: SwarmTask, service: SwarmService | None) -> SwarmTask:
    return SwarmTask(task.service_id, task.service_name, task.task_id, task.node_id, task.slot, task.stack, service)


def merged_labels(container_labels: Mapping[str, str], task: SwarmTask | None) -> tuple[dict[str, str], list[str]]:
    """The backup.* labels of a task container merged with its service's, and a
    description of every label set in both places to different values (the caller
    refuses the container then: which one wins would be a guess)."""
    labels = dict(container_labels)
    conflicts: list[str] = []
    if task is None or task.service is None:
        return labels, conflicts
    for key, value in sorted(task.service.labels.items()):
        if not key.startswith(_BACKUP_PREFIX):
            continue
        mine = labels.get(key)
        if mine is None:
            labels[key] = value
        elif mine != value:
            conflicts.append(f"label {key} is {value!r} on service {task.service_name!r} (deploy.labels) and "
                             f"{mine!r} on its containers (labels)")
    return labels, conflicts


def backed_up_elsewhere(task: SwarmTask) -> str | None:
    """Why this node does not back up this task's container: a replicated service's
    other slots (slot 1's node does). None: it is this node's to back up."""
    if task.mode is ServiceMode.REPLICATED and task.slot not in (None, 1):
        return (f"replica {task.slot} of replicated Swarm service {task.service_name!r}: a replicated service is "
                "backed up once, by the node running its task in slot 1")
    return None


def stop_problem(task: SwarmTask, what: str) -> str | None:
    """Why `backup.strategy=stop` cannot be done for this task here (`what` names the
    container), or None. A replicated service is scaled to 0 and back, which takes a
    manager; a global service's task container is stopped on this node only, which
    Swarm fights unless the service's restart policy is `none`."""
    service = task.service
    advice = "use backup.strategy=pause or an app preset (backup.preset), which need no stop"
    if task.mode is ServiceMode.REPLICATED:
        if service is None:
            return (f"{what} is a task of replicated Swarm service {task.service_name!r}: backup.strategy=stop scales "
                    "the service to 0 and back, which only a manager node's engine can do, and this node is a "
                    f"worker; run the service on a manager node (placement constraint), or {advice}")
        return None
    if service is None:
        return (f"{what} is a task of global Swarm service {task.service_name!r}: backup.strategy=stop stops its "
                "container on this node, and whether Swarm would start a replacement meanwhile (its "
                "restart_policy) can only be read on a manager node; this node is a worker; " + advice)
    if service.restart_condition != "none":
        return (f"{what} is a task of global Swarm service {task.service_name!r} with restart_policy condition "
                f"{service.restart_condition!r}: Swarm would start a replacement task on this node, on the same "
                "volume, while the container is stopped for its backup; set deploy.restart_policy.condition: none "
                f"for that service, or {advice}")
    return None


def unseen_on_workers(service: SwarmService, container_labels: Mapping[str, str],
                      worker_nodes: Mapping[str, str], tasks: list["TaskStatus"]) -> str | None:
    """A service labelled only in its `deploy.labels` whose tasks run on worker nodes: the
    sidecars there cannot read those labels, so nothing would back those tasks up. Said by
    the sidecar of a manager (the only one that can see it). `worker_nodes`: id -> name."""
    enable = _BACKUP_PREFIX + "enable"
    if enable not in service.labels or enable in container_labels:
        return None
    nodes = sorted({worker_nodes[t.node_id] for t in tasks if t.node_id in worker_nodes and not t.finished})
    if not nodes:
        return None
    return (f"Swarm service {service.name!r} has its backup labels in deploy.labels, which only a manager can "
            f"read: its tasks on worker node(s) {', '.join(nodes)} are not backed up there; put the backup.* labels "
            "under the service's `labels:` (its containers' labels) so every node sees them")


def placement_warning(task: SwarmTask) -> str | None:
    """A replicated service scaled to 0 and back may come back on another node, where its
    local volume is a new, empty one: warn when nothing pins it."""
    service = task.service
    if service is None or service.mode is not ServiceMode.REPLICATED:
        return None
    if any(c.replace(" ", "").startswith(("node.hostname==", "node.id==")) for c in service.constraints):
        return None
    return (f"replicated Swarm service {task.service_name!r} has no placement constraint pinning it to one node "
            "(node.hostname==... or node.id==...): after it is scaled to 0 and back for a stop backup, Swarm may "
            "start it on another node, with an empty local volume there")


_FINISHED = frozenset({"shutdown", "complete", "failed", "rejected", "orphaned", "remove"})


@dataclass(frozen=True)
class TaskStatus:
    """One task of a service as a manager lists it."""

    id: str
    node_id: str
    slot: int | None
    state: str  # the actual state: "running", "shutdown", "starting", ...
    desired_state: str  # what the orchestrator wants: "running" or "shutdown"

    @property
    def finished(self) -> bool:
        """Its container is gone or stopped for good."""
        return self.state in _FINISHED

    @property
    def running(self) -> bool:
        return self.state == "running" and self.desired_state == "running"
