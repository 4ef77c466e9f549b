"""Which containers a sidecar backs up: BACKUP_PROJECT, else its own Compose project, else
the whole engine; `plan` says which scope is in force."""

from __future__ import annotations

import json

import pytest


SHOP = {"com.docker.compose.project": "shop"}


@pytest.fixture
def two_stacks(engine, tmp_path):
    for project in ("shop", "blog"):
        engine.add_container(f"{project}-db-1", {"backup.enable": "true", "com.docker.compose.project": project,
                                                 "com.docker.compose.service": "db", "backup.name": f"{project}-db"},
                             {"/data": tmp_path / "volumes" / f"{project}_db"})
    return engine


def _plan(run, capsys) -> dict:
    assert run("plan", "--json") == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("own, setting, targets, why", [
    (None, None, ["blog-db", "shop-db"], "not running in a container"),
    ("shop", None, ["shop-db"], "the sidecar's own container 'shop-backup-1'"),
    ("", None, ["blog-db", "shop-db"], "is in no Compose project"),
    ("shop", "*", ["blog-db", "shop-db"], "BACKUP_PROJECT=*"),
    ("shop", "blog", ["blog-db"], "BACKUP_PROJECT"),
    (None, "blog", ["blog-db"], "BACKUP_PROJECT"),
], ids=["outside-a-container", "own-project", "container-without-project", "star", "setting-wins", "setting"])
def test_scope(run, two_stacks, monkeypatch, capsys, own, setting, targets, why):
    if own is not None:
        labels = {"com.docker.compose.project": own} if own else {}
        two_stacks.own = two_stacks.add_container(f"{own or 'lone'}-backup-1" if own else "lone-backup", labels)
    if setting is not None:
        monkeypatch.setenv("BACKUP_PROJECT", setting)
    plan = _plan(run, capsys)
    assert sorted(t["target"] for t in plan["targets"]) == targets
    assert why in plan["scope"]["why"]
    assert plan["scope"]["project"] == (None if len(targets) == 2 else targets[0].split("-")[0])
    assert run("plan") == 0
    assert capsys.readouterr().out.startswith("scope: ")


def test_backup_outside_the_scope_is_not_found(run, two_stacks, capsys):
    two_stacks.own = two_stacks.add_container("shop-backup-1", SHOP)
    assert run("backup", "blog-db") == 2
    assert "no target named 'blog-db'" in capsys.readouterr().err
    assert run("backup", "shop-db") == 0
