"""Off-site destinations behind one seam (offen's `storage.Backend`): the `Destination`
Protocol (base.py), one module per kind (s3.py, rclone.py for any rclone remote, local.py
for a mounted second disk), the registry of kinds, and `from_settings`, which builds the
destinations BACKUP_DESTINATIONS lists (settings.py parses it into typed configs).
node.py shows any of them from one node's folder (BACKUP_NODE_PREFIX: `{prefix}/{node}/...`).

Adding a kind: a module with a class implementing `Destination` and a factory taking its
typed config, one `register("KIND", factory)` line below, `from_settings` building it
from its settings, and tests (tests/e2e against a real server, tests/actions through
`tests/fakes/destination.py` for what the actions do with it).
"""

from __future__ import annotations

from typing import Any, Callable

from ..core.config import LocalConfig, RcloneConfig, S3Config
from ..core.errors import ConfigError
from ..core.settings import Settings
from .base import Destination, RemoteObject
from .index import CopyEntry, CopyIndex
from .local import LocalDestination
from .node import NodeFolder, all_on_node, bare, on_node
from .rclone import RcloneDestination
from .s3 import S3Destination

Factory = Callable[[Any], Destination]

_KINDS: dict[str, Factory] = {}


def register(kind: str, factory: Factory) -> None:
    _KINDS[kind] = factory


def kinds() -> tuple[str, ...]:
    return tuple(sorted(_KINDS))


def create(kind: str, config: Any) -> Destination:
    """A destination of a registered kind from its typed config (S3Config for "s3")."""
    factory = _KINDS.get(kind)
    if factory is None:
        raise ConfigError(f"unknown destination kind {kind!r}; expected one of {', '.join(kinds())}")
    return factory(config)


# Which registered kind a typed config is built by.
_KIND_OF_CONFIG = {S3Config: "s3", RcloneConfig: "rclone", LocalConfig: "local"}


def from_settings(settings: Settings) -> tuple[Destination, ...]:
    """The configured destinations, in BACKUP_DESTINATIONS' order (unset: the S3 store when
    S3_BUCKET is set)."""
    return tuple(create(_KIND_OF_CONFIG[type(config)], config) for config in settings.destinations)


register("s3", S3Destination)
register("rclone", RcloneDestination)
register("local", LocalDestination)

__all__ = ["CopyEntry", "CopyIndex", "Destination", "LocalDestination", "NodeFolder", "RcloneDestination",
           "RemoteObject", "S3Destination", "all_on_node", "bare", "create", "from_settings", "kinds", "on_node",
           "register"]
