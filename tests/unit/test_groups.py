"""Backup groups: the order to start and stop members, and what members must agree on."""

from __future__ import annotations

import pytest

from sidecar.core.groups import DEPENDS_ON, disagreements, groups_of, start_order
from sidecar.core.labels import parse_target
from sidecar.core.model import ContainerInfo, ContainerState, Mount
from sidecar.core.schedule import parse_schedule

DAILY = parse_schedule("@daily")


def _member(service: str, depends: str | None = None, order: str | None = None, **labels: str):
    all_labels = {"backup.enable": "true", "backup.group": "g", "com.docker.compose.project": "p",
                  "com.docker.compose.service": service, **labels}
    if depends is not None:
        all_labels[DEPENDS_ON] = depends
    if order is not None:
        all_labels["backup.group.order"] = order
    info = ContainerInfo(service * 4, f"p_{service}_1", "img", "sha256:1", ContainerState.RUNNING, all_labels,
                         (Mount("volume", f"p_{service}", "/data"),))
    return parse_target(info, DAILY)


@pytest.mark.parametrize("members, expected", [
    ([_member("web", "api:service_started:false"), _member("api", "db:service_healthy:true"), _member("db")],
     ["db", "api", "web"]),
    ([_member("b", order="2"), _member("a", order="3"), _member("c", order="1")], ["c", "b", "a"]),
    ([_member("b"), _member("a")], ["a", "b"]),  # neither: by name
    ([_member("x", "y:service_started:false"), _member("y", "x:service_started:false")], ["x", "y"]),  # a cycle
    ([_member("web", "cache:service_started:false,db:service_started:false"), _member("db", order="9")],
     ["db", "web"]),  # a dependency outside the group is ignored
])
def test_start_order_puts_dependencies_first_then_the_order_label_then_the_name(members, expected):
    assert [t.backup_name for t in start_order(members)] == expected
    group = groups_of(members)["g"]
    assert [t.backup_name for t in group.stop_order] == expected[::-1]


def test_members_must_agree_on_schedule_and_strategy():
    a, b = _member("a"), _member("b", **{"backup.strategy": "pause", "backup.schedule": "@weekly"})
    problems = disagreements([a, b])
    assert len(problems) == 2
    assert "backup.schedule is '@daily' on 'p_a_1' but '@weekly' on 'p_b_1'" in problems[0]
    assert "backup.strategy is 'stop' on 'p_a_1' but 'pause' on 'p_b_1'" in problems[1]
    assert disagreements([a, _member("c")]) == []
