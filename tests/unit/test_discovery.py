"""discovery.py: labelled containers -> targets and skipped containers."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from sidecar.core.discovery import discover
from sidecar.core.model import ContainerState
from sidecar.core.schedule import parse_schedule

from .helpers import container

DAILY = parse_schedule("@daily")


def c(name, labels=None, *, id=None, backup_name=None, project="shop", **kwargs):
    """A container called `name`, service defaulting to the name's middle part."""
    if backup_name is None:
        backup_name = name.split("-")[1] if name.count("-") >= 2 else name
    return container(labels, name=name, id=id or (name.encode().hex() + "0" * 64)[:64], backup_name=backup_name,
                     project=project, **kwargs)


def test_good_and_bad_containers_mixed():
    containers = [
        c("shop-web-1", {"backup.enable": "true", "backup.strategy": "bogus"}),
        c("shop-db-1", {"backup.enable": "yes", "backup.schedule": "0 3 * * *"}),
        c("shop-cache-1", {"backup.enable": "false"}),  # disabled: ignored
        c("shop-proxy-1", {}),  # no backup labels: ignored
        c("shop-queue-1", {"backup.enable": "perhaps"}),
        c("shop-files-1", {"backup.enable": "1"}, mounts=()),
        c("shop-api-1", {"backup.enable": "TRUE", "backup.name": "api"}),
    ]
    found = discover(containers, DAILY)
    assert [t.container.name for t in found.targets] == ["shop-api-1", "shop-db-1"]
    assert [t.backup_name for t in found.targets] == ["api", "db"]
    assert found.targets[1].config.schedule == parse_schedule("0 3 * * *")
    assert found.targets[0].config.schedule == DAILY
    reasons = {s.container.name: s.reason for s in found.skipped}
    assert list(reasons) == ["shop-files-1", "shop-queue-1", "shop-web-1"]
    assert reasons["shop-web-1"] == ("container 'shop-web-1': label backup.strategy='bogus' is invalid: "
                                     "accepted: stop, pause, hot")
    assert "container 'shop-queue-1': label backup.enable='perhaps' is invalid" in reasons["shop-queue-1"]
    assert "container 'shop-files-1': nothing to back up" in reasons["shop-files-1"]


def test_order_does_not_depend_on_the_listing_order():
    containers = [c(f"shop-s{i}-1") for i in (3, 1, 2)]
    first = discover(containers, DAILY)
    second = discover(reversed(containers), DAILY)
    assert [t.backup_name for t in first.targets] == ["s1", "s2", "s3"]
    assert first == second


def test_no_candidates():
    found = discover([c("shop-web-1", {}), c("shop-db-1", {"backup.enable": "no"})], DAILY)
    assert found.targets == () and found.skipped == ()


def test_duplicate_backup_name_skips_the_second_by_container_name():
    containers = [
        c("shop-db-1", backup_name="db"),
        c("blog-db-1", backup_name="db", project="blog"),
    ]
    found = discover(containers, DAILY)
    assert [(t.backup_name, t.container.name) for t in found.targets] == [("db", "blog-db-1")]
    assert len(found.skipped) == 1
    skipped = found.skipped[0]
    assert skipped.container.name == "shop-db-1"
    assert skipped.reason == ("container 'shop-db-1': backup name 'db' is already used by container 'blog-db-1'; "
                              "set label backup.name to a name of its own")


def test_duplicate_explicit_backup_names():
    containers = [
        c("b-x-1", {"backup.enable": "true", "backup.name": "main"}),
        c("a-y-1", {"backup.enable": "true", "backup.name": "main"}),
        c("c-z-1", {"backup.enable": "true", "backup.name": "main"}),
    ]
    found = discover(containers, DAILY)
    assert [t.container.name for t in found.targets] == ["a-y-1"]
    assert [s.container.name for s in found.skipped] == ["b-x-1", "c-z-1"]
    assert all("already used by container 'a-y-1'" in s.reason for s in found.skipped)


def _recreated(old_state, new_state):
    """Compose's `up -d` recreating shop-db-1: the old one renamed `<id12>_shop-db-1` beside the new."""
    old_id, new_id = "0ld" + "1" * 61, "ne7" + "2" * 61
    number = {"com.docker.compose.container-number": "1"}
    old = c(f"{old_id[:12]}_shop-db-1", {"backup.enable": "true", **number}, id=old_id, backup_name="db")
    new = c("shop-db-1", {"backup.enable": "true", **number}, id=new_id, backup_name="db")
    return dataclasses.replace(old, state=old_state), dataclasses.replace(new, state=new_state)


@pytest.mark.parametrize("old_state, new_state", [
    (ContainerState.EXITED, ContainerState.CREATED),  # between create and start
    (ContainerState.EXITED, ContainerState.RUNNING),
    (ContainerState.RUNNING, ContainerState.CREATED),  # the old one not stopped yet
])
def test_a_container_being_recreated_by_compose_is_no_clash(old_state, new_state, caplog):
    old, new = _recreated(old_state, new_state)
    for order in ([old, new], [new, old]):
        with caplog.at_level(logging.DEBUG, logger="sidecar.core.discovery"):
            found = discover(order, DAILY)
        assert found.skipped == ()
        [target] = found.targets
        assert target.container == (old if old_state is ContainerState.RUNNING else new)
    assert any("replaced" in r.__dict__ and r.levelno == logging.DEBUG for r in caplog.records)


