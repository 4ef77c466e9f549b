"""Readers: how a volume's bytes reach its archive, by name (see base.py for the Protocol).

`choose` picks the first usable reader of an order of names: for a stop or pause target a
staging mirror kept by worker containers (mirror.py; the mirror itself is sidecar/mirror/),
else a worker container next to the data (worker.py) when one can run, else the engine's
archive API. To add one, write a module with a class that has `name`, `usable` and `open`
(returning a PendingArchive), register it in READERS and put its name in DEFAULT_ORDER
before the fallback.

The way back lives here too: `unpack` writes a verified archive into a volume, by an extract
worker container of the same site the worker reader probes.
"""

from __future__ import annotations

from ..docker.engine import Engine
from ..core.errors import ConfigError
from .base import ArchiveRequest, PendingArchive, Progress, Reader, WorkerSettings
from .engine_api import EngineApiReader
from .mirror import MirrorReader
from .worker import WorkerReader

__all__ = ["ArchiveRequest", "PendingArchive", "Progress", "Reader", "WorkerSettings", "READERS", "DEFAULT_ORDER",
           "get", "choose"]

READERS: dict[str, Reader] = {}
# The mirror reader's workers are the registered worker reader's (one probe per image).
READERS.update({r.name: r for r in (MirrorReader(lambda: READERS["worker"]), WorkerReader(), EngineApiReader())})

# Tried in order; the engine API comes last because it always works. The mirror reader
# serves only requests that ask for a mirror (stop and pause targets).
DEFAULT_ORDER: tuple[str, ...] = ("mirror", "worker", "engine-api")


def get(name: str) -> Reader:
    try:
        return READERS[name]
    except KeyError:
        raise ConfigError(f"unknown reader {name!r}; expected one of {', '.join(sorted(READERS))}") from None


def choose(engine: Engine, request: ArchiveRequest, order: tuple[str, ...] = DEFAULT_ORDER) -> Reader:
    """The first reader of `order` that can produce `request`."""
    for name in order:
        reader = get(name)
        if reader.usable(engine, request):
            return reader
    raise ConfigError(f"no reader of {', '.join(order)} can read {request.mount.destination}")
