"""Presets: an app's own backup tool behind the Source seam (`backup.preset=NAME`), one
module per app, each a Source (NAME, describe, needs_quiesce, capture, restore). Their
archives are named with the type `{preset}+dump` (presetnames.dump_type), which no volume's
short name can be; an alias (presetnames.ALIASES: `mariadb`) finds its preset's module and
archives. To add one: write presets/APP.py, add it to MODULES and its name to
presetnames.CANONICAL."""

from __future__ import annotations

from types import ModuleType

from ....core.presetnames import ALIASES, preset_of_type
from . import mongodb, mysql, postgres, prometheus, redis, sqlite

__all__ = ["MODULES", "PRESETS", "preset_of_item"]

# By canonical name; PRESETS adds every alias of the core table.
MODULES: dict[str, ModuleType] = {m.NAME: m for m in (postgres, sqlite, mysql, redis, prometheus, mongodb)}
PRESETS: dict[str, ModuleType] = {**MODULES, **{alias: MODULES[name] for alias, name in ALIASES.items()}}


def preset_of_item(item: str) -> ModuleType | None:
    """The preset whose archives carry `item` as their type, by either of its names (None:
    not a preset's)."""
    preset = preset_of_type(item)
    return MODULES[preset] if preset is not None else None
