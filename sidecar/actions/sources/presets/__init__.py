"""Presets: an app's own backup tool behind the Source seam (`backup.preset=NAME`), one
module per app, each a Source (NAME, describe, needs_quiesce, capture, restore). Their
archives are named with the type `{preset}+dump` (dump.archive_type), which no volume's
short name can be. To add one: write presets/APP.py, add it to PRESETS and its name to
labels.PRESETS."""

from __future__ import annotations

from types import ModuleType

from . import mongodb, mysql, postgres, prometheus, redis, sqlite
from .dump import archive_type

__all__ = ["PRESETS", "archive_type", "preset_of_item"]

PRESETS: dict[str, ModuleType] = {postgres.NAME: postgres, sqlite.NAME: sqlite, mysql.NAME: mysql, redis.NAME: redis,
                                  prometheus.NAME: prometheus, mongodb.NAME: mongodb,
                                  **{alias: mysql for alias in mysql.ALIASES}}


def preset_of_item(item: str) -> ModuleType | None:
    """The preset whose archives carry `item` as their type (None: not a preset's)."""
    for module in PRESETS.values():
        if item == archive_type(module.NAME):
            return module
    return None
