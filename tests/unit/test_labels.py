"""labels.py: backup.* labels -> Target, and every rejection message."""

from __future__ import annotations

import pytest

from sidecar.core.errors import LabelError
from sidecar.core.labels import KNOWN_LABELS, default_name, enable_value, is_candidate, parse_target
from sidecar.core.model import Compression, Strategy
from sidecar.core.schedule import parse_schedule

from .helpers import CONTAINER, DATA, bind, container, volume

DEFAULT_SCHEDULE = parse_schedule("0 4 * * *")


def parse(labels=None, **kwargs):
    return parse_target(container(labels, **kwargs), DEFAULT_SCHEDULE)


def enabled(**labels):
    """backup.enable=true plus the given labels."""
    return {"backup.enable": "true", **labels}


def rejection(labels, **kwargs) -> LabelError:
    with pytest.raises(LabelError) as info:
        parse(labels, **kwargs)
    return info.value


# --- backup.enable ------------------------------------------------------------------

@pytest.mark.parametrize("value", ["true", "TRUE", "True", "1", "yes", "YES", "Yes", " true ", "\tyes\n"])
def test_enable_true_values_are_accepted(value):
    labels = {"backup.enable": value}
    assert enable_value(labels) is True
    assert is_candidate(labels)
    assert parse(labels).backup_name == "app"


@pytest.mark.parametrize("value", ["false", "FALSE", "False", "0", "no", "NO", " no "])
def test_enable_false_values_disable(value):
    labels = {"backup.enable": value}
    assert enable_value(labels) is False
    assert not is_candidate(labels)


@pytest.mark.parametrize("value", ["maybe", "", "on", "off", "2", "truee", "y"])
def test_unreadable_enable_value_is_a_candidate_and_rejected(value):
    labels = {"backup.enable": value}
    assert enable_value(labels) is None
    # The container is looked at so its bad label is reported, not silently ignored.
    assert is_candidate(labels)
    err = rejection(labels)
    assert f"backup.enable={value!r}" in str(err)
    assert "true/1/yes" in str(err) and "false/0/no" in str(err)


def test_container_without_enable_label_is_no_candidate():
    assert enable_value({}) is None
    assert not is_candidate({"backup.schedule": "@daily"})


# --- every rejection message ----------------------------------------------------------

ALIASES = "@hourly, @daily, @weekly, @monthly"

