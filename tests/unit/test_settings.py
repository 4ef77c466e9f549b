"""settings.py: environment -> Settings, every problem reported at once."""

from __future__ import annotations

import os
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from sidecar.core.errors import SettingsError
from sidecar.core.schedule import parse_schedule
from sidecar.core.settings import load_settings


def problems(env) -> list[str]:
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    assert str(info.value) == "; ".join(info.value.problems)
    return info.value.problems


def test_defaults():
    s = load_settings({})
    assert s.backup_dir == Path("/backups")
    assert s.state_dir == Path("/backups/.sidecar")
    assert s.default_schedule == parse_schedule("@daily")
    assert s.tz == ZoneInfo("UTC")
    assert s.concurrency == 1
    assert s.file_mode == 0o600
    assert s.log_format == "json"
    assert s.log_level == "INFO"
    assert s.docker_host is None
    assert s.helper_image is None
    assert s.project is None
    assert s.shutdown_grace == 5.0
    assert s.progress_interval == 10.0


@pytest.mark.parametrize("name", ["BACKUP_DIR", "BACKUP_DEFAULT_SCHEDULE", "TZ", "BACKUP_CONCURRENCY",
                                  "BACKUP_FILE_MODE", "LOG_FORMAT", "LOG_LEVEL", "BACKUP_SHUTDOWN_GRACE",
                                  "BACKUP_PROGRESS_INTERVAL"])
@pytest.mark.parametrize("blank", ["", "  ", "\n"])
def test_blank_values_mean_the_default(name, blank):
    assert load_settings({name: blank}) == load_settings({})


@pytest.mark.parametrize("env, attribute, expected", [
    ({"BACKUP_DIR": "/data/backups"}, "backup_dir", Path("/data/backups")),
    ({"BACKUP_DIR": " /b "}, "backup_dir", Path("/b")),
    ({"BACKUP_DEFAULT_SCHEDULE": "0 3 * * *"}, "default_schedule", parse_schedule("0 3 * * *")),
    ({"BACKUP_DEFAULT_SCHEDULE": "@weekly"}, "default_schedule", parse_schedule("@weekly")),
    ({"TZ": "Europe/Berlin"}, "tz", ZoneInfo("Europe/Berlin")),
    ({"TZ": ":America/New_York"}, "tz", ZoneInfo("America/New_York")),
    ({"TZ": "UTC"}, "tz", ZoneInfo("UTC")),
    ({"BACKUP_CONCURRENCY": "1"}, "concurrency", 1),
    ({"BACKUP_CONCURRENCY": "64"}, "concurrency", 64),
    ({"BACKUP_FILE_MODE": "0640"}, "file_mode", 0o640),
    ({"BACKUP_FILE_MODE": "640"}, "file_mode", 0o640),
    ({"BACKUP_FILE_MODE": "0o600"}, "file_mode", 0o600),
    ({"BACKUP_FILE_MODE": "0"}, "file_mode", 0),
    ({"BACKUP_FILE_MODE": "0777"}, "file_mode", 0o777),
    ({"LOG_FORMAT": "text"}, "log_format", "text"),
    ({"LOG_FORMAT": "JSON"}, "log_format", "json"),
    ({"LOG_LEVEL": "debug"}, "log_level", "DEBUG"),
    ({"LOG_LEVEL": "Warning"}, "log_level", "WARNING"),
    ({"DOCKER_HOST": "tcp://engine:2375"}, "docker_host", "tcp://engine:2375"),
    ({"BACKUP_HELPER_IMAGE": "busybox:1.36"}, "helper_image", "busybox:1.36"),
    ({"BACKUP_PROJECT": " shop "}, "project", "shop"),
    ({"BACKUP_SHUTDOWN_GRACE": "0"}, "shutdown_grace", 0.0),
    ({"BACKUP_SHUTDOWN_GRACE": "2.5"}, "shutdown_grace", 2.5),
    ({"BACKUP_SHUTDOWN_GRACE": "3600"}, "shutdown_grace", 3600.0),
    ({"BACKUP_PROGRESS_INTERVAL": "0.1"}, "progress_interval", 0.1),
    ({"BACKUP_PROGRESS_INTERVAL": "600"}, "progress_interval", 600.0),
])
def test_valid_values(env, attribute, expected):
    assert getattr(load_settings(env), attribute) == expected


