"""compose.swarm.yaml and monitoring/prometheus.swarm.yml: the stack deploys as docs/how-to/swarm.md
says (the sidecar a global service on every node with its node's socket and backup volume,
nothing `docker stack deploy` refuses or ignores, secrets as `*_FILE` settings), and
Prometheus finds every sidecar task through Swarm's DNS on the network they share.

`docker stack deploy` needs a swarm, so the file is read here (PyYAML comes with apprise)
and, where installed, parsed by Compose 1.29 (which reads deploy keys) and by the Docker
CLI's own stack loader (`docker stack config`: newer CLIs than Debian's 20.10).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from sidecar.core.labels import LABELS
from sidecar.core.settings import SETTINGS
from tests.unit.test_monitoring import ALERTS, MONITORING, promtool, run  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "compose.swarm.yaml"
PROMETHEUS_SWARM = MONITORING / "prometheus.swarm.yml"
SETTING = {s.name: s for s in SETTINGS}
LABEL = {label.name: label for label in LABELS}
# Interpolated by `docker stack deploy` from the shell: S3_BUCKET has no default on purpose.
DEPLOY_ENV = {"S3_BUCKET": "my-backups", "DOCKER_GID": "998", "MONITORING_NODE": "manager-1"}

# What the Docker CLI's stack loader does with service keys (docker/cli
# cli/compose/types/types.go and convert/service.go): refused, ignored with a warning,
# or dropped without a word.
REFUSED = {"group_add"}  # not in the v3 schema: "Additional property group_add is not allowed"
IGNORED = {"build", "cgroupns_mode", "cgroup_parent", "devices", "domainname", "external_links", "ipc", "links",
           "mac_address", "network_mode", "pid", "privileged", "restart", "security_opt", "shm_size",
           "userns_mode", "container_name", "expose", "depends_on", "tmpfs"}


def stack() -> dict:
    return yaml.safe_load(STACK.read_text())


def sidecar() -> dict:
    return stack()["services"]["backup"]


def prometheus_config() -> dict:
    return yaml.safe_load(PROMETHEUS_SWARM.read_text())


def interpolate(value: str) -> str:
    """`${NAME:-default}` and `${NAME:?error}` as deploy would read them with DEPLOY_ENV."""
    def one(m: re.Match) -> str:
        name, op, rest = m.group(1), m.group(2), m.group(3) or ""
        if name in DEPLOY_ENV:
            return DEPLOY_ENV[name]
        assert op == ":-", f"${{{name}}} has no default and is not in DEPLOY_ENV"
        return rest
    return re.sub(r"\$\{(\w+)(:-|:\?)?([^}]*)\}", one, value)


def mounts(service: dict) -> list[dict]:
    """The service's mounts in the long syntax (type, source, target)."""
    out = []
    for item in service.get("volumes", []):
        if isinstance(item, dict):
            out.append(item)
            continue
        source, target = item.split(":")[:2]
        out.append({"type": "bind" if source.startswith(("/", ".")) else "volume", "source": source,
                    "target": target})
    return out


# --- the sidecar service ------------------------------------------------------------------

def test_sidecar_is_a_global_service_named_backup() -> None:
    service = sidecar()
    assert service["deploy"]["mode"] == "global"
    # Two sidecars on one node would both back it up: an update stops the old task first.
    assert service["deploy"]["update_config"]["order"] == "stop-first"
    assert "replicas" not in service["deploy"]


def test_sidecar_has_its_nodes_socket_and_backup_volume() -> None:
    found = {m["target"]: m for m in mounts(sidecar())}
    socket = found["/var/run/docker.sock"]
    assert (socket["type"], socket["source"]) == ("bind", "/var/run/docker.sock")
    backups = found[SETTING["BACKUP_DIR"].default]
    # A named volume: each node's engine creates its own (a bind would need the folder on every node).
    assert backups["type"] == "volume" and backups["source"] in stack()["volumes"]
    assert found["/tmp"]["type"] == "tmpfs", "the service-level tmpfs key is ignored in a stack"


