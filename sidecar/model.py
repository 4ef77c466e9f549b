"""Typed values passed between the layers: containers as the engine reports them,
targets as the labels configure them, and the volumes picked for a backup."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Mapping

from .retention import DEFAULT_KEEP, Keep
from .schedule import Schedule


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


class ImagePolicy(enum.Enum):
    AUTO = "auto"  # export only images that cannot be pulled again (no repository digest)
    ALWAYS = "always"
    NEVER = "never"

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

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def compose_service(self) -> str | None:
        return self.labels.get("com.docker.compose.service")

    @property
    def compose_project(self) -> str | None:
        return self.labels.get("com.docker.compose.project")


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
    mirror: bool = True  # stop/pause through a staging mirror (label backup.mirror)


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