INVALID = [
    # name, value, what the message says is accepted
    ("BACKUP_DIR", "backups", "expected an absolute path"),
    ("BACKUP_DEFAULT_SCHEDULE", "daily", "accepted: a 5-field cron expression"),
    ("BACKUP_DEFAULT_SCHEDULE", "@yearly", "@hourly, @daily, @weekly, @monthly"),
    ("TZ", "Mars/Olympus", "expected an IANA time zone such as UTC or Europe/Berlin"),
    ("TZ", "Europe/Berlinn", "expected an IANA time zone"),
    ("TZ", "../etc/passwd", "expected an IANA time zone"),
    ("TZ", "/usr/share/zoneinfo/UTC", "expected an IANA time zone"),
    ("TZ", "CET+1", "expected an IANA time zone"),
    ("BACKUP_CONCURRENCY", "0", "expected a whole number from 1 to 64"),
    ("BACKUP_CONCURRENCY", "65", "expected a whole number from 1 to 64"),
    ("BACKUP_CONCURRENCY", "-1", "expected a whole number from 1 to 64"),
    ("BACKUP_CONCURRENCY", "1.5", "expected a whole number from 1 to 64"),
    ("BACKUP_CONCURRENCY", "two", "expected a whole number from 1 to 64"),
    ("BACKUP_FILE_MODE", "0800", "expected an octal mode such as 0600 or 0640"),
    ("BACKUP_FILE_MODE", "rw-------", "expected an octal mode"),
    ("BACKUP_FILE_MODE", "1777", "expected an octal mode"),
    ("BACKUP_FILE_MODE", "-1", "expected an octal mode"),
    ("BACKUP_FILE_MODE", "0x1ff", "expected an octal mode"),
    ("LOG_FORMAT", "xml", "accepted: json, text"),
    ("LOG_LEVEL", "TRACE", "accepted: DEBUG, INFO, WARNING, ERROR"),
    ("BACKUP_SHUTDOWN_GRACE", "-1", "expected a number of seconds from 0 to 3600"),
    ("BACKUP_SHUTDOWN_GRACE", "3601", "expected a number of seconds from 0 to 3600"),
    ("BACKUP_SHUTDOWN_GRACE", "soon", "expected a number of seconds from 0 to 3600"),
    ("BACKUP_SHUTDOWN_GRACE", "nan", "expected a number of seconds from 0 to 3600"),
    ("BACKUP_PROGRESS_INTERVAL", "0", "expected a number of seconds from 0.1 to 600"),
    ("BACKUP_PROGRESS_INTERVAL", "601", "expected a number of seconds from 0.1 to 600"),
    ("BACKUP_PROGRESS_INTERVAL", "inf", "expected a number of seconds from 0.1 to 600"),
]


@pytest.mark.parametrize("name, value, accepted", INVALID, ids=[f"{n}={v}" for n, v, _ in INVALID])
def test_invalid_value_names_setting_value_and_what_is_accepted(name, value, accepted):
    found = problems({name: value})
    assert len(found) == 1, found
    assert found[0].startswith(f"{name}={value!r} is invalid: ")
    assert accepted in found[0]


@pytest.mark.parametrize("name, value", [("LOG_LEVEL", "verbose"), ("LOG_FORMAT", "XML"), ("BACKUP_DIR", "./b")])
def test_invalid_value_message_quotes_the_value_as_set(name, value):
    assert problems({name: value})[0].startswith(f"{name}={value!r} is invalid")


@pytest.mark.parametrize("name, value", [
    ("BACKUP_CONCURRENCY", "²"),
    ("TZ", "Europe"),  # a folder of the zone database, not a zone
])
def test_odd_values_are_reported_not_raised(name, value):
    assert problems({name: value})[0].startswith(f"{name}={value!r} is invalid")