def test_sidecar_is_locked_down_as_in_the_compose_example() -> None:
    service = sidecar()
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    uid = re.search(r"^ARG APP_UID=(\d+)$", (ROOT / "Dockerfile").read_text(), re.M).group(1)
    user = interpolate(service["user"])
    assert user == f"{uid}:{DEPLOY_ENV['DOCKER_GID']}", "the image's uid, the socket's group as primary group"
    assert "2m" in service["stop_grace_period"]


def test_no_service_uses_what_docker_stack_deploy_refuses_or_ignores() -> None:
    for name, service in stack()["services"].items():
        used = set(service) & (REFUSED | IGNORED)
        assert not used, f"{name}: {sorted(used)}"
    # A Swarm template, filled in per task: logs and notifications name the node.
    assert sidecar()["hostname"] == "{{.Node.Hostname}}"


def test_sidecar_settings_are_known_and_secrets_come_from_docker_secrets() -> None:
    service = sidecar()
    environment = service["environment"]
    secrets = {s["source"] if isinstance(s, dict) else s: s for s in service["secrets"]}
    file_settings = {name: path for name, path in environment.items() if name.endswith("_FILE")}
    assert {"AWS_ACCESS_KEY_ID_FILE", "AWS_SECRET_ACCESS_KEY_FILE"} <= set(file_settings)
    for name in environment:
        base = name.removesuffix("_FILE")
        assert base in SETTING, f"{name}: no such setting"
        if name != base:
            assert SETTING[base].file, f"{base} accepts no _FILE form"
    for name, path in file_settings.items():
        secret = path.removeprefix("/run/secrets/")
        assert path.startswith("/run/secrets/") and secret in secrets, name
        assert stack()["secrets"][secret]["external"] is True
        # The sidecar's uid reads it (mode 0400).
        assert (secrets[secret]["uid"], secrets[secret]["mode"]) == ("10001", 0o400), secret
    assert environment["BACKUP_PROJECT"] == "*", "a node's sidecar backs up every stack on its node"


# --- Prometheus ---------------------------------------------------------------------------

def test_prometheus_asks_swarm_dns_for_every_sidecar_task() -> None:
    job = next(j for j in prometheus_config()["scrape_configs"] if j["job_name"] == "backup-sidecar")
    assert 'job="backup-sidecar"' in ALERTS.read_text()
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["tasks.backup"] and sd["type"] == "A"
    # tasks.<name>: the service's short name, an alias on the stack's own networks.
    assert "backup" in stack()["services"]
    port = int(sidecar()["environment"].get("METRICS_PORT", SETTING["METRICS_PORT"].default))
    assert sd["port"] == port == 9918
    # instance: the node's name, taken from the node label of every series.
    (relabel,) = job["metric_relabel_configs"]
    assert (relabel["source_labels"], relabel["target_label"]) == (["node"], "instance")


def test_prometheus_shares_an_overlay_network_with_the_sidecars() -> None:
    services, networks = stack()["services"], stack()["networks"]
    shared = set(services["backup"]["networks"]) & set(services["prometheus"]["networks"])
    assert shared and all(networks[n]["driver"] == "overlay" for n in shared)
    # Grafana's data source is http://prometheus:9090: on a network with Prometheus too.
    assert set(services["grafana"]["networks"]) & set(services["prometheus"]["networks"])


def test_configs_mount_the_monitoring_files_where_they_are_read() -> None:
    data = stack()
    files = {name: config["file"] for name, config in data["configs"].items()}
    for path in files.values():
        assert (ROOT / path).is_file(), path
    targets = {files[c["source"]]: c["target"] for s in data["services"].values() for c in s.get("configs", [])}
    prometheus = data["services"]["prometheus"]
    config = targets["./monitoring/prometheus.swarm.yml"]
    assert f"--config.file={config}" in prometheus["command"]
    # rule_files is relative to the configuration file.
    (rules,) = prometheus_config()["rule_files"]
    assert targets["./monitoring/alerts.yaml"] == str(Path(config).parent / rules)
    provider = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/backup-sidecar.yaml").read_text())
    folder = provider["providers"][0]["options"]["path"]
    assert str(Path(targets["./monitoring/grafana-dashboard.json"]).parent) == folder
    # Local volumes stay on their node: Prometheus is pinned.
    assert pinned(prometheus)


