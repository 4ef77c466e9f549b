"""Presets as a user meets them (issue 18), against FakeEngine with stand-in tools:
an alias (`backup.preset=mariadb`) restores, lists, rotates and fetches its `mysql+dump`
archives; plan and the daemon's log say what a backup really does; and a hot copy of
what looks like a live database is said by every run (summary line, CLI), by one warning
notification per new risk, and by `backup_sidecar_consistency_risk`, until
`backup.hot-ok=true` acknowledges it."""

from __future__ import annotations

import json
import logging
import re
from datetime import date, timedelta

import pytest

from sidecar.actions.backup import run_backup
from sidecar.actions.daemon import Daemon
from sidecar.actions.plan import run_plan
from sidecar.actions.restore_dump import run_restore_dump
from sidecar.actions.rotate import run_rotation
from sidecar.telemetry.metrics import Metrics
from sidecar.notify.sender import Message, Notifier
from sidecar.core.notify_urls import NotifyConfig, NotifyOn
from sidecar.core.retention import Keep

from .conftest import app_labels
from .test_presets import _tools

# A preset's dump is read by an extract worker (a host process here): no worker, no restore.
pytestmark = pytest.mark.usefixtures("restore_worker")

DUMP_DONE = "-- Dump completed on 2026-12-02  3:00:00"
RISK = {"target": "app", "app": "mariadb", "preset": "mysql"}


def _mariadb(engine, tmp_path, received, **labels):
    """A MariaDB labelled with the alias, whose client writes what it is fed to `received`."""
    app = engine.add_container("my-1", app_labels(image="never", **labels), image="mariadb:11")
    engine.containers[app.id].bin = _tools(
        tmp_path, **{"mariadb-dump": f'echo "INSERT 1;"; echo "{DUMP_DONE}"',
                     "mariadb": f'case "$*" in *-e*) echo 0;; *) cat > {received};; esac'})
    return app


def _target(ctx, name="app"):
    target = ctx.discover().find(name)
    assert target is not None, ctx.discover().skipped
    return target


# --- the alias, both ways -----------------------------------------------------------------

def test_a_mariadb_labelled_target_restores_its_latest_dump(engine, ctx, tmp_path):
    """Before: `no mariadb+dump archive of app` (exit 2) although the backup had just written one."""
    received = tmp_path / "received.sql"
    _mariadb(engine, tmp_path, received, preset="mariadb")
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.ok and outcome.archives[0].path.name.startswith("app_mysql+dump_")
    restored = run_restore_dump(ctx, "app", "latest")
    assert restored.volume == "mysql+dump" and restored.archive == outcome.archives[0].path
    assert received.read_text().startswith("INSERT 1;")


def test_an_archive_typed_with_the_alias_is_the_presets(engine, ctx, tmp_path):
    """The other way: a `mariadb+dump` archive (renamed by hand, another version) restores
    for a `mysql` label, by latest and by FILE, and plan counts it as the target's backup."""
    received = tmp_path / "received.sql"
    _mariadb(engine, tmp_path, received, preset="mysql")
    [archive] = run_backup(ctx, _target(ctx)).archives
    alias = archive.path.with_name(archive.path.name.replace("mysql+dump", "mariadb+dump"))
    for suffix in ("", ".sha256"):
        archive.path.with_name(archive.path.name + suffix).rename(alias.with_name(alias.name + suffix))
    assert run_restore_dump(ctx, "app", "latest").archive == alias
    assert run_restore_dump(ctx, "app", str(alias)).archive == alias
    [row] = run_plan(ctx)[0]
    assert row.latest is not None and row.copies == 1


def test_rotation_keeps_one_dump_whichever_name_it_has(engine, ctx, tmp_path):
    received = tmp_path / "received.sql"
    _mariadb(engine, tmp_path, received, preset="mariadb")
    [first] = run_backup(ctx, _target(ctx)).archives
    day_before = re.sub(r"_(\d{4}-\d\d-\d\d)", lambda m: "_" + (date.fromisoformat(m[1]) - timedelta(days=1))
                        .isoformat(), first.path.name.replace("mysql+dump", "mariadb+dump"), count=1)
    alias = first.path.with_name(day_before)
    for suffix in ("", ".sha256"):
        first.path.with_name(first.path.name + suffix).rename(alias.with_name(alias.name + suffix))
    [second] = run_backup(ctx, _target(ctx)).archives
    rotation = run_rotation(ctx, lambda _name: Keep(hourly=0, daily=1, weekly=0, monthly=0))
    assert [a.path for a in rotation.local.deleted] == [alias]
    assert second.path.exists()


