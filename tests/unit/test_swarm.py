"""swarm.py and discovery of Swarm task containers: labels on the service or its
containers, who backs up a replicated service, when `stop` can be done."""

from __future__ import annotations

import dataclasses

from sidecar.core.discovery import discover, is_candidate_container
from sidecar.core.model import ContainerInfo, ContainerState, Mount, Strategy
from sidecar.core.schedule import parse_schedule
from sidecar.core.swarm import (
    ServiceMode,
    SwarmService,
    TaskStatus,
    backed_up_elsewhere,
    merged_labels,
    placement_warning,
    someone_elses_change,
    stop_problem,
    task_of,
    unseen_on_workers,
    with_service,
)

DAILY = parse_schedule("@daily")


def _swarm_labels(service: str, middle: str, stack: str | None = "shop") -> dict[str, str]:
    labels = {"com.docker.swarm.service.id": "sid" + service, "com.docker.swarm.service.name": service,
              "com.docker.swarm.task.id": "tid", "com.docker.swarm.node.id": "nid",
              "com.docker.swarm.task.name": f"{service}.{middle}.tid"}
    if stack:
        labels["com.docker.stack.namespace"] = stack
    return labels


def _service(name="shop_db", replicas: int | None = 1, labels=None, restart="any", constraints=()) -> SwarmService:
    mode = ServiceMode.GLOBAL if replicas is None else ServiceMode.REPLICATED
    return SwarmService("sid" + name, name, mode, replicas, dict(labels or {}), restart, tuple(constraints), 7)


def task_container(labels=None, *, service="shop_db", middle="1", on_manager: SwarmService | None = None,
                   stack: str | None = "shop") -> ContainerInfo:
    all_labels = {**_swarm_labels(service, middle, stack), **(labels or {})}
    task = task_of(all_labels)
    if on_manager is not None:
        task = with_service(task, on_manager)
    return ContainerInfo(f"{service}.{middle}".encode().hex().ljust(64, "0")[:64], f"{service}.{middle}.tid",
                         "busybox", "sha256:" + "a" * 64, ContainerState.RUNNING, all_labels,
                         (Mount("volume", f"{stack}_data" if stack else "data", "/data"),), swarm=task)


def test_task_labels_give_slot_or_global():
    replicated = task_of(_swarm_labels("shop_db", "2"))
    assert replicated is not None and replicated.slot == 2 and replicated.mode is ServiceMode.REPLICATED
    glob = task_of(_swarm_labels("shop_agent", "k3j4h5g6f7d8s9a0"))
    assert glob is not None and glob.slot is None and glob.mode is ServiceMode.GLOBAL
    assert glob.short_service_name == "agent"
    assert task_of({"com.docker.compose.service": "db"}) is None


def test_the_service_says_the_mode_when_a_manager_read_it():
    task = with_service(task_of(_swarm_labels("x", "ab12")), _service("x", replicas=3))
    assert task.mode is ServiceMode.REPLICATED


def test_backup_name_and_volume_names_come_from_service_and_stack():
    found = discover([task_container({"backup.enable": "true", "backup.strategy": "pause"})], DAILY)
    (target,) = found.targets
    assert target.backup_name == "db"  # not the task container's name, which changes with every task
    assert [v.volume_name for v in target.volumes] == ["data"]  # the stack's prefix dropped


def test_only_slot_one_of_a_replicated_service_is_a_target():
    found = discover([task_container({"backup.enable": "true", "backup.strategy": "pause"}, middle="2")], DAILY)
    assert found.targets == () and found.skipped == ()  # silently: another node's (or slot's) to do
    why = backed_up_elsewhere(task_of(_swarm_labels("shop_db", "2")))
    assert why is not None and "slot 1" in why and "replica 2" in why


def test_every_node_backs_up_its_task_of_a_global_service():
    found = discover([task_container({"backup.enable": "true", "backup.strategy": "pause"}, middle="nodeid",
                                     service="shop_agent")], DAILY)
    assert [t.backup_name for t in found.targets] == ["agent"]


def test_service_labels_count_on_a_manager():
    service = _service(labels={"backup.enable": "true", "backup.strategy": "pause", "backup.schedule": "@hourly"})
    unlabelled = task_container({}, on_manager=service)
    assert is_candidate_container(unlabelled)
    assert not is_candidate_container(task_container({}))  # a worker cannot read them
    (target,) = discover([unlabelled], DAILY).targets
    assert target.config.strategy is Strategy.PAUSE and target.config.schedule.expression == "@hourly"


