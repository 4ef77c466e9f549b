"""A hot copy of what looks like a live database (consistency.py): when it is a risk,
what the warning says, and when it is news for the notifier (once per new risk)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sidecar.core.consistency import hot_copy_risk, looks_like, may_be_at_risk
from sidecar.core.labels import parse_target
from sidecar.notify.sender import with_risk
from sidecar.notify.state import FailingTargets
from sidecar.core.schedule import parse_schedule

from .helpers import container

SCHEDULE = parse_schedule("0 4 * * *")


def parse(labels, image="app:1"):
    return parse_target(replace(container({"backup.enable": "true", **labels}), image=image), SCHEDULE)


HOT = {"backup.strategy": "hot"}


@pytest.mark.parametrize("labels, image, command, risk", [
    (HOT, "mariadb:11", (), ("mariadb", "MySQL/MariaDB", "mysql")),
    (HOT, "docker.io/library/postgres:16-alpine", (), ("postgres", "PostgreSQL", "postgres")),
    (HOT, "acme/shop:3", ("docker-entrypoint.sh", "mysqld"), ("mysqld", "MySQL/MariaDB", "mysql")),
    (HOT, "acme/cache:1", ("/usr/bin/redis-server", "--save", "60"), ("redis-server", "Redis", "redis")),
    (HOT, "acme/api:1", ("/usr/local/bin/sqlite3",), ("sqlite3", "SQLite", "sqlite")),
    (HOT, "nginx:1", ("nginx", "-g"), None),
    (HOT, "ghcr.io/acme/postgresql-exporter:1", (), None),  # not a server
    ({}, "mariadb:11", (), None),  # stop: consistent
    ({"backup.strategy": "pause"}, "mariadb:11", (), None),
    ({**HOT, "backup.preset": "mariadb"}, "mariadb:11", (), None),  # its own dump
    ({**HOT, "backup.hot-ok": "true"}, "mariadb:11", (), None),  # acknowledged
    ({**HOT, "backup.hot-ok": "yes"}, "mariadb:11", (), None),
    ({**HOT, "backup.hot-ok": "false"}, "mariadb:11", (), ("mariadb", "MySQL/MariaDB", "mysql")),
], ids=["image", "image-registry", "command", "command-path", "sqlite", "nginx", "exporter", "stop", "pause",
        "preset", "hot-ok", "hot-ok-yes", "hot-ok-false"])
def test_when_a_hot_copy_is_a_risk(labels, image, command, risk):
    found = hot_copy_risk(parse(labels, image), command)
    assert (None if found is None else (found.seen, found.app, found.preset)) == risk


def test_only_hot_unacknowledged_targets_without_preset_need_their_command():
    assert may_be_at_risk(parse(HOT))
    assert not may_be_at_risk(parse({**HOT, "backup.hot-ok": "true"}))
    assert not may_be_at_risk(parse({**HOT, "backup.preset": "redis"}))
    assert not may_be_at_risk(parse({}))


def test_the_warning_names_the_label_the_preset_and_the_acknowledgement():
    risk = hot_copy_risk(parse(HOT, "mariadb:11"))
    assert risk.summary == (
        "hot copy of a live database (mariadb, MySQL/MariaDB) by backup.strategy=hot: it can restore silently corrupt; "
        "set backup.preset=mysql (its own dump, no downtime) or backup.strategy=pause; or, if the copy is safe for "
        "this app, acknowledge it with backup.hot-ok=true")
    assert risk.warning.startswith("app looks like MySQL/MariaDB (mariadb) and is copied hot")


def test_an_app_without_a_preset_is_told_to_pause_or_stop(monkeypatch):
    monkeypatch.setattr("sidecar.core.consistency.PRESETS", ("postgres",))
    risk = hot_copy_risk(parse(HOT, "mongo:7"))
    assert risk.preset is None and "set backup.strategy=pause or stop (no preset for it yet)" in risk.summary


def test_looks_like_matches_whole_names_only():
    assert looks_like("mysql-router:8") is not None  # a name ending at "-" counts, as plan always did
    assert looks_like("mypostgresql:1") is None and looks_like("redisinsight:2") is None


@pytest.mark.parametrize("event, new_risk, expected", [
    (None, True, "risk"), ("success", True, "risk"), (None, False, None), ("success", False, "success"),
    ("failure", True, "failure"), ("recovery", True, "recovery"), ("offsite", True, "offsite"),
])
def test_a_new_risk_is_news_unless_the_run_is_news_already(event, new_risk, expected):
    assert with_risk(event, new_risk) == expected


@pytest.mark.parametrize("path", [True, False], ids=["file", "memory"])
def test_a_risk_is_new_once_until_it_goes_away_or_changes(tmp_path, path):
    state = FailingTargets(tmp_path / "notify.json" if path else None)
    seen = [state.record("db", result, "t", None, risk).new_risk for result, risk in [
        ("success", "mariadb/mysql"), ("success", "mariadb/mysql"), ("failure", "mariadb/mysql"),
        ("skipped", None),  # read nothing: changes nothing
        ("success", "mariadb/mysql"), ("success", None), ("success", "mariadb/mysql"),
        ("success", "mysqld/mysql"),  # another risk
    ]]
    assert seen == [True, False, False, False, False, False, True, True]
    if path:  # and a restart remembers it
        assert not FailingTargets(tmp_path / "notify.json").record("db", "success", "t", None, "mysqld/mysql").new_risk
