"""Preset names and the types of their archives, with the one table of aliases.

A preset is chosen by `backup.preset=NAME`; its archives carry the type `{preset}+dump`
(the volume part of archive names). An alias (`mariadb`) is another name for a preset
(`mysql`): its archives are the preset's (`mysql+dump`), and every lookup of a preset or
a dump type (restore, list, rotation, sync, restore --from, plan, metrics) compares
canonical names, so a user may write either name anywhere and an archive whose type uses
the alias (written by hand, or by another version) is still the preset's.
"""

from __future__ import annotations

# The presets, by their canonical names (sidecar/actions/sources/presets has one module each).
CANONICAL = ("postgres", "sqlite", "mysql", "redis", "prometheus", "mongodb")
# alias -> canonical preset: the one table of aliases.
ALIASES: dict[str, str] = {"mariadb": "mysql"}
# What `backup.preset` accepts: each preset followed by its aliases.
PRESETS = tuple(name for preset in CANONICAL
                for name in (preset, *(alias for alias, of in ALIASES.items() if of == preset)))

DUMP_SUFFIX = "+dump"


def canonical(preset: str) -> str:
    """The canonical name of a preset or alias (case and spaces ignored); an unknown name
    is returned as given, lowered."""
    name = preset.strip().lower()
    return ALIASES.get(name, name)


def dump_type(preset: str) -> str:
    """The `{type}` of a preset's archives: `+` never occurs in a volume's short name
    (labels.short_volume_name keeps letters, digits, `.` and `-`), so the two never collide."""
    return canonical(preset) + DUMP_SUFFIX


def preset_of_type(item: str) -> str | None:
    """The canonical preset whose archives carry `item` as their type (either spelling);
    None: not a preset's (a volume's short name)."""
    if not item.endswith(DUMP_SUFFIX):
        return None
    preset = canonical(item[: -len(DUMP_SUFFIX)])
    return preset if preset in CANONICAL else None


def canonical_type(item: str) -> str:
    """The type an archive is grouped and looked up by: a preset's dump type under its
    canonical name (`mariadb+dump` -> `mysql+dump`), anything else as it is."""
    preset = preset_of_type(item)
    return item if preset is None else preset + DUMP_SUFFIX