def test_container_and_service_labels_merge_and_conflicts_are_refused_naming_both():
    service = _service(labels={"backup.enable": "true", "backup.strategy": "pause", "backup.keep": "daily=3"})
    merged, conflicts = merged_labels({"backup.strategy": "pause", "backup.schedule": "@hourly", "other": "x"},
                                      with_service(task_of(_swarm_labels("shop_db", "1")), service))
    assert conflicts == [] and merged["backup.keep"] == "daily=3" and merged["backup.schedule"] == "@hourly"
    clash = task_container({"backup.enable": "true", "backup.strategy": "hot"}, on_manager=service)
    found = discover([clash], DAILY)
    assert found.targets == ()
    (skipped,) = found.skipped
    assert "backup.strategy" in skipped.reason and "'pause'" in skipped.reason and "'hot'" in skipped.reason
    assert "deploy.labels" in skipped.reason and "shop_db" in skipped.reason


def test_stop_of_a_replicated_service_needs_a_manager():
    labels = {"backup.enable": "true", "backup.strategy": "stop"}
    found = discover([task_container(labels)], DAILY)
    (skipped,) = found.skipped
    assert "manager" in skipped.reason and "scales the service to 0" in skipped.reason
    assert "backup.strategy=pause" in skipped.reason
    on_manager = discover([task_container(labels, on_manager=_service(replicas=2))], DAILY)
    assert [t.backup_name for t in on_manager.targets] == ["db"]


def test_stop_of_a_global_service_is_refused_unless_swarm_would_not_restart_it():
    labels = {"backup.enable": "true", "backup.strategy": "stop"}
    for restart in ("any", "on-failure"):
        svc = _service("shop_agent", replicas=None, restart=restart)
        (skipped,) = discover([task_container(labels, service="shop_agent", middle="n1", on_manager=svc)],
                              DAILY).skipped
        assert f"condition {restart!r}" in skipped.reason and "replacement" in skipped.reason
        assert "condition: none" in skipped.reason
    worker = discover([task_container(labels, service="shop_agent", middle="n1")], DAILY)
    assert "worker" in worker.skipped[0].reason
    fine = _service("shop_agent", replicas=None, restart="none")
    assert discover([task_container(labels, service="shop_agent", middle="n1", on_manager=fine)], DAILY).targets


def test_stop_problem_is_none_for_what_can_be_done():
    assert stop_problem(with_service(task_of(_swarm_labels("a", "1")), _service("a")), "c") is None


def test_placement_warning_for_an_unpinned_replicated_service():
    unpinned = with_service(task_of(_swarm_labels("a", "1")), _service("a"))
    assert "placement constraint" in placement_warning(unpinned)
    pinned = with_service(task_of(_swarm_labels("a", "1")), _service("a", constraints=["node.hostname == n1"]))
    assert placement_warning(pinned) is None
    assert placement_warning(task_of(_swarm_labels("a", "1"))) is None  # unknown on a worker: no guess


def test_a_compose_container_is_untouched_by_the_swarm_rules():
    plain = dataclasses.replace(task_container({"backup.enable": "true", "backup.strategy": "stop"}),
                                labels={"backup.enable": "true", "backup.strategy": "stop"}, swarm=None)
    assert [t.config.strategy for t in discover([plain], DAILY).targets] == [Strategy.STOP]


def test_a_manager_names_deploy_labels_that_workers_cannot_read():

    service = _service(labels={"backup.enable": "true"})
    tasks = [TaskStatus("t1", "w1", 1, "running", "running"), TaskStatus("t2", "m1", 2, "running", "running"),
             TaskStatus("t3", "w2", 3, "shutdown", "shutdown")]
    why = unseen_on_workers(service, {}, {"w1": "node2", "w2": "node3"}, tasks)
    assert "node2" in why and "node3" not in why and "deploy.labels" in why and "labels:" in why
    assert unseen_on_workers(service, {"backup.enable": "true"}, {"w1": "node2"}, tasks) is None  # containers carry them
    assert unseen_on_workers(service, {}, {}, tasks) is None  # every task on a manager
    assert unseen_on_workers(_service(), {}, {"w1": "node2"}, tasks) is None  # not labelled at all


def test_whose_change_wins_after_a_scale_to_zero():
    base = dataclasses.replace(_service(), replicas=0, version=20)
    assert someone_elses_change(base, 20) is None  # nobody touched it
    assert "scaled it to 3" in someone_elses_change(dataclasses.replace(base, replicas=3, version=21), 20)
    assert "scaled it to 0" in someone_elses_change(dataclasses.replace(base, version=21), 20)  # service scale =0
    updated = dataclasses.replace(base, version=21, updated_besides_replicas=True)  # a new image, replicas kept
    assert someone_elses_change(updated, 20) is None
