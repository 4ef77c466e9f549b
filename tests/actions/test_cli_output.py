"""What one-shot commands show people: logs that do not drown their output, the image a
backup exported, and image exports in `list`."""

from __future__ import annotations

import json

import pytest

from sidecar import cli
from sidecar.telemetry import logs

from .conftest import app_labels


@pytest.fixture
def configured(monkeypatch) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    real = logs.configure
    monkeypatch.setattr(logs, "configure", lambda fmt="json", level="INFO", stream=None:
                        (seen.append((fmt, level)), real(fmt, level, stream))[1])
    return seen


def test_one_shot_commands_log_warnings_as_text_unless_told(run, engine, data, configured, capsys, monkeypatch):
    engine.add_container("app-1", app_labels(strategy="hot"), {"/data": data})
    assert run("backup", "app") == 0
    out, err = capsys.readouterr()
    assert configured[-1] == ("text", "WARNING")
    assert "app: wrote" in out and "{" not in err  # no INFO JSON lines among the human output
    monkeypatch.setenv("LOG_FORMAT", "json")
    assert run("plan") == 0
    assert configured[-1] == ("json", "WARNING")
    monkeypatch.setenv("LOG_LEVEL", "info")
    assert run("list") == 0
    assert configured[-1] == ("json", "INFO")


def test_the_daemon_keeps_its_defaults():
    settings = cli.load_settings({"BACKUP_DIR": "/backups"})
    assert cli._log_setup("run", settings, {}) == ("json", "INFO")
    assert cli._log_setup("backup", settings, {}) == ("text", "WARNING")
    assert cli._log_setup("backup", settings, {"LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG"}) == ("json", "INFO")


def test_backup_summary_and_list_show_the_exported_image(run, engine, data, capsys):
    built = engine.add_image("shop/app:1.0")  # built here: no digest, so it is exported
    engine.add_container("app-1", app_labels(strategy="hot"), {"/data": data}, image="shop/app:1.0",
                         image_id=built.id)
    assert run("backup", "app") == 0
    out = capsys.readouterr().out
    assert "app: exported image shop/app:1.0 to " in out and "images/" in out
    assert run("list", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    [image] = [r for r in rows if r["frequency"] == "image"]  # named as in its file name (no "/")
    assert image["target"] == "shop-app:1.0" and image["volume"] == "-" and image["path"].startswith("images/")
    assert image["checksum"] == "present" and image["size"] > 0
    assert run("list") == 0
    assert any(line.split()[3] == "image" for line in capsys.readouterr().out.splitlines()[1:])
    assert run("list", "app", "--json") == 0  # a target's archives only
    assert all(r["frequency"] != "image" for r in json.loads(capsys.readouterr().out))
