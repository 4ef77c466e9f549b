"""Which Compose projects have their stack archived, and which host files make it up."""

from __future__ import annotations

import pytest

from sidecar.core.discovery import discover
from sidecar.core.model import Mount
from sidecar.core.schedule import parse_schedule
from sidecar.core.stacks import StackSettings, discover_stacks, include_problem, relpath_for

from .helpers import DATA, bind, container

WD = "/srv/proj"
COMPOSE = {"com.docker.compose.project.working_dir": WD,
           "com.docker.compose.project.config_files": "docker-compose.yml"}
SECRET = bind(f"{WD}/secrets/pw.txt", "/run/secrets/pw")


def ro(source: str, destination: str) -> Mount:
    return Mount("bind", source, destination, read_only=True)


def labelled(extra=None, mounts=(DATA,), name="proj-app-1", id="a" * 64, service="app"):
    return container({"backup.enable": "true", **COMPOSE, **(extra or {})}, mounts, name=name, id=id,
                     backup_name=service)


def plain(extra=None, mounts=(), name="proj-db-1", id="c" * 64, service="db", project="proj"):
    """A container of the project without backup labels."""
    return container({**COMPOSE, **(extra or {})}, mounts, name=name, id=id, backup_name=service, project=project)


def stacks_of(containers, settings=StackSettings()):
    targets = discover(containers, parse_schedule("@daily")).targets
    return discover_stacks(targets, containers, settings)


def parts(found):
    (stack,) = found.stacks
    return [(str(p.kind), p.host_path, p.relpath, p.optional) for p in stack.parts]


@pytest.mark.parametrize("path,expected", [
    (f"{WD}/docker-compose.yml", "docker-compose.yml"),
    (f"{WD}/conf/app.conf", "conf/app.conf"),
    (f"{WD}//conf/../conf/x", "conf/x"),
    ("/etc/traefik/traefik.yml", "_outside/etc/traefik/traefik.yml"),
    ("/srv/project2/x", "_outside/srv/project2/x"),  # a sibling whose name starts alike is outside
    (WD, "."),
])
def test_relpath_keeps_the_working_folder_layout(path, expected):
    assert relpath_for(path, WD) == expected


def test_a_project_with_env_secret_and_config():
    found = stacks_of([
        labelled(mounts=(DATA, ro(f"{WD}/conf", "/conf"), bind("/var/run/docker.sock", "/var/run/docker.sock"))),
        plain(mounts=(SECRET, bind("/opt/keys/api.key", "/run/secrets/api"), ro("/etc/localtime", "/etc/localtime"),
                      bind(f"{WD}/data", "/var/lib/db"))),
    ])
    assert parts(found) == [
        ("env", f"{WD}/.env", ".env", True),  # implicit: Compose reads it when it is there
        ("secret", "/opt/keys/api.key", "_outside/opt/keys/api.key", False),
        ("config", f"{WD}/conf", "conf", False),
        ("compose", f"{WD}/docker-compose.yml", "docker-compose.yml", False),
        ("secret", f"{WD}/secrets/pw.txt", "secrets/pw.txt", False),
    ]
    (stack,) = found.stacks
    assert (stack.project, stack.working_dir, stack.leader) == ("proj", WD, "app")
    assert [p.relpath for p in stack.secrets] == ["_outside/opt/keys/api.key", "secrets/pw.txt"]
    assert stack.without_secrets().secrets == ()


@pytest.mark.parametrize("labels,expected", [
    # -f with absolute paths, two files: both kept, one outside
    ({"com.docker.compose.project.config_files": f"{WD}/compose.yaml,/etc/stack/override.yaml"},
     [("env", f"{WD}/.env", ".env", True),
      ("compose", "/etc/stack/override.yaml", "_outside/etc/stack/override.yaml", False),
      ("compose", f"{WD}/compose.yaml", "compose.yaml", False)]),
    # --env-file named: that one, and no implicit .env
    ({"com.docker.compose.project.environment_file": f"{WD}/prod.env"},
     [("compose", f"{WD}/docker-compose.yml", "docker-compose.yml", False), ("env", f"{WD}/prod.env", "prod.env", False)]),
    # extra paths by label
    ({"backup.stack.include": "dynamic, traefik.yml"},
     [("env", f"{WD}/.env", ".env", True), ("compose", f"{WD}/docker-compose.yml", "docker-compose.yml", False),
      ("extra", f"{WD}/dynamic", "dynamic", False), ("extra", f"{WD}/traefik.yml", "traefik.yml", False)]),
])
def test_parts_from_labels(labels, expected):
    assert parts(stacks_of([labelled(labels)])) == expected


