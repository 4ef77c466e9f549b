"""Typed values passed between the layers: containers as the engine reports them,
targets as the labels configure them, and the volumes picked for a backup."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable, Mapping

from .ping_urls import PingUrl
from .retention import DEFAULT_KEEP, Keep
from .schedule import Schedule
from .swarm import ServiceMode, SwarmTask


class Strategy(enum.Enum):
    STOP = "stop"
    PAUSE = "pause"
    HOT = "hot"

    def __str__(self) -> str:
        return self.value


class Compression(enum.Enum):
    ZSTD = "zstd"
    GZIP = "gzip"
    NONE = "none"

    @property
    def extension(self) -> str:
        return {"zstd": ".tar.zst", "gzip": ".tar.gz", "none": ".tar"}[self.value]

    def __str__(self) -> str:
        return self.value


class StorageFormat(enum.Enum):
    """How a target's backups are stored (BACKUP_FORMAT, label backup.format)."""

    ARCHIVE = "archive"  # dated .tar.zst files: the seed's format, readable with tar alone
    RESTIC = "restic"  # snapshots in a deduplicated restic repository under BACKUP_DIR

    def __str__(self) -> str:
        return self.value


class ImagePolicy(enum.Enum):
    AUTO = "auto"  # export only images that cannot be pulled again (no repository digest)
    ALWAYS = "always"
    NEVER = "never"

    def __str__(self) -> str:
        return self.value


class SharedPolicy(enum.Enum):
    """What a stop/pause backup does with other running containers that mount one of the
    target's volumes read-write (label backup.shared)."""

    QUIESCE = "quiesce"  # stop/pause them too (they write what is being read)
    IGNORE = "ignore"  # leave them running (said in the log)

    def __str__(self) -> str:
        return self.value


