"""The sidecar as a good citizen of a Compose stack, driven by Debian's docker-compose 1.29."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import yaml

from .support import REPO, log_records, wait_for


def test_recreating_a_service_is_no_name_clash(lab, stack):
    # `up -d` after a label change renames the old container `<id12>_<name>` while it
    # creates the new one: for a moment both claim the backup name "app".
    labels = {"backup.enable": "true", "backup.strategy": "hot", "backup.schedule": "@daily"}
    stack.write({"app": stack.service(labels, {"data": "/data"})}, volumes=("data",))
    stack.run("up", "-d")
    daemon, log = lab.start_cli("run", log_name="daemon.log", LOG_LEVEL="DEBUG")
    wait_for(lambda: any(r["message"] == "target found" and r.get("target") == "app" for r in log_records(log)),
             timeout=30, what="the daemon to find the stack's service")

    for schedule in ("@weekly", "@monthly"):
        labels["backup.schedule"] = schedule
        stack.write({"app": stack.service(labels, {"data": "/data"})}, volumes=("data",))
        stack.run("up", "-d")
        wait_for(lambda schedule=schedule: any(r["message"] in ("target found", "target changed")
                                               and r.get("schedule") == schedule for r in log_records(log)),
                 timeout=30, what=f"the recreated service ({schedule})")

    def followed() -> int:
        return sum(r["message"] in ("target found", "target changed") for r in log_records(log))

    seen = followed()
    assert "Recreating" in stack.run("up", "-d", "--force-recreate").stderr
    wait_for(lambda: followed() > seen, timeout=30, what="the forced recreate to be followed")

    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    records = log_records(log)
    errors = [r for r in records if r["level"] == "ERROR"]
    assert not errors, errors
    assert not [r for r in records if "already used" in r["message"]]
    # The daemon backs up the new container, not the one Compose removed.
    last = [r for r in records if r["message"] in ("target found", "target changed")][-1]
    assert last["container"] == f"{lab.project}_app_1"
    assert any(r.get("replaced", "").endswith(f"_{lab.project}_app_1") for r in records)  # the moment was seen


def test_a_sidecar_in_a_stack_backs_up_only_its_stack(lab, stack, sidecar_image):
    # Another stack's labelled container on the same engine: not ours to stop.
    other = lab.volume("other")
    lab.workload("other", {"backup.enable": "true", "backup.name": "other", "com.docker.compose.project":
                           lab.project + "x", "com.docker.compose.service": "other"}, {other: "/data"}, compose=False)
    stack.write({
        "app": stack.service({"backup.enable": "true", "backup.strategy": "hot"}, {"data": "/data"}),
        "backup": stack.sidecar(sidecar_image),  # no BACKUP_PROJECT: its own project
    }, volumes=("data",))
    stack.run("up", "-d")

    plan = wait_for(lambda: _plan(stack), timeout=60, what="`plan` inside the sidecar's container")
    assert [t["target"] for t in plan["targets"]] == ["app"]
    assert plan["scope"]["project"] == lab.project
    assert f"{lab.project}_backup_1" in plan["scope"]["why"]
    text = stack.exec("backup", "backup-sidecar", "plan")
    assert text.stdout.startswith(f"scope: Compose project '{lab.project}'"), text.stdout

    wide = _plan(stack, BACKUP_PROJECT="*")
    assert {t["target"] for t in wide["targets"]} >= {"app", "other"}
    assert wide["scope"] == {"project": None, "why": "BACKUP_PROJECT=*"}
    # The daemon says its scope when it starts (JSON lines, its default format).
    logs = stack.run("logs", "--no-color", "backup").stdout
    assert '"message": "sidecar running"' in logs and f"Compose project '{lab.project}'" in logs, logs

    # A one-shot command through `exec`: its output, no log lines among it (only warnings would show).
    done = stack.exec("backup", "backup-sidecar", "backup", "app")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("app: wrote /backups/daily/app_data_") and done.stderr == ""


def _plan(stack, **env) -> dict | None:
    done = stack.exec("backup", "backup-sidecar", "plan", "--json", env=env)
    return json.loads(done.stdout) if done.returncode == 0 else None


def test_the_example_files_pass_compose_config_with_least_privilege(stack):
    # Debian's docker-compose reads both shipped variants as they are; the sidecar service runs
    # read-only without capabilities, with the socket's group (example) or no socket (proxy).
    services = {}
    for name in ("compose.example.yaml", "compose.proxy.yaml"):
        done = subprocess.run([stack.binary, "-f", name, "config"], cwd=REPO, capture_output=True, text=True,
                              timeout=60, env={**os.environ, "DOCKER_GID": "4242"})
        assert done.returncode == 0, done.stderr
        services[name] = yaml.safe_load(done.stdout)["services"]
    for name, found in services.items():
        backup = found["backup"]
        assert backup["read_only"] is True and backup["cap_drop"] == ["ALL"], name
        assert "/tmp" in backup["tmpfs"] and backup["security_opt"] == ["no-new-privileges:true"], name
    example, proxied = services["compose.example.yaml"]["backup"], services["compose.proxy.yaml"]
    assert example["group_add"] == ["4242"]
    assert proxied["backup"]["environment"]["DOCKER_HOST"] == "tcp://docker-proxy:2375"
    assert not any("docker.sock" in str(v) for v in proxied["backup"]["volumes"])
    assert any(str(REPO / "socket-proxy" / "haproxy.cfg") in str(v) for v in proxied["docker-proxy"]["volumes"])