REJECTIONS = [
    # id, labels, mounts, label, value, what the message must say is accepted
    ("enable-garbage", {"backup.enable": "maybe"}, (DATA,), "backup.enable", "maybe",
     "true/1/yes to enable, false/0/no to disable"),
    ("schedule-words", enabled(**{"backup.schedule": "every day"}), (DATA,), "backup.schedule", "every day", ALIASES),
    ("schedule-7-fields", enabled(**{"backup.schedule": "0 0 3 * * * 2030"}), (DATA,), "backup.schedule",
     "0 0 3 * * * 2030", "5-field cron expression"),
    ("schedule-alias", enabled(**{"backup.schedule": "@yearly"}), (DATA,), "backup.schedule", "@yearly", ALIASES),
    ("schedule-range", enabled(**{"backup.schedule": "61 * * * *"}), (DATA,), "backup.schedule", "61 * * * *",
     "6th seconds field"),
    ("schedule-empty", enabled(**{"backup.schedule": "  "}), (DATA,), "backup.schedule", "  ", ALIASES),
    ("strategy", enabled(**{"backup.strategy": "bogus"}), (DATA,), "backup.strategy", "bogus", "stop, pause, hot"),
    ("compression", enabled(**{"backup.compression": "xz"}), (DATA,), "backup.compression", "xz",
     "zstd, gzip, none"),
    ("stop-timeout-negative", enabled(**{"backup.stop-timeout": "-1"}), (DATA,), "backup.stop-timeout", "-1",
     "whole seconds from 0 to 3600"),
    ("stop-timeout-too-big", enabled(**{"backup.stop-timeout": "3601"}), (DATA,), "backup.stop-timeout", "3601",
     "whole seconds from 0 to 3600"),
    ("stop-timeout-fraction", enabled(**{"backup.stop-timeout": "1.5"}), (DATA,), "backup.stop-timeout", "1.5",
     "whole seconds from 0 to 3600"),
    ("stop-timeout-word", enabled(**{"backup.stop-timeout": "ten"}), (DATA,), "backup.stop-timeout", "ten",
     "whole seconds from 0 to 3600"),
    ("stop-timeout-empty", enabled(**{"backup.stop-timeout": ""}), (DATA,), "backup.stop-timeout", "",
     "whole seconds from 0 to 3600"),
    ("name-dotdot", enabled(**{"backup.name": "../etc"}), (DATA,), "backup.name", "../etc",
     "letters, digits, '.', '_' and '-', starting with a letter or digit"),
    ("name-slash", enabled(**{"backup.name": "a/b"}), (DATA,), "backup.name", "a/b", "1-100 characters"),
    ("name-leading-dash", enabled(**{"backup.name": "-x"}), (DATA,), "backup.name", "-x", "starting with"),
    ("name-leading-dot", enabled(**{"backup.name": ".hidden"}), (DATA,), "backup.name", ".hidden", "starting with"),
    ("name-space", enabled(**{"backup.name": "my app"}), (DATA,), "backup.name", "my app", "1-100 characters"),
    ("name-too-long", enabled(**{"backup.name": "x" * 101}), (DATA,), "backup.name", "x" * 101, "1-100 characters"),
    ("name-empty", enabled(**{"backup.name": " "}), (DATA,), "backup.name", " ", "1-100 characters"),
    ("exec-pre-empty", enabled(**{"backup.exec.pre": ""}), (DATA,), "backup.exec.pre", "", "a non-empty command"),
    ("exec-pre-blank", enabled(**{"backup.exec.pre": "   "}), (DATA,), "backup.exec.pre", "   ",
     "a non-empty command"),
    ("exec-post-empty", enabled(**{"backup.exec.post": ""}), (DATA,), "backup.exec.post", "",
     "a non-empty command"),
    ("unknown-label", enabled(**{"backup.volume": "data"}), (DATA,), "backup.volume", "data",
     "unknown label; accepted labels are " + ", ".join(KNOWN_LABELS)),
    ("unknown-nested", enabled(**{"backup.exec.during": "x"}), (DATA,), "backup.exec.during", "x",
     "accepted labels are backup.enable"),
    ("volumes-unknown-entry", enabled(**{"backup.volumes": "nope"}), (DATA, bind("/srv/conf", "/conf")),
     "backup.volumes", "nope", "'nope' is not mounted in the container; accepted: one of proj_data:/data, bind /conf"),
    ("volumes-empty-list", enabled(**{"backup.volumes": " , ,"}), (DATA,), "backup.volumes", " , ,",
     "a comma list of volume names or mount destinations"),
    ("volumes-no-mounts", enabled(**{"backup.volumes": "data"}), (), "backup.volumes", "data",
     "(it has no mounts)"),
]


@pytest.mark.parametrize("labels, mounts, label, value, accepted",
                         [case[1:] for case in REJECTIONS], ids=[case[0] for case in REJECTIONS])
def test_rejection_names_container_label_value_and_what_is_accepted(labels, mounts, label, value, accepted):
    err = rejection(labels, mounts=mounts)
    message = str(err)
    assert err.container == CONTAINER
    assert message.startswith(f"container {CONTAINER!r}: ")
    assert len(err.problems) == 1, err.problems
    assert f"label {label}={value!r} is invalid" in message
    assert accepted in message


@pytest.mark.parametrize("mounts, listed", [
    ((), "(it has no mounts)"),
    ((bind("/srv/conf", "/conf"),), "accepted: one of bind /conf"),
], ids=["no-mounts", "only-bind-mounts"])
def test_nothing_to_back_up_without_named_volumes(mounts, listed):
    err = rejection({"backup.enable": "yes"}, mounts=mounts)
    assert len(err.problems) == 1
    message = str(err)
    assert message.startswith(f"container {CONTAINER!r}: nothing to back up")
    assert "no named volumes" in message
    assert "backup.volumes" in message
    assert listed in message