def test_settings_include_and_exclude_reach_every_project():
    found = stacks_of([labelled({"backup.stack.exclude": "*.bak"})],
                      StackSettings(include=("dynamic",), exclude=("*.log",)))
    (stack,) = found.stacks
    assert "dynamic" in [p.relpath for p in stack.parts]
    assert stack.exclude == ("*.log", "*.bak")


@pytest.mark.parametrize("where,value,reason", [
    ("labelled", "false", "label backup.stack=false on container 'proj-app-1'"),
    ("plain", "no", "label backup.stack=no on container 'proj-db-1'"),
    ("plain", "maybe", "container 'proj-db-1': label backup.stack='maybe' is invalid: accepted: true/1/yes or "
                       "false/0/no"),
])
def test_opt_out_on_any_container_of_the_project(where, value, reason):
    extra = {"backup.stack": value}
    found = stacks_of([labelled(extra if where == "labelled" else None), plain(extra if where == "plain" else None)])
    assert found.stacks == ()
    assert [(s.project, s.reason) for s in found.skipped] == [("proj", reason)]


@pytest.mark.parametrize("labels,reason", [
    ({"com.docker.compose.project.working_dir": ""}, "has the label com.docker.compose.project.working_dir"),
    ({"com.docker.compose.project.working_dir": "relative"}, "is not an absolute path"),
    ({"backup.stack.include": "../etc"}, "label backup.stack.include='../etc' is invalid: accepted: paths relative"),
    ({"backup.stack.include": "/etc"}, "label backup.stack.include='/etc' is invalid"),
])
def test_a_project_that_cannot_be_read_is_skipped_with_why(labels, reason):
    found = stacks_of([labelled(labels)])
    assert found.stacks == ()
    assert reason in found.skipped[0].reason


def test_two_folders_under_one_project_name_is_refused():
    other = plain({"com.docker.compose.project.working_dir": "/srv/other"})
    found = stacks_of([labelled(), other])
    assert "different working folders (/srv/other, /srv/proj)" in found.skipped[0].reason


def test_one_stack_per_project_led_by_its_first_target_and_none_without_compose():
    found = stacks_of([
        labelled(name="proj-web-1", id="d" * 64, service="web"),
        labelled(name="proj-api-1", id="e" * 64, service="api", mounts=(Mount("volume", "proj_api", "/api"),)),
        container({"backup.enable": "true"}, (Mount("volume", "solo", "/s"),), name="solo", id="f" * 64,
                  backup_name=None, project=None),
    ])
    assert [(s.project, s.leader) for s in found.stacks] == [("proj", "api")]
    assert found.led_by("api") is found.stacks[0] and found.led_by("web") is None
    assert found.find("proj") is found.stacks[0]


def test_containers_of_other_projects_add_nothing_and_disabled_is_empty():
    stranger = plain(mounts=(bind("/x/secret", "/run/secrets/x"),), project="other", name="other-db-1")
    assert "_outside/x/secret" not in [p.relpath for p in stacks_of([labelled(), stranger]).stacks[0].parts]
    assert stacks_of([labelled()], StackSettings(enabled=False)).stacks == ()


@pytest.mark.parametrize("path,ok", [("dynamic", True), ("a/b", True), ("/abs", False), ("a/../b", False),
                                     (".", False)])
def test_include_problem(path, ok):
    assert (include_problem(path) is None) is ok


def test_a_project_not_started_by_compose_is_skipped_quietly_and_a_bad_one_loudly():
    (quiet,) = stacks_of([labelled({"com.docker.compose.project.working_dir": ""})]).skipped
    (loud,) = stacks_of([labelled({"com.docker.compose.project.working_dir": "relative"})]).skipped
    (chosen,) = stacks_of([labelled({"backup.stack": "false"})]).skipped
    assert (quiet.warn, loud.warn, chosen.warn) == (False, True, False)
