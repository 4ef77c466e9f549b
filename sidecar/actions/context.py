"""What every action needs, built once by the CLI."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Iterator

from ..tarball.crypto import EncryptionConfig
from ..destinations import Destination, all_on_node, from_settings
from ..core.discovery import Discovery, Scope, discover, resolve_scope
from ..docker.engine import Engine
from ..core.errors import ConfigError, EngineError
from ..core.labels import ENABLE
from ..telemetry.metrics import record_ping_failure
from ..core.model import ContainerInfo, NodeIdentity
from ..core.naming import ENCRYPTED_SUFFIX
from ..pings.sender import Pinger
from ..readers import WorkerSettings
from ..core.settings import Settings
from ..store.storage import BackupStore, Journal

logger = logging.getLogger(__name__)


@dataclass
class Context:
    settings: Settings
    engine: Engine
    store: BackupStore
    journal: Journal
    # Set when the sidecar shuts down: backups in progress abort and restart what they stopped.
    cancel: threading.Event = field(default_factory=threading.Event)
    # The destinations, in BACKUP_DESTINATIONS' order (unset: "s3" when S3_BUCKET is set).
    destinations: tuple[Destination, ...] = ()
    # Destinations found unreachable in this sync cycle (the daemon's, or one CLI run): later
    # archives and rotations skip them instead of paying the retry ladder again; the daemon's
    # next sync cycle tries them afresh (sync.run_sync(new_cycle=True)).
    unreachable: set[str] = field(default_factory=set)
    # The node whose folder `destinations` use (BACKUP_NODE_PREFIX); None: the destinations'
    # roots, the single-host layout.
    prefix_node: str | None = None
    # Heartbeat pings (BACKUP_PING_URL, backup.ping): run_backup starts them, whoever takes
    # the outcome (the daemon, the `backup` command) finishes them; sent in the background.
    pings: Pinger = field(default_factory=Pinger)
    _scope: Scope | None = field(default=None, repr=False)
    _own: str | None = field(default=None, repr=False)  # "" once looked up and not in a container
    _node: NodeIdentity | None = field(default=None, repr=False)

    @classmethod
    def create(cls, settings: Settings, engine: Engine) -> "Context":
        store = BackupStore(settings.backup_dir, settings.file_mode)
        pings = Pinger(settings.ping, settings.ping_timeout,
                       on_failure=lambda target, kind: record_ping_failure(store.state_dir, target, kind))
        ctx = cls(settings, engine, store, Journal(store.state_dir / "journal.json"), pings=pings)
        ctx.prefix_node = ctx._prefix_node()
        ctx.destinations = all_on_node(from_settings(settings), ctx.prefix_node)
        if ctx.prefix_node is not None and ctx.destinations:
            logger.info("destinations keep this node's copies in its own folder", extra={
                "node": ctx.prefix_node, "destinations": [d.describe() for d in ctx.destinations]})
        return ctx

    def node(self) -> NodeIdentity:
        """This node: the engine's name (or BACKUP_NODE_NAME) and its place in a swarm;
        looked up once."""
        if self._node is None:
            name = self.settings.node_name
            if self.engine is None and name is None:
                raise ConfigError("this node's name is unknown without a Docker engine: set BACKUP_NODE_NAME")
            try:
                self._node = self.engine.node(name) if self.engine is not None else NodeIdentity(name)
            except EngineError as err:
                if name is None:
                    raise
                # BACKUP_NODE_NAME is all a node needs when the engine's info is refused (a socket proxy).
                logger.warning("the engine's info is unreadable; this node goes by BACKUP_NODE_NAME, as no Swarm "
                               "node", extra={"node": name, "error": str(err)})
                self._node = NodeIdentity(name)
        return self._node

    def _prefix_node(self) -> str | None:
        """The node whose folder the destinations use: BACKUP_NODE_PREFIX true, or auto on
        an active Swarm node (only then is the engine asked)."""
        wanted = self.settings.node_prefix
        if wanted is False or (wanted is None and self.engine is None):  # no engine: no swarm
            return None
        if wanted:
            return self.node().name
        try:
            self._node = self.engine.node(self.settings.node_name)
        except EngineError as err:
            # Guessing "single host" on a swarm node would mix the nodes' copies in one folder.
            raise EngineError(f"BACKUP_NODE_PREFIX=auto cannot tell whether this is a Swarm node ({err}): allow GET "
                              "/info (socket proxy), or set BACKUP_NODE_PREFIX=false (one host) or true (with "
                              "BACKUP_NODE_NAME while the engine's info is refused)") from err
        return self._node.name if self._node.swarm_active else None

    def destinations_on(self, node: str | None = None) -> tuple[Destination, ...]:
        """The destinations as seen from `node`'s folder (None: this node's own view)."""
        return self.destinations if node is None else all_on_node(self.destinations, node)

    def is_own_folder(self, node: str | None) -> bool:
        """Whether `node`'s view of the destinations is this node's own (the copy indexes
        describe only that one)."""
        return node is None or node == self.prefix_node

    def destination(self, name: str | None = None, node: str | None = None) -> Destination:
        """A configured destination by name (None: the first one), as seen from `node`'s
        folder (None: this node's own view)."""
        for destination in self.destinations_on(node):
            if name is None or destination.name == name:
                return destination
        if not self.destinations:
            raise ConfigError(f"no off-site destination{f' named {name!r}' if name else ''}: set S3_BUCKET "
                              "(and S3_ENDPOINT_URL, credentials) or BACKUP_DESTINATIONS (rclone remotes, a mounted "
                              "disk)")
        names = ", ".join(d.name for d in self.destinations)
        raise ConfigError(f"no off-site destination named {name!r}; configured: {names}")

    @property
    def local_encryption(self) -> EncryptionConfig | None:
        """How archives on the backup volume are encrypted (None: not encrypted)."""
        return self.settings.encryption if self.settings.encrypt_local else None

    @property
    def worker_settings(self) -> WorkerSettings:
        """What the worker reader needs (sidecar/readers/worker.py)."""
        return WorkerSettings(self.settings.backup_dir, self.settings.worker_image, self.settings.worker_timeout)

    @property
    def local_encryption_suffix(self) -> str:
        return ENCRYPTED_SUFFIX if self.local_encryption is not None else ""

    def now(self) -> datetime:
        return datetime.now(timezone.utc).astimezone(self.settings.tz)

    def scope(self) -> Scope:
        """Which containers are backed up (looked up once: the sidecar's own container)."""
        if self._scope is None:
            # Asked only when needed: `list` and other storage-only commands never reach the engine.
            # (No engine at all: a context for storage-only work, which has no own container.)
            needed = self.settings.project is None and self.engine is not None
            own = self.engine.own_container() if needed else None
            self._scope = resolve_scope(self.settings.project, own)
        return self._scope

    def discover(self, containers: Iterable[ContainerInfo] | None = None) -> Discovery:
        """Targets and skipped containers in scope, from `containers` or a fresh listing."""
        if containers is None:
            containers = self.engine.list_candidates(ENABLE)
        return discover(containers, self.settings.default_schedule, self.scope().project, self.settings.keep,
                        own_id=self.own_id())

    def own_id(self) -> str | None:
        """The id of the container the sidecar runs in (None: none, or no engine); looked up once."""
        if self._own is None:
            own = self.engine.own_container() if self.engine is not None else None
            self._own = own.id if own is not None else ""
        return self._own or None

    def helper_image(self, container: ContainerInfo) -> str:
        """The image of short-lived helper containers: BACKUP_HELPER_IMAGE, else the
        sidecar's own image, else `container`'s."""
        if self.settings.helper_image is not None:
            return self.settings.helper_image
        own = self.engine.own_container()
        return own.image_id if own is not None else container.image_id

    @contextlib.contextmanager
    def readable(self, container: ContainerInfo) -> Iterator[ContainerInfo]:
        """`container`, or for a task of a replicated Swarm service (which a stop scales to
        0: Swarm then removes the task's container) a stand-in with the same mounts, whose id
        every read and write through the engine uses instead."""
        if container.replicated_task is None:
            yield container
            return
        with self.engine.stand_in(self.helper_image(container), container.mounts) as stand_in_id:
            yield dataclasses.replace(container, id=stand_in_id)