def test_several_problems_are_reported_together():
    labels = {
        "backup.enable": "maybe",
        "backup.strategy": "freeze",
        "backup.compression": "lz4",
        "backup.stop-timeout": "forever",
        "backup.name": "/bad",
        "backup.exec.post": " ",
        "backup.colour": "blue",
        "backup.volumes": "missing",
    }
    err = rejection(labels)
    assert err.container == CONTAINER
    found = {label: [p for p in err.problems if f"label {label}=" in p] for label in labels}
    assert all(len(hits) == 1 for hits in found.values()), err.problems
    assert len(err.problems) == len(labels)
    for label, value in labels.items():
        assert f"{label}={value!r}" in str(err)


# --- accepted values --------------------------------------------------------------------

def test_defaults():
    target = parse({"backup.enable": "true"})
    cfg = target.config
    assert target.backup_name == "app"
    assert cfg.schedule == DEFAULT_SCHEDULE
    assert cfg.strategy is Strategy.STOP
    assert cfg.compression is Compression.ZSTD
    assert cfg.stop_timeout == 10
    assert cfg.exec_pre is None and cfg.exec_post is None
    assert cfg.exclude == ()
    assert cfg.volumes is None
    assert [(v.volume_name, v.mount) for v in target.volumes] == [("data", DATA)]


@pytest.mark.parametrize("value, expression", [
    ("0 3 * * *", "0 3 * * *"),
    ("*/15  *  * * 1-5", "*/15 * * * 1-5"),
    ("* * * * * */30", "* * * * * */30"),
    ("0 3 * * * 15", "0 3 * * * 15"),
    ("@hourly", "@hourly"),
    ("@daily", "@daily"),
    ("@weekly", "@weekly"),
    ("@monthly", "@monthly"),
    ("@Daily", "@daily"),
])
def test_schedule_label(value, expression):
    assert parse(enabled(**{"backup.schedule": value})).config.schedule.expression == expression


@pytest.mark.parametrize("value, strategy", [
    ("stop", Strategy.STOP), ("pause", Strategy.PAUSE), ("hot", Strategy.HOT), (" PAUSE ", Strategy.PAUSE),
])
def test_strategy_label(value, strategy):
    assert parse(enabled(**{"backup.strategy": value})).config.strategy is strategy


@pytest.mark.parametrize("value, compression", [
    ("zstd", Compression.ZSTD), ("gzip", Compression.GZIP), ("none", Compression.NONE), ("GZIP", Compression.GZIP),
])
def test_compression_label(value, compression):
    assert parse(enabled(**{"backup.compression": value})).config.compression is compression


@pytest.mark.parametrize("value, seconds", [("0", 0), ("1", 1), ("3600", 3600), (" 30 ", 30), ("007", 7)])
def test_stop_timeout_bounds(value, seconds):
    assert parse(enabled(**{"backup.stop-timeout": value})).config.stop_timeout == seconds


def test_stop_timeout_superscript_digit_is_a_label_error():
    err = rejection(enabled(**{"backup.stop-timeout": "²"}))
    assert "backup.stop-timeout='²'" in str(err)


@pytest.mark.parametrize("value", ["db", "my_app.v2", "A", "x" * 100, "9lives", "a-b_c.d"])
def test_valid_names(value):
    assert parse(enabled(**{"backup.name": value})).backup_name == value


def test_name_label_is_stripped():
    assert parse(enabled(**{"backup.name": "  db  "})).backup_name == "db"


@pytest.mark.parametrize("key", ["backup.exec.pre", "backup.exec.post"])
def test_exec_commands_are_stripped(key):
    cfg = parse(enabled(**{key: "  sh -c 'pg_dump db > /data/dump.sql'  "})).config
    value = cfg.exec_pre if key.endswith("pre") else cfg.exec_post
    assert value == "sh -c 'pg_dump db > /data/dump.sql'"