def test_cli_restore_from_a_destination_and_by_volume_name_with_the_alias(run, engine, tmp_path, monkeypatch,
                                                                         capsys):
    """`restore --from DEST --dump latest` on a new host, and `--volume mariadb+dump` taken
    for the dump it names."""
    disk = tmp_path / "disk"
    disk.mkdir()
    monkeypatch.setenv("BACKUP_DESTINATIONS", str(disk))
    received = tmp_path / "received.sql"
    _mariadb(engine, tmp_path, received, preset="mariadb")
    assert run("backup", "app") == 0
    monkeypatch.setenv("BACKUP_DIR", str(tmp_path / "new-host"))
    assert run("restore", "app", "--dump", "latest", "--from", "local") == 0
    assert "through its mysql+dump preset" in capsys.readouterr().out
    received.unlink()
    assert run("restore", "app", "--volume", "mariadb+dump") == 0
    assert received.read_text().startswith("INSERT 1;")


# --- what a backup really does --------------------------------------------------------------

def test_plan_and_the_daemon_say_a_preset_is_never_stopped(engine, ctx, tmp_path, data, run, capsys, caplog):
    _mariadb(engine, tmp_path, tmp_path / "r.sql", preset="mariadb")
    engine.add_container("pg-1", {**app_labels(preset="postgres", volumes="data"), "backup.name": "pg"},
                         {"/data": data}, image="postgres:16")
    with caplog.at_level(logging.INFO, logger="sidecar.actions.daemon"):
        Daemon(ctx).refresh_all()
    found = {r.target: r.strategy for r in caplog.records if r.getMessage() == "target found"}
    assert found == {"app": "preset:mariadb", "pg": "preset:postgres+volumes:stop"}
    rows = {r.target: r for r in run_plan(ctx)[0]}
    assert (rows["app"].strategy, rows["app"].preset, rows["app"].volume_strategy) == ("preset:mariadb", "mariadb",
                                                                                       None)
    assert (rows["pg"].strategy, rows["pg"].volume_strategy) == ("preset:postgres+volumes:stop", "stop")
    assert run("plan", "--json") == 0
    shown = {t["target"]: t for t in json.loads(capsys.readouterr().out)["targets"]}
    assert shown["app"]["strategy"] == "preset:mariadb" and shown["app"]["volume_strategy"] is None
    assert run("plan") == 0
    table = capsys.readouterr().out
    assert "preset:mariadb" in table and "preset:postgres+volumes:stop" in table  # (the CLI took the log over)


# --- a hot copy of a live database ----------------------------------------------------------

ACK = {"backup.hot-ok": "true"}


def _hot_mariadb(engine, data, image="mariadb:11", command=(), labels=None):
    """A MariaDB copied hot; `labels` (full names) added or overriding."""
    app = engine.add_container("my-1", {**app_labels(strategy="hot", image="never"), **(labels or {})},
                               {"/data": data}, image=image)
    engine.containers[app.id].command = command
    return app


def _risk_warnings(caplog):
    return [r for r in caplog.records if r.getMessage().startswith("backup finished with a warning")]


def test_every_hot_run_of_a_database_says_so_in_its_summary_line(engine, ctx, data, caplog):
    _hot_mariadb(engine, data)
    with caplog.at_level(logging.INFO):
        outcome = run_backup(ctx, _target(ctx))
    assert outcome.ok and outcome.risk is not None
    [line] = _risk_warnings(caplog)
    assert line.levelno == logging.WARNING
    text = line.getMessage()
    assert text.startswith("backup finished with a warning: hot copy of a live database (mariadb, MySQL/MariaDB)")
    assert "backup.strategy=hot" in text and "backup.preset=mysql" in text and "backup.hot-ok=true" in text
    assert (line.target, line.app, line.preset) == ("app", "mariadb", "mysql")
    assert not [r for r in caplog.records if r.getMessage() == "backup finished"]


