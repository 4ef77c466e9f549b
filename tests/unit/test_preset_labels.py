"""Labels of presets and of the exec options; the preset archive type."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sidecar.actions.plan import database_warnings
from sidecar.actions.sources import items, sources_for
from sidecar.actions.sources.presets import PRESETS as PRESET_MODULES
from sidecar.actions.sources.presets.sqlite import plan_mounts
from sidecar.core.errors import LabelError, NotFound
from sidecar.core.labels import DEFAULT_EXEC_TIMEOUT, PRESETS, parse_target, short_volume_name
from sidecar.core.model import Mount
from sidecar.core.naming import parse_name
from sidecar.core.presetnames import dump_type
from sidecar.core.schedule import parse_schedule

from .helpers import container, volume

SCHEDULE = parse_schedule("0 4 * * *")


def parse(labels, image: str = "app:1", **kwargs):
    return parse_target(replace(container({"backup.enable": "true", **labels}, **kwargs), image=image), SCHEDULE)


def test_exec_defaults_and_labels():
    cfg = parse({}).config
    assert (cfg.exec_user, cfg.exec_timeout, cfg.preset) == (None, DEFAULT_EXEC_TIMEOUT, None)
    cfg = parse({"backup.exec.user": "postgres", "backup.exec.timeout": "120"}).config
    assert (cfg.exec_user, cfg.exec_timeout) == ("postgres", 120)
    assert parse({"backup.exec.user": "999:999"}).config.exec_user == "999:999"


@pytest.mark.parametrize("label, value", [
    ("backup.exec.user", "root; rm -rf /"), ("backup.exec.timeout", "0"), ("backup.exec.timeout", "1h"),
    ("backup.preset", "oracle"), ("backup.preset.user", "a'b"), ("backup.preset.database", "x y"),
])
def test_bad_values_are_rejected(label, value):
    with pytest.raises(LabelError) as info:
        parse({label: value})
    assert label in str(info.value)


def test_a_preset_alone_takes_only_the_dump():
    target = parse({"backup.preset": "postgres"})
    assert target.volumes == () and items(target) == ("postgres+dump",)
    assert [s.NAME for s in sources_for(target)] == ["postgres"]


def test_a_preset_with_listed_volumes_takes_both():
    target = parse({"backup.preset": "Postgres", "backup.volumes": "data"})
    assert items(target) == ("postgres+dump", "data")


def test_a_preset_needs_no_volume_at_all():
    assert parse({"backup.preset": "postgres"}, mounts=()).volumes == ()


def test_label_presets_are_the_registered_ones():
    assert set(PRESETS) == set(PRESET_MODULES)


@pytest.mark.parametrize("raw", ["postgres+dump", "postgres", "a+b", "x_y+z", "..+..", "-"])
def test_no_volume_short_name_is_a_preset_type(raw):
    for preset in PRESETS:
        for mount in (volume(raw, "/d"), Mount("bind", "/h", f"/srv/{raw}")):
            assert short_volume_name(mount, None) != dump_type(preset)


def test_preset_archive_names_parse_back():
    name = parse_name("db_postgres+dump_2026-12-02T030000_daily.tar.zst.age")
    assert name is not None and (name.backup_name, name.volume_name) == ("db", "postgres+dump")


def test_database_warning_only_for_hot_targets_without_preset():
    hot = parse({"backup.strategy": "hot"}, image="postgres:16-alpine")
    assert "backup.preset=postgres" in database_warnings(hot, ())[0]
    assert database_warnings(parse({"backup.strategy": "pause"}, image="postgres:16"), ()) == ()
    assert database_warnings(parse({"backup.strategy": "hot", "backup.preset": "postgres"}, image="postgres"), ()) == ()
    assert database_warnings(parse({"backup.strategy": "hot"}, image="nginx:1"), ("nginx",)) == ()
    assert "Redis" in database_warnings(parse({"backup.strategy": "hot"}, image="cache:1"), ("redis-server",))[0]
    assert database_warnings(parse({"backup.strategy": "hot"}, image="ghcr.io/acme/postgresql-exporter:1"), ()) == ()


def test_sqlite_needs_paths_and_takes_absolute_globs():
    with pytest.raises(LabelError, match="backup.sqlite.paths"):
        parse({"backup.preset": "sqlite"})
    with pytest.raises(LabelError, match="absolute"):
        parse({"backup.preset": "sqlite", "backup.sqlite.paths": "app.db"})
    target = parse({"backup.preset": "sqlite", "backup.sqlite.paths": "/data/*.db, /data/sub/x.sqlite"})
    assert target.config.sqlite_paths == ("/data/*.db", "/data/sub/x.sqlite") and items(target) == ("sqlite+dump",)


def test_sqlite_paths_map_to_the_volume_holding_them():
    box = container(mounts=(volume("p_data", "/data"), volume("p_sub", "/data/sub"),
                                    Mount("bind", "/srv/x", "/x")))
    mounts, jobs = plan_mounts(box, ("/data/*.db", "/data/sub/a.db", "/x/b.db", "/data/c.db"))
    assert [(m.source, m.target, m.read_only) for m in mounts] == [
        ("p_data", "/db/0", False), ("p_sub", "/db/1", False), ("/srv/x", "/db/2", False)]
    assert jobs == [["/db/0", "/data", "*.db"], ["/db/1", "/data/sub", "a.db"], ["/db/2", "/x", "b.db"],
                    ["/db/0", "/data", "c.db"]]
    with pytest.raises(NotFound, match="on no volume"):
        plan_mounts(box, ("/etc/app.db",))


@pytest.mark.parametrize("labels, method, volume_strategy", [
    ({}, "stop", "stop"),
    ({"backup.strategy": "hot"}, "hot", "hot"),
    ({"backup.strategy": "pause"}, "pause", "pause"),
    # a preset is never stopped, whatever backup.strategy says (the default is stop)
    ({"backup.preset": "postgres"}, "preset:postgres", None),
    ({"backup.preset": "mariadb", "backup.strategy": "pause"}, "preset:mariadb", None),
    ({"backup.preset": "MySQL"}, "preset:mysql", None),
    # with volumes too: the dump, then the volumes as the strategy says
    ({"backup.preset": "postgres", "backup.volumes": "data"}, "preset:postgres+volumes:stop", "stop"),
    ({"backup.preset": "redis", "backup.volumes": "data", "backup.strategy": "hot"}, "preset:redis+volumes:hot", "hot"),
])
def test_what_a_backup_really_does(labels, method, volume_strategy):
    target = parse(labels)
    assert target.method == method
    assert (str(target.volume_strategy) if target.volume_strategy else None) == volume_strategy