@pytest.mark.parametrize("raw, patterns", [
    ("", ()),
    (" , ", ()),
    ("cache", ("cache",)),
    ("cache, *.tmp ,,logs/ ", ("cache", "*.tmp", "logs/")),
    ("a/b/*.log,  tmp", ("a/b/*.log", "tmp")),
])
def test_exclude_list(raw, patterns):
    assert parse(enabled(**{"backup.exclude": raw})).config.exclude == patterns


# --- volume selection ---------------------------------------------------------------------

LOGS = volume("proj_logs", "/var/log/app")
SHARED = volume("shared", "/shared")  # external volume: no project prefix
OTHER = volume("other_cache", "/cache")  # another project's volume
CONF = bind("/srv/app/conf", "/etc/app")
MOUNTS = (DATA, LOGS, SHARED, OTHER, CONF)


SELECTIONS = [
    (None, [("data", DATA), ("logs", LOGS), ("shared", SHARED), ("other-cache", OTHER)]),
    ("data", [("data", DATA)]),
    ("proj_data", [("data", DATA)]),
    ("/data", [("data", DATA)]),
    ("logs", [("logs", LOGS)]),
    ("/var/log/app", [("logs", LOGS)]),
    ("shared", [("shared", SHARED)]),
    ("other_cache", [("other-cache", OTHER)]),
    ("/etc/app", [("app", CONF)]),
    ("/etc/app, data", [("app", CONF), ("data", DATA)]),
    ("data, /data, proj_data", [("data", DATA)]),
    (" logs ,, shared ", [("logs", LOGS), ("shared", SHARED)]),
]


@pytest.mark.parametrize("listed, expected", SELECTIONS, ids=["default" if s is None else s for s, _ in SELECTIONS])
def test_volume_selection(listed, expected):
    labels = {"backup.enable": "true"} if listed is None else enabled(**{"backup.volumes": listed})
    target = parse(labels, mounts=MOUNTS)
    assert [(v.volume_name, v.mount) for v in target.volumes] == expected
    wanted = None if listed is None else tuple(p.strip() for p in listed.split(",") if p.strip())
    assert target.config.volumes == wanted


@pytest.mark.parametrize("entry", [
    "cache",  # other_cache belongs to another project: the prefix is only ours
    "/srv/app/conf",  # a bind mount is named by its destination, not its host path
    "conf",
    "/dat",
    "proj",
])
def test_volume_entry_that_is_not_mounted(entry):
    err = rejection(enabled(**{"backup.volumes": entry}), mounts=MOUNTS)
    message = str(err)
    assert f"label backup.volumes={entry!r} is invalid" in message
    assert f"{entry!r} is not mounted in the container" in message
    assert ("accepted: one of proj_data:/data, proj_logs:/var/log/app, shared:/shared, "
            "other_cache:/cache, bind /etc/app") in message


def test_bind_mounts_are_not_backed_up_by_default():
    target = parse({"backup.enable": "true"}, mounts=(CONF, DATA))
    assert [v.mount for v in target.volumes] == [DATA]


def test_volume_destination_with_trailing_slash():
    target = parse(enabled(**{"backup.volumes": "/data/"}))
    assert [v.mount for v in target.volumes] == [DATA]


# --- default name ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, backup_name, expected", [
    ("proj-web-1", "web", "web"),
    ("proj-web-1", "web.v2_x", "web.v2_x"),
    ("proj-web-1", "my service!", "my-service"),
    ("my_container", None, "my_container"),
    ("/my_container", None, "my_container"),
    ("weird name (copy)", None, "weird-name-copy"),
    ("__x__", None, "x"),
    ("--.x.--", None, "x"),
    ("ünïcode", None, "n-code"),
    ("!!!", None, "c0ffee123456"),
    ("x" * 150, None, "x" * 100),
])
def test_default_name(name, backup_name, expected):
    c = container({"backup.enable": "true"}, name=name, backup_name=backup_name, id="c0ffee123456" + "0" * 52)
    assert default_name(c) == expected
    # A default name is always a valid backup name.
    assert parse_target(c, DEFAULT_SCHEDULE).backup_name == expected


def test_name_label_wins_over_the_default():
    assert parse(enabled(**{"backup.name": "db"})).backup_name == "db"
