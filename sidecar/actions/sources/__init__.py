"""The Source seam (borgmatic's data-source hooks): what is captured from a target and
how it is put back. One module per kind, each offering the same functions, found by name:

- `describe(target) -> tuple[str, ...]`: the short names of the archives it produces
  (they go into archive names as the volume part);
- `needs_quiesce(target) -> bool`: whether its data must be read with the container
  stopped or paused (volumes: as the strategy says; an app dump: no, the app must run);
- `capture(ctx, target, container, archive_path)`: a context manager yielding one Capture
  per archive; leaving it without `finish` removes what is partial;
- `restore(ctx, request) -> RestoreOutcome`: put one archive back.

To add a kind: write sources/KIND.py with these functions, add it to SOURCES, and say in
`sources_for` when a target has it.
"""

from __future__ import annotations

from types import ModuleType

from ...core.errors import ConfigError
from ...core.model import Target
from . import presets, volumes
from .base import ArchivePath, Capture, RestoreOutcome, RestoreRequest, Source

__all__ = ["ArchivePath", "Capture", "RestoreOutcome", "RestoreRequest", "Source", "SOURCES", "get", "items",
           "source_of_item", "sources_for"]

SOURCES: dict[str, ModuleType] = {volumes.NAME: volumes, **presets.PRESETS}


def get(name: str) -> Source:
    try:
        return SOURCES[name]  # type: ignore[return-value]
    except KeyError:
        raise ConfigError(f"unknown source {name!r}; expected one of {', '.join(sorted(SOURCES))}") from None


def sources_for(target: Target) -> tuple[Source, ...]:
    """The sources a target is captured from: its preset's dump (backup.preset) and its
    volumes (none with a preset unless backup.volumes names them)."""
    chosen = (get(target.config.preset),) if target.config.preset else ()
    return chosen + ((get(volumes.NAME),) if target.volumes else ())


def items(target: Target) -> tuple[str, ...]:
    """The short names of every archive a backup of `target` writes (the `{type}` part)."""
    return tuple(item for source in sources_for(target) for item in source.describe(target))


def source_of_item(item: str) -> Source:
    """The source that restores archives of type `item`: a preset's, else the volumes'."""
    preset = presets.preset_of_item(item)
    return preset if preset is not None else get(volumes.NAME)  # type: ignore[return-value]
