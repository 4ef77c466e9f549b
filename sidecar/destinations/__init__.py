"""Off-site destinations behind one seam (offen's `storage.Backend`): the `Destination`
Protocol (base.py), one module per kind (s3.py, rclone.py for any rclone remote, local.py
for a mounted second disk), the registry of kinds, and `from_settings`, which builds the
destinations BACKUP_DESTINATIONS lists (settings.py parses it into typed configs).
node.py shows any of them from one node's folder (BACKUP_NODE_PREFIX: `{prefix}/{node}/...`).

A kind's module is imported when a destination of that kind is made (`create`), not with
this package: the CLI's start-up (`restore`, `list`, ...) pays for boto3 (s3) or rclone's
crypto only when such a destination is configured. This registry is the one place that
names those modules.

Adding a kind: a module with a class implementing `Destination` and a factory taking its
typed config, one `register("KIND", "MODULE:FACTORY")` line below, `from_settings` building
it from its settings, and tests (tests/e2e against a real server, tests/actions through
`tests/fakes/destination.py` for what the actions do with it).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from ..core.config import LocalConfig, RcloneConfig, S3Config
from ..core.errors import ConfigError
from ..core.settings import Settings
from .base import Destination, RemoteObject
from .index import CopyEntry, CopyIndex
from .node import NodeFolder, all_on_node, bare, on_node

Factory = Callable[[Any], Destination]

# A kind's factory, or where it is ("sidecar.destinations.s3:S3Destination"): imported on first use.
_KINDS: dict[str, Factory | str] = {}


def register(kind: str, factory: Factory | str) -> None:
    """`factory`: a callable, or "MODULE:NAME" imported when the first destination of the kind is made."""
    _KINDS[kind] = factory


def factory_of(kind: str) -> Factory:
    """The kind's factory, its module imported now if it was registered by name."""
    factory = _KINDS.get(kind)
    if factory is None:
        raise ConfigError(f"unknown destination kind {kind!r}; expected one of {', '.join(kinds())}")
    if isinstance(factory, str):
        module, _, name = factory.partition(":")
        factory = _KINDS[kind] = getattr(importlib.import_module(module), name)
    return factory


def kinds() -> tuple[str, ...]:
    return tuple(sorted(_KINDS))


def create(kind: str, config: Any) -> Destination:
    """A destination of a registered kind from its typed config (S3Config for "s3")."""
    return factory_of(kind)(config)


# Which registered kind a typed config is built by.
_KIND_OF_CONFIG = {S3Config: "s3", RcloneConfig: "rclone", LocalConfig: "local"}


def from_settings(settings: Settings) -> tuple[Destination, ...]:
    """The configured destinations, in BACKUP_DESTINATIONS' order (unset: the S3 store when
    S3_BUCKET is set)."""
    return tuple(create(_KIND_OF_CONFIG[type(config)], config) for config in settings.destinations)


register("s3", f"{__name__}.s3:S3Destination")
register("rclone", f"{__name__}.rclone:RcloneDestination")
register("local", f"{__name__}.local:LocalDestination")

__all__ = ["CopyEntry", "CopyIndex", "Destination", "NodeFolder", "RemoteObject", "all_on_node", "bare", "create",
           "factory_of", "from_settings", "kinds", "on_node", "register"]
