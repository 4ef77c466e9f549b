"""Preset names and aliases: one table, resolved both ways wherever a preset or a dump
type is looked up (issue 18: `backup.preset=mariadb` wrote `mysql+dump` archives and
`restore --dump latest` looked for `mariadb+dump`)."""

from __future__ import annotations

from datetime import datetime

import pytest

from sidecar.actions.sources.presets import MODULES, PRESETS as PRESET_MODULES, mysql, preset_of_item
from sidecar.core.naming import ArchiveName, parse_name
from sidecar.core.presetnames import ALIASES, CANONICAL, PRESETS, canonical, canonical_type, dump_type, preset_of_type
from sidecar.core.retention import Keep, plan_prune, promotions
from sidecar.core.schedule import Frequency


@pytest.mark.parametrize("name, expected", [
    ("mysql", "mysql"), ("mariadb", "mysql"), ("MariaDB", "mysql"), (" mariadb ", "mysql"),
    ("postgres", "postgres"), ("redis", "redis"), ("oracle", "oracle"),
])
def test_canonical(name, expected):
    assert canonical(name) == expected


@pytest.mark.parametrize("preset, item", [
    ("mysql", "mysql+dump"), ("mariadb", "mysql+dump"), ("postgres", "postgres+dump"), ("sqlite", "sqlite+dump"),
])
def test_an_alias_writes_and_finds_its_presets_archives(preset, item):
    assert dump_type(preset) == item


@pytest.mark.parametrize("item, preset, kind", [
    ("mysql+dump", "mysql", "mysql+dump"),
    ("mariadb+dump", "mysql", "mysql+dump"),  # the other way: an archive typed with the alias
    ("MariaDB+dump", "mysql", "mysql+dump"),
    ("postgres+dump", "postgres", "postgres+dump"),
    ("oracle+dump", None, "oracle+dump"),  # not a preset: left as it is
    ("data", None, "data"),  # a volume's short name
    ("mariadb", None, "mariadb"),  # a volume may be called like a preset
    ("+dump", None, "+dump"),
])
def test_dump_types_by_either_name(item, preset, kind):
    assert (preset_of_type(item), canonical_type(item)) == (preset, kind)


def test_every_name_has_a_module_and_aliases_share_their_presets():
    assert set(PRESET_MODULES) == set(PRESETS) and set(MODULES) == set(CANONICAL)
    for alias, name in ALIASES.items():
        assert PRESET_MODULES[alias] is MODULES[name]


@pytest.mark.parametrize("item, expected", [("mysql+dump", mysql), ("mariadb+dump", mysql), ("data", None)])
def test_preset_of_item_by_either_name(item, expected):
    assert preset_of_item(item) is expected


def test_an_archive_named_with_the_alias_is_of_the_same_kind():
    alias = parse_name("db_mariadb+dump_2026-12-02_daily.tar.zst")
    canon = parse_name("db_mysql+dump_2026-12-03_daily.tar.zst")
    assert alias.volume_name == "mariadb+dump"  # its file name stays as it is
    assert alias.kind == canon.kind == "mysql+dump"


def test_rotation_groups_both_spellings_as_one():
    """Keep 1 daily: of two dumps of one database, the older goes, whichever name it has
    (two groups would keep both; and neither is the last of its kind)."""
    old = parse_name("db_mariadb+dump_2026-12-02_daily.tar.zst")
    new = parse_name("db_mysql+dump_2026-12-03_daily.tar.zst")
    keep = Keep(hourly=0, daily=1, weekly=0, monthly=0)
    plan = plan_prune([old, new], lambda n: n, lambda _name: keep)
    assert (plan.keep, plan.delete) == ((new,), (old,))


def test_a_promotion_sees_the_other_spelling():
    """The first dump of the week was written under the alias: a later one is no new weekly."""
    first = ArchiveName(datetime(2026, 12, 1), "db", "mariadb+dump", Frequency.WEEKLY, ".tar.zst")
    later = ArchiveName(datetime(2026, 12, 2), "db", "mysql+dump", Frequency.DAILY, ".tar.zst")
    assert promotions(later, [first], Keep(hourly=0, daily=7, weekly=4, monthly=0)) == []
