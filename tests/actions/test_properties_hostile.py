"""Hostile input through the daemon and the CLI, on the fake engine (hypothesis): containers
with hostile labels never crash the daemon's discovery and backups, hostile names on the
command line end in an exit code and a message, and nothing is ever written outside
BACKUP_DIR."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sidecar.actions.backup import run_backup
from sidecar.actions.context import Context
from sidecar.actions.daemon import Daemon
from sidecar.core.labels import KNOWN_LABELS, is_candidate
from sidecar.core.settings import load_settings, unknown_settings
from tests.fakes.engine import FakeEngine
from tests.unit.test_properties import hostile_text

PROPS = settings(max_examples=40, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
label_names = st.sampled_from(KNOWN_LABELS + ("backup.unknown",))


def outside_backups(root: Path) -> set[Path]:
    """Every path under root but BACKUP_DIR (root/backups) and what it holds."""
    backups = root / "backups"
    return {p for p in root.rglob("*") if p != backups and backups not in p.parents}


@settings(PROPS, max_examples=20)
@given(st.lists(st.tuples(hostile_text, st.dictionaries(label_names, hostile_text, max_size=5)), min_size=1,
                max_size=4))
@example([("../../x", {"backup.name": "../../../../x", "backup.strategy": "stop"})])
@example([("a", {"backup.name": "x"}), ("b", {"backup.name": "x"})])
def test_daemon_discovery_and_backups_survive_hostile_labels(tmp_path_factory, containers):
    root = tmp_path_factory.mktemp("hostile")
    engine = FakeEngine()
    for i, (name, labels) in enumerate(containers):
        folder = root / "volumes" / f"v{i}"
        (folder).mkdir(parents=True)
        (folder / "f").write_text("x")
        engine.add_container(name or f"c{i}", {"backup.enable": "true", **labels}, {"/data": folder})
    ctx = Context.create(load_settings({"BACKUP_DIR": str(root / "backups"), "TZ": "UTC"}), engine)
    ctx.store.prepare()
    before = outside_backups(root)
    daemon = Daemon(ctx)
    daemon.refresh_all()
    for container_id in list(engine.containers):
        daemon.refresh_one(container_id, "start")
    found = daemon.discovery
    candidates = [c for c in engine.containers.values() if is_candidate(c.info.labels)]
    assert len(found.targets) + len(found.skipped) == len(candidates)
    for target in found.targets:
        outcome = run_backup(ctx, target)  # never raises for an expected failure
        assert outcome.result is not None
    after = outside_backups(root)
    assert after == before, sorted(map(str, after - before))


@pytest.mark.parametrize("command", [["backup", "NAME"], ["restore", "NAME", "--volume", "data"],
                                     ["restore", "app", "--volume", "NAME", "--force"],
                                     ["restore", "app", "--volume", "data", "--archive", "NAME", "--force"],
                                     ["list", "NAME"], ["prune", "--dry-run", "NAME"], ["restore-image", "NAME"]])
@PROPS
@given(name=hostile_text.filter(lambda s: s.replace("\0", "") and not s.replace("\0", "").startswith("-")))
@example(name="../../../../x")
@example(name="/etc")
@example(name="a\nb")
def test_cli_commands_with_hostile_names_exit_cleanly(run, engine, data, tmp_path, capsys, command, name):
    engine.add_container("app-1", {"backup.enable": "true", "backup.name": "app"}, {"/data": data}) \
        if not engine.containers else None
    before = outside_backups(tmp_path)
    code = run(*[name.replace("\0", "") if arg == "NAME" else arg for arg in command])
    assert code in (0, 1, 2, 64), code
    out = capsys.readouterr()
    if code:
        assert out.err.strip()
    after = outside_backups(tmp_path)
    assert after == before, sorted(map(str, after - before))


def test_unknown_settings_with_our_prefix_are_named_with_the_closest_known_one():
    env = {"BACKUP_DIR": "/b", "BACKUP_IMAGES_KEEP": "2", "S3_BUCKT": "b", "NOTIFY_URLS_FILE": "/run/s",
           "BACKUP_TEST_SLOW": "1", "AWS_PROFILE": "x", "HOME": "/root", "LOG_LEVL": "DEBUG", "BACKUP_ZZZ": "1"}
    assert unknown_settings(env) == {"BACKUP_IMAGES_KEEP": "BACKUP_KEEP_IMAGES", "BACKUP_ZZZ": None,
                                     "LOG_LEVL": "LOG_LEVEL", "S3_BUCKT": "S3_BUCKET"}


def test_the_cli_warns_about_an_unknown_setting(run, monkeypatch, capsys):
    monkeypatch.setenv("BACKUP_IMAGES_KEEP", "7")
    assert run("list") == 0
    [line] = [line for line in capsys.readouterr().err.splitlines() if "unknown setting ignored" in line]
    assert line.startswith("WARNING") or " WARNING " in line
    assert "setting=BACKUP_IMAGES_KEEP did_you_mean=BACKUP_KEEP_IMAGES" in line