def test_replicas_of_a_scaled_service_still_clash():
    one = c("shop-db-1", {"backup.enable": "true", "com.docker.compose.container-number": "1"}, backup_name="db")
    two = c("shop-db-2", {"backup.enable": "true", "com.docker.compose.container-number": "2"}, backup_name="db")
    found = discover([one, two], DAILY)
    assert [t.container.name for t in found.targets] == ["shop-db-1"]
    assert "already used by container 'shop-db-1'" in found.skipped[0].reason


def test_a_skipped_container_does_not_reserve_its_name():
    containers = [
        c("a-db-1", {"backup.enable": "true", "backup.name": "db", "backup.compression": "rar"}),
        c("b-db-1", {"backup.enable": "true", "backup.name": "db"}),
    ]
    found = discover(containers, DAILY)
    assert [t.container.name for t in found.targets] == ["b-db-1"]
    assert [s.container.name for s in found.skipped] == ["a-db-1"]
    assert "backup.compression='rar'" in found.skipped[0].reason


def test_duplicate_resolved_with_a_backup_name_label():
    containers = [
        c("shop-db-1", {"backup.enable": "true", "backup.name": "shop-db"}, backup_name="db"),
        c("blog-db-1", backup_name="db", project="blog"),
    ]
    found = discover(containers, DAILY)
    assert sorted(t.backup_name for t in found.targets) == ["db", "shop-db"]
    assert found.skipped == ()


@pytest.mark.parametrize("project, expected", [
    (None, ["blog-web-1", "loose", "shop-db-1", "shop-web-1"]),
    ("shop", ["shop-db-1", "shop-web-1"]),
    ("blog", ["blog-web-1"]),
    ("none", []),
])
def test_project_limits_discovery(project, expected):
    containers = [
        c("shop-web-1", {"backup.enable": "true", "backup.name": "shop-web"}),
        c("shop-db-1"),
        c("blog-web-1", project="blog"),
        c("loose", project=None, backup_name=None),
        c("shop-bad-1", {"backup.enable": "true", "backup.strategy": "x"}, project="other"),
    ]
    found = discover(containers, DAILY, project)
    assert [t.container.name for t in found.targets] == expected
    if project is not None:
        # Containers of other stacks are not this sidecar's business: not even reported.
        assert found.skipped == ()
    else:
        assert [s.container.name for s in found.skipped] == ["shop-bad-1"]


def test_one_crashing_label_does_not_stop_discovery():
    found = discover([c("shop-a-1", {"backup.enable": "true", "backup.stop-timeout": "²"}), c("shop-b-1")], DAILY)
    assert [t.backup_name for t in found.targets] == ["b"]
    assert [s.container.name for s in found.skipped] == ["shop-a-1"]


# --- find ----------------------------------------------------------------------------

FIND_CONTAINERS = [
    c("shop-db-1", id="abcd1111" + "0" * 56),
    c("shop-web-1", {"backup.enable": "true", "backup.name": "frontend"}, id="abcd2222" + "0" * 56),
    c("shop-api-1", id="ef012345" + "0" * 56),
    c("shop-bad-1", {"backup.enable": "true", "backup.strategy": "x"}, id="99998888" + "0" * 56),
]


@pytest.mark.parametrize("ref, expected", [
    ("db", "shop-db-1"),
    ("frontend", "shop-web-1"),
    ("shop-web-1", "shop-web-1"),
    ("shop-api-1", "shop-api-1"),
    ("ef012345" + "0" * 56, "shop-api-1"),
    ("ef01", "shop-api-1"),
    ("abcd1", "shop-db-1"),
    ("abcd2222", "shop-web-1"),
    ("abcd", None),  # ambiguous prefix
    ("ef0", None),  # too short to be an ID prefix
    ("web", None),  # the service name is not the target's name when backup.name is set
    ("shop-bad-1", None),  # skipped, not a target
    ("9999", None),
    ("nothing", None),
    ("", None),
])
def test_find(ref, expected):
    found = discover(FIND_CONTAINERS, DAILY).find(ref)
    assert (found.container.name if found else None) == expected


@pytest.mark.parametrize("ref, expected", [
    ("shop-bad-1", "shop-bad-1"),
    ("9999", "shop-bad-1"),
    ("999", None),
    ("db", None),
    ("shop-db-1", None),
])
def test_find_skipped(ref, expected):
    found = discover(FIND_CONTAINERS, DAILY).find_skipped(ref)
    assert (found.container.name if found else None) == expected


def test_find_prefers_the_target_name_over_a_container_name():
    found = discover([
        c("db", {"backup.enable": "true", "backup.name": "legacy"}, project=None, backup_name=None),
        c("shop-db-1"),  # target "db"
    ], DAILY)
    assert found.find("db").container.name == "shop-db-1"