def test_all_problems_are_reported_together():
    env = {
        "BACKUP_DIR": "relative",
        "BACKUP_DEFAULT_SCHEDULE": "often",
        "TZ": "Nowhere/Town",
        "BACKUP_CONCURRENCY": "0",
        "BACKUP_FILE_MODE": "999",
        "LOG_FORMAT": "yaml",
        "LOG_LEVEL": "LOUD",
        "BACKUP_SHUTDOWN_GRACE": "-5",
        "BACKUP_PROGRESS_INTERVAL": "never",
    }
    found = problems(env)
    assert len(found) == len(env)
    for name, value in env.items():
        assert [p for p in found if p.startswith(f"{name}={value!r} is invalid")], name


# --- NAME_FILE (Docker secrets) ------------------------------------------------------------

@pytest.mark.parametrize("content, expected", [
    ("/from/file\n", Path("/from/file")),
    ("/from/file\r\n", Path("/from/file")),
    ("/from/file", Path("/from/file")),
    ("/from/file\n\n", Path("/from/file")),
])
def test_file_variant_is_read_and_its_trailing_newline_dropped(tmp_path, content, expected):
    secret = tmp_path / "backup_dir"
    secret.write_text(content)
    assert load_settings({"BACKUP_DIR_FILE": str(secret)}).backup_dir == expected


@pytest.mark.parametrize("name, content, attribute, expected", [
    ("TZ", "Europe/Berlin\n", "tz", ZoneInfo("Europe/Berlin")),
    ("BACKUP_DEFAULT_SCHEDULE", "0 3 * * *\n", "default_schedule", parse_schedule("0 3 * * *")),
    ("BACKUP_CONCURRENCY", "4\n", "concurrency", 4),
    ("BACKUP_FILE_MODE", "0640\n", "file_mode", 0o640),
    ("LOG_LEVEL", "debug\n", "log_level", "DEBUG"),
])
def test_every_setting_has_a_file_variant(tmp_path, name, content, attribute, expected):
    (tmp_path / "v").write_text(content)
    assert getattr(load_settings({f"{name}_FILE": str(tmp_path / "v")}), attribute) == expected


def test_invalid_value_from_a_file_is_reported_under_the_setting(tmp_path):
    (tmp_path / "v").write_text("lots\n")
    found = problems({"BACKUP_CONCURRENCY_FILE": str(tmp_path / "v")})
    assert found == ["BACKUP_CONCURRENCY='lots' is invalid: expected a whole number from 1 to 64"]


@pytest.mark.parametrize("direct", ["/b", ""])
def test_value_and_file_both_set_is_an_error(tmp_path, direct):
    (tmp_path / "v").write_text("/a\n")
    found = problems({"BACKUP_DIR": direct, "BACKUP_DIR_FILE": str(tmp_path / "v")})
    assert len(found) == 1
    assert "BACKUP_DIR and BACKUP_DIR_FILE are both set" in found[0]
    assert "set only one" in found[0]


@pytest.mark.parametrize("make, reason", [
    (lambda d: d / "missing", "No such file or directory"),
    (lambda d: d, "Is a directory"),
])
def test_unreadable_file_is_an_error(tmp_path, make, reason):
    path = make(tmp_path)
    found = problems({"BACKUP_DIR_FILE": str(path)})
    assert found == [f"BACKUP_DIR_FILE={str(path)!r} cannot be read ({reason}): expected a readable file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_file_without_read_permission_is_an_error(tmp_path):
    path = tmp_path / "v"
    path.write_text("/a\n")
    path.chmod(0)
    found = problems({"BACKUP_DIR_FILE": str(path)})
    assert "Permission denied" in found[0] and "BACKUP_DIR_FILE" in found[0]


def test_file_problems_and_value_problems_are_reported_together(tmp_path):
    found = problems({"TZ_FILE": str(tmp_path / "missing"), "LOG_FORMAT": "xml", "BACKUP_CONCURRENCY": "0"})
    assert len(found) == 3
    assert found[0].startswith("TZ_FILE=")