def test_the_command_gives_a_database_away_too(engine, ctx, data):
    """An image with its own name runs `mysqld`: looked up once per run, for hot targets only."""
    _hot_mariadb(engine, data, image="acme/shop-db:3", command=("docker-entrypoint.sh", "mysqld"))
    assert run_backup(ctx, _target(ctx)).risk.seen == "mysqld"


@pytest.mark.parametrize("labels", [ACK, {"backup.strategy": "pause"}, {"backup.preset": "mariadb"}],
                         ids=["acknowledged", "pause", "preset"])
def test_acknowledged_or_fixed_targets_are_quiet(engine, ctx, data, tmp_path, caplog, labels):
    app = _hot_mariadb(engine, data, labels=labels)
    engine.containers[app.id].bin = _tools(tmp_path, **{"mariadb-dump": f'echo "{DUMP_DONE}"'})
    with caplog.at_level(logging.INFO):
        outcome = run_backup(ctx, _target(ctx))
    assert outcome.ok and outcome.risk is None and not _risk_warnings(caplog)
    assert engine.names("container_command") == []  # nothing to look up
    assert run_plan(ctx)[0][0].warnings == ()


def test_the_cli_exits_0_and_says_it_on_stderr(run, engine, data, capsys):
    _hot_mariadb(engine, data)
    assert run("backup", "app") == 0
    err = capsys.readouterr().err
    assert "app: warning: hot copy of a live database (mariadb, MySQL/MariaDB)" in err
    assert "backup.preset=mysql" in err


def test_one_warning_notification_per_new_risk(engine, make_ctx, data, tmp_path):
    """Sent when the risk starts, not every run (the log says it every run); again after
    it was fixed and came back; never while acknowledged. Shared through notify.json, so a
    restart (a new Notifier) does not repeat it."""
    sent: list[Message] = []
    ctx = make_ctx()
    state = ctx.store.state_dir / "notify.json"

    def backups(*runs_labels):
        notifier = Notifier(NotifyConfig(urls=(), on=NotifyOn.FAILURE), state, send=sent.append)
        for labels in runs_labels:
            engine.containers.clear()
            _hot_mariadb(engine, data, labels=labels)
            notifier.outcome(run_backup(ctx, _target(ctx)))
        notifier.close(timeout=5)

    backups({}, {})
    backups({})  # a restart
    assert [(m.event, m.notify_type) for m in sent] == [("risk", "warning")]
    [message] = sent
    assert message.title == "backup-sidecar: backup of app succeeded with a warning: hot copy of a live database"
    assert "warning: hot copy of a live database (mariadb, MySQL/MariaDB)" in message.body
    assert "backup.preset=mysql" in message.body
    backups(ACK, ACK, {})
    assert [m.event for m in sent] == ["risk", "risk"]


def test_the_metric_follows_the_last_run_and_the_labels(engine, ctx, data):
    metrics = Metrics(state_path=ctx.store.state_dir / "metrics.json")
    daemon = Daemon(ctx, metrics=metrics)
    _hot_mariadb(engine, data)
    daemon.refresh_all()
    value = metrics.registry.get_sample_value
    assert value("backup_sidecar_consistency_risk", {"target": "app", "app": "", "preset": ""}) == 0
    metrics.observe(run_backup(ctx, _target(ctx)))
    assert value("backup_sidecar_consistency_risk", RISK) == 1
    assert value("backup_sidecar_consistency_risk", {"target": "app", "app": "", "preset": ""}) is None
    # Acknowledged: 0 at once, before the next run (the labels are the user's answer).
    engine.containers.clear()
    _hot_mariadb(engine, data, labels=ACK)
    daemon.refresh_all()
    assert value("backup_sidecar_consistency_risk", RISK) is None
    assert value("backup_sidecar_consistency_risk", {"target": "app", "app": "", "preset": ""}) == 0