class ContainerState(enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"
    EXITED = "exited"
    CREATED = "created"
    DEAD = "dead"
    REMOVING = "removing"

    @classmethod
    def parse(cls, value: str) -> "ContainerState":
        try:
            return cls(value.lower())
        except ValueError:
            return cls.EXITED


@dataclass(frozen=True)
class Mount:
    kind: str  # "volume" or "bind" (tmpfs and others are never backed up)
    source: str  # volume name for kind=volume, host path for kind=bind
    destination: str  # path inside the container
    read_only: bool = False  # mounted `:ro` (a container that only reads a shared volume needs no quiesce)


@dataclass(frozen=True)
class ContainerEvent:
    """One entry of the engine's event log about a container (`docker events`)."""

    action: str  # "kill", "stop", "die", "start", "destroy", "pause", ... (health_status's detail cut off)
    container_id: str
    time: float  # seconds since the epoch
    signal: str | None = None  # for "kill": the signal number, as the engine writes it ("15", "9")


@dataclass(frozen=True)
class ImageInfo:
    id: str
    tags: tuple[str, ...]
    digests: tuple[str, ...]  # empty: built here and never pushed, so it cannot be pulled again


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    image: str
    image_id: str
    state: ContainerState
    labels: Mapping[str, str]
    mounts: tuple[Mount, ...]
    # The healthcheck's status ("starting", "healthy", "unhealthy"); None: it has none (or
    # the engine's list, which does not report it, was the source).
    health: str | None = None
    # The Swarm task it runs (None: not started by Swarm); its `service` only on a manager.
    swarm: SwarmTask | None = None

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def compose_service(self) -> str | None:
        return self.labels.get("com.docker.compose.service")

    @property
    def compose_project(self) -> str | None:
        return self.labels.get("com.docker.compose.project")

    @property
    def replicated_task(self) -> SwarmTask | None:
        """Its task when it runs one of a replicated Swarm service, which a stop scales to 0
        as a whole (and whose task containers Swarm then removes); else None."""
        task = self.swarm
        return task if task is not None and task.mode is ServiceMode.REPLICATED else None

    @property
    def volume_prefix(self) -> str | None:
        """What its named volumes' names start with: the Compose project or the Swarm stack."""
        return self.compose_project or (self.swarm.stack if self.swarm is not None else None)


@dataclass(frozen=True)
class TargetConfig:
    """What a container's backup.* labels ask for, validated."""

    backup_name: str  # the {service} part of archive names (label backup.name)
    schedule: Schedule
    strategy: Strategy
    volumes: tuple[str, ...] | None  # None: every named volume
    exclude: tuple[str, ...]
    compression: Compression
    exec_pre: str | None
    exec_post: str | None
    stop_timeout: int
    image: ImagePolicy = ImagePolicy.AUTO
    keep: Keep = DEFAULT_KEEP
    shared: SharedPolicy = SharedPolicy.QUIESCE
    group: str | None = None  # backup.group: backed up together with the other members, in one run
    group_order: int | None = None  # backup.group.order: stop late, start early (low first) without depends_on
    ready_timeout: int = 60  # seconds a start waits for the healthcheck to pass (0: no wait)
    exec_user: str | None = None  # None: the container's user
    exec_timeout: int = 3600  # seconds a backup.exec.* command or a preset's dump may run
    preset: str | None = None  # an app-native backup (sidecar/actions/sources/presets)
    preset_user: str | None = None
    preset_database: str | None = None
    sqlite_paths: tuple[str, ...] = ()
    mirror: bool | None = None  # stop/pause through a staging mirror (label backup.mirror); None: unless encrypted
    hot_ok: bool = False  # a hot copy of what looks like a database is acknowledged (label backup.hot-ok)
    ping: PingUrl | None = None  # backup.ping: this container's heartbeat URL (holds a token)
    format: StorageFormat | None = None  # label backup.format; None: BACKUP_FORMAT


@dataclass(frozen=True)
class VolumeSpec:
    """One volume of a target, with the short readable name used in archive names."""

    volume_name: str
    mount: Mount


@dataclass(frozen=True)
class Target:
    container: ContainerInfo
    config: TargetConfig
    volumes: tuple[VolumeSpec, ...]

    @property
    def backup_name(self) -> str:
        return self.config.backup_name

    @property
    def volume_strategy(self) -> Strategy | None:
        """How its volumes are read (None: it has none to read: a preset alone)."""
        return self.config.strategy if self.volumes or not self.config.preset else None

    @property
    def method(self) -> str:
        """What a backup of it really does, as `plan`, its JSON and the log show it: the
        strategy (`stop`, `pause`, `hot`); `preset:NAME` for a preset alone (its dump runs
        with the app up: nothing is stopped, whatever backup.strategy says); with volumes
        too, `preset:NAME+volumes:STRATEGY` (the dump first, then the volumes as the strategy
        says)."""
        if not self.config.preset:
            return str(self.config.strategy)
        shown = f"preset:{self.config.preset}"
        return shown if self.volume_strategy is None else f"{shown}+volumes:{self.volume_strategy}"


@dataclass(frozen=True)
class Skipped:
    """A labelled container that is not backed up, and why."""

    container: ContainerInfo
    reason: str


@dataclass(frozen=True)
class CopyState:
    """Where a (target, volume)'s backups are: time of the newest local archive, per
    destination the time of the newest archive with a verified copy there (None: none
    yet), and how many places hold the newest one (the backup volume counts as one)."""

    local: float | None
    offsite: Mapping[str, float | None]
    copies: int
    holders: frozenset[str] = frozenset()  # destinations holding a verified copy of the newest archive


# --- worker containers ------------------------------------------------------------------

@dataclass(frozen=True)
class WorkerMount:
    """A mount of a worker container, given explicitly (never through a host path the user adds)."""

    kind: str  # "volume" (source is a volume name) or "bind" (source is a path on the engine's host)
    source: str
    target: str  # path inside the worker
    read_only: bool = True


@dataclass(frozen=True)
class WorkerSpec:
    """One short-lived worker container: what runs, what it sees and with which rights.

    No network, a read-only root filesystem, no new privileges, every capability dropped
    except `capabilities` (meaningful with user "0": the kernel gives a non-root user
    none of them)."""

    image: str
    command: tuple[str, ...]  # argv; replaces the image's entrypoint
    purpose: str  # value of the worker label (e.g. "archive", "extract")
    mounts: tuple[WorkerMount, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)  # extra labels (e.g. the backup store's key)
    user: str | None = None  # None: the image's user; "0" only where root is needed
    capabilities: tuple[str, ...] = ()
    timeout: float = 3600.0  # seconds; the worker is killed when it runs longer
    tail_lines: int = 40  # lines of output kept for the error message
    hostname: str | None = None  # the container's host name (None: the engine's choice)
    logged: bool = True  # False: the engine keeps no log of its output (a stream of decrypted data)


@dataclass(frozen=True)
class WorkerLink:
    """A worker while it runs, as the one who started it holds it: its container's name,
    and `send`, which writes bytes to its stdin (raises EngineError when it cannot)."""

    name: str
    send: Callable[[bytes], None]


# Set in every worker's environment: its stdin is the sidecar's connection, and its end
# (the sidecar gone) ends the worker (sidecar/worker/__init__.py, watch_parent).
WORKER_PARENT_ENV = "BACKUP_WORKER_PARENT"


@dataclass(frozen=True)
class WorkerResult:
    name: str  # the worker container's name (it is removed already)
    exit_code: int
    tail: tuple[str, ...]  # its last lines of output
    seconds: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@dataclass(frozen=True)
class ExecResult:
    """How a command run in a container (backup.exec.*, a preset's tool) ended."""

    exit_code: int | None  # None: unknown (still running when its stream was cut)
    tail: tuple[str, ...]  # its last lines of output (stderr, and stdout when it was logged)
    seconds: float
    timed_out: bool = False
    stdout_bytes: int = 0  # bytes of stdout handed to the caller
    stdin_error: BaseException | None = field(default=None, compare=False)  # writing its stdin failed

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.stdin_error is None

    def describe(self, tail: int = 500) -> str:
        """Why it failed, with the end of its output (the tool's own message)."""
        text = "\n".join(self.tail).strip()[-tail:]
        if self.timed_out:
            what = f"ran past its timeout ({self.seconds:.0f} s) and was killed"
        elif self.stdin_error is not None:
            what = f"stopped reading its input ({self.stdin_error})"
        elif self.exit_code is None:
            what = "ended without an exit code"
        else:
            what = f"exited with {self.exit_code}"
        return f"{what}: {text}" if text else what


# --- swarm: this node and the fleet ---------------------------------------------------------

@dataclass(frozen=True)
class NodeIdentity:
    """The engine the sidecar talks to, as one node of a fleet: its name (the engine's
    `Name`, or BACKUP_NODE_NAME) names its folder on every destination and the `node`
    label of every metric."""

    name: str
    node_id: str | None = None  # the Swarm node ID; None outside a swarm
    swarm_active: bool = False  # the engine is an active member of a swarm
    manager: bool = False  # a Swarm manager: it can list the swarm's nodes


@dataclass(frozen=True)
class SwarmNode:
    """One node of the swarm as a manager sees it."""

    node_id: str
    hostname: str  # Description.Hostname: that node's engine Name
    state: str  # Status.State: "ready", "down", "unknown", "disconnected"
    availability: str = "active"  # Spec.Availability: "active", "pause", "drain"
    manager: bool = False

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def runs_tasks(self) -> bool:
        """Ready and not drained: a global service has a task there."""
        return self.ready and self.availability != "drain"
