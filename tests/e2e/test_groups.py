"""Consistency across containers on the real engine (issue 11, item 1) and readiness after
the put back (issue 10, item 6): other writers of a volume quiesced with the target, a
backup.group stopped and started in dependency order, the healthcheck ending the downtime."""

from __future__ import annotations

import time

from .support import BUSYBOX, IDLE, stderr_records


def _actions(docker_client, container, since: float, wanted=("stop", "start", "pause", "unpause")) -> list[tuple]:
    events = docker_client.api.events(since=since, until=time.time(), decode=True,
                                      filters={"type": "container", "container": container.id})
    return [(e["timeNano"], e["Action"]) for e in events if e["Action"] in wanted]


def test_other_writers_of_the_volume_are_stopped_with_the_target_and_readers_are_not(lab, docker_client):
    volume = lab.volume("shared")
    lab.populate(volume, "echo one > rows")
    app = lab.workload("app", {"backup.enable": "true", "backup.strategy": "stop"}, {volume: "/data"})
    writer = lab.workload("writer", None, {volume: "/srv"})
    reader = lab.container(BUSYBOX, name=f"{lab.project}-reader", command=["sh", "-c", IDLE], network_mode="none",
                           volumes={volume: {"bind": "/ro", "mode": "ro"}})
    since = time.time()
    done = lab.cli("backup", "app")
    assert done.returncode == 0, done.stderr
    assert [a for _, a in _actions(docker_client, writer, since)] == ["stop", "start"]
    assert [a for _, a in _actions(docker_client, app, since)] == ["stop", "start"]
    assert _actions(docker_client, reader, since) == []
    # The writer stopped before the target and started after it.
    (w_stop, _), (w_start, _) = _actions(docker_client, writer, since)
    (a_stop, _), (a_start, _) = _actions(docker_client, app, since)
    assert w_stop < a_stop and a_start < w_start
    assert all(lab.state(c) == "running" for c in (app, writer, reader))
    assert len(lab.archives("app_shared_*")) == 1

    ignored = lab.workload("app2", {"backup.enable": "true", "backup.strategy": "stop", "backup.shared": "ignore"},
                           {volume: "/data"})
    since = time.time()
    done = lab.cli("backup", "app2", LOG_LEVEL="INFO")
    assert done.returncode == 0, done.stderr
    assert _actions(docker_client, writer, since) == [] and lab.state(ignored) == "running"
    said = [r for r in stderr_records(done.stderr) if r["message"].startswith("other containers write")]
    assert said and f"{lab.project}-writer" in said[0]["containers"], done.stderr


def test_a_group_is_backed_up_in_one_run_in_dependency_order(lab, docker_client):
    made = {}
    for service, extra in (("web", {"com.docker.compose.depends_on": "api:service_started:false"}),
                           ("api", {"backup.group.order": "1"}),
                           ("db", {"backup.group.order": "0"})):
        volume = lab.volume(f"{service}data")
        lab.populate(volume, f"echo {service} > file")
        made[service] = lab.workload(service, {"backup.enable": "true", "backup.strategy": "stop",
                                               "backup.group": "shop", **extra}, {volume: "/data"})
    since = time.time()
    done = lab.cli("backup", "web")  # one member: the whole group
    assert done.returncode == 0, done.stderr
    for service in made:
        assert len(lab.archives(f"{service}_{service}data_*")) == 1, service
    stops = sorted((t, s) for s, c in made.items() for t, a in _actions(docker_client, c, since) if a == "stop")
    starts = sorted((t, s) for s, c in made.items() for t, a in _actions(docker_client, c, since) if a == "start")
    assert [s for _, s in stops] == ["web", "api", "db"]
    assert [s for _, s in starts] == ["db", "api", "web"]
    assert max(t for t, _ in stops) < min(t for t, _ in starts)  # all down together, once
    assert all(lab.state(c) == "running" for c in made.values())


def test_the_stop_window_ends_when_the_healthcheck_passes(lab, docker_client):
    volume = lab.volume("data")
    # Healthy two seconds after each start.
    script = "rm -f /tmp/ready; (sleep 2; touch /tmp/ready) & " + IDLE
    app = lab.container(BUSYBOX, name=f"{lab.project}-app", command=["sh", "-c", script], network_mode="none",
                        labels={"backup.enable": "true", "backup.strategy": "stop", "backup.name": "app",
                                "com.docker.compose.project": lab.project, "com.docker.compose.service": "app"},
                        volumes={volume: {"bind": "/data", "mode": "rw"}},
                        healthcheck={"test": ["CMD-SHELL", "test -f /tmp/ready"], "interval": 200_000_000,
                                     "retries": 1})
    done = lab.cli("backup", "app", LOG_LEVEL="INFO")
    assert done.returncode == 0, done.stderr
    assert docker_client.api.inspect_container(app.id)["State"]["Health"]["Status"] == "healthy"
    [line] = [r for r in stderr_records(done.stderr) if r["message"] == "container running again"]
    assert line["ready"] == "healthy"

    alone = lab.volume("alone")
    never = lab.container(BUSYBOX, name=f"{lab.project}-never", command=["sh", "-c", IDLE], network_mode="none",
                          labels={"backup.enable": "true", "backup.strategy": "stop", "backup.name": "never",
                                  "backup.ready-timeout": "2", "com.docker.compose.project": lab.project,
                                  "com.docker.compose.service": "never"},
                          volumes={alone: {"bind": "/data", "mode": "rw"}},
                          healthcheck={"test": ["CMD-SHELL", "false"], "interval": 200_000_000, "retries": 1000})
    done = lab.cli("backup", "never", LOG_LEVEL="INFO")
    assert done.returncode == 0, done.stderr
    records = stderr_records(done.stderr)
    assert any(r["message"].startswith("container not healthy after its backup") for r in records), done.stderr
    assert [r["ready"] for r in records if r["message"] == "container running again"] == ["not healthy in time"]
    assert lab.state(never) == "running"