# --- the labelled examples ------------------------------------------------------------------

def pinned(service: dict) -> bool:
    """Held on one node the way the sidecar recognises (sidecar.core.swarm.placement_warning)."""
    constraints = [interpolate(c).replace(" ", "") for c in service["deploy"]["placement"]["constraints"]]
    return any(c.startswith(("node.hostname==", "node.id==")) for c in constraints)


def labelled() -> dict[str, dict]:
    return {name: s for name, s in stack()["services"].items() if "backup.enable" in s.get("labels", {})}


def test_example_labels_are_container_labels_the_sidecar_accepts() -> None:
    assert labelled()
    for name, service in labelled().items():
        assert not any(k.startswith("backup.") for k in service.get("deploy", {}).get("labels", {})), name
        for key, value in service["labels"].items():
            assert key in LABEL, f"{name}: unknown label {key}"
            if LABEL[key].parse is not None:
                LABEL[key].parse(value)


def test_examples_show_a_pinned_replicated_stop_and_a_global_without_orchestrator() -> None:
    services = labelled().values()
    replicated = [s for s in services if s["labels"].get("backup.strategy", "stop") == "stop"
                  and s["deploy"].get("mode", "replicated") == "replicated"]
    assert replicated, "a replicated service backed up with stop"
    for service in replicated:
        # Scaling needs a manager's engine; the volume must not move.
        assert "node.role == manager" in service["deploy"]["placement"]["constraints"] and pinned(service)
        assert service["deploy"]["replicas"] == 1
    assert any(s["deploy"].get("mode") == "global"
               and ("backup.preset" in s["labels"] or s["labels"].get("backup.strategy") == "pause")
               for s in services), "a global service backed up by a preset or pause"


# --- the real parsers -----------------------------------------------------------------------

def test_promtool_check_swarm_config(promtool: str) -> None:  # noqa: F811 (the fixture)
    result = run(promtool, "check", "config", str(PROMETHEUS_SWARM))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def _run_with_env(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **DEPLOY_ENV}
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)


def test_compose_reads_the_stack_file() -> None:
    if not shutil.which("docker-compose"):
        pytest.skip("docker-compose (Compose 1.29, reads deploy keys) is not installed")
    result = _run_with_env("docker-compose", "-f", STACK.name, "config")
    assert result.returncode == 0, result.stderr
    assert "mode: global" in result.stdout
    # Without S3_BUCKET the deploy stops with the file's own message.
    env = {k: v for k, v in {**os.environ, **DEPLOY_ENV}.items() if k != "S3_BUCKET"}
    bare = subprocess.run(["docker-compose", "-f", STACK.name, "config"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)
    assert bare.returncode != 0 and "set S3_BUCKET" in bare.stderr


def test_docker_stack_loader_reads_the_stack_file() -> None:
    docker = shutil.which("docker")
    if not docker or "--compose-file" not in run(docker, "stack", "config", "--help").stdout:
        pytest.skip("no Docker CLI with `docker stack config` (CLI 20.10's has none)")
    result = _run_with_env(docker, "stack", "config", "-c", STACK.name)
    assert result.returncode == 0, result.stderr
    loaded = yaml.safe_load(result.stdout)
    assert loaded["services"]["backup"]["deploy"]["mode"] == "global"
    assert loaded["services"]["backup"]["user"] == "10001:998"


def test_swarm_guide_and_stack_header_agree_with_the_stack() -> None:
    section = (ROOT / "docs" / "how-to" / "swarm.md").read_text()
    header = STACK.read_text().split("\nservices:")[0]
    for text in (section, header):
        created = set(re.findall(r"docker secret create (\w+) -", text))
        assert created == set(stack()["secrets"]) - {"notify_urls"}, created
        assert "docker stack deploy --resolve-image never -c compose.swarm.yaml backup" in text
        assert "backup_backup" in text  # the stack's name, then the service's
        assert "export MONITORING_NODE=" in text
    assert "BackupSidecarNodeWithoutSidecar" in section and "BackupSidecarNodeWithoutSidecar" in ALERTS.read_text()
