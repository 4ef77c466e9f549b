"""Container labels -> validated Target. Pure: no Docker, no I/O.

Every problem found on one container is collected and reported together, each naming
the label, the value and what is accepted; the caller skips that container only.
"""

from __future__ import annotations

import re
import enum
from typing import Mapping, TypeVar

from .errors import LabelError
from .model import (
    Compression,
    ImagePolicy,
    ContainerInfo,
    Strategy,
    Target,
    TargetConfig,
    VolumeSpec,
)
from .retention import DEFAULT_KEEP, Keep, parse_keep
from .schedule import Schedule, parse_schedule

E = TypeVar("E", bound=enum.Enum)

PREFIX = "backup."
ENABLE = "backup.enable"
SCHEDULE = "backup.schedule"
STRATEGY = "backup.strategy"
VOLUMES = "backup.volumes"
EXCLUDE = "backup.exclude"
NAME = "backup.name"
COMPRESSION = "backup.compression"
EXEC_PRE = "backup.exec.pre"
EXEC_POST = "backup.exec.post"
STOP_TIMEOUT = "backup.stop-timeout"
IMAGE = "backup.image"
KEEP = "backup.keep"

KNOWN_LABELS = (
    ENABLE, SCHEDULE, STRATEGY, VOLUMES, EXCLUDE, NAME, COMPRESSION, EXEC_PRE, EXEC_POST, STOP_TIMEOUT, IMAGE,
    KEEP,
)

TRUE_VALUES = ("true", "1", "yes")
FALSE_VALUES = ("false", "0", "no")

DEFAULT_STOP_TIMEOUT = 10
MAX_STOP_TIMEOUT = 3600

# Service names end up in file names; "_" is allowed because names are parsed from
# the right (see naming.py), "/" and leading dots are not.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9.-]+")


def enable_value(labels: Mapping[str, str]) -> bool | None:
    """True/False for a recognised backup.enable value, None when absent or unrecognised."""
    raw = labels.get(ENABLE)
    if raw is None:
        return None
    value = raw.strip().lower()
    if value in TRUE_VALUES:
        return True
    if value in FALSE_VALUES:
        return False
    return None


def is_candidate(labels: Mapping[str, str]) -> bool:
    """A container the sidecar should look at: enabled, or carrying a backup.enable it can't read."""
    return ENABLE in labels and enable_value(labels) is not False


def parse_target(container: ContainerInfo, default_schedule: Schedule, default_keep: Keep = DEFAULT_KEEP) -> Target:
    """Validate a labelled container's backup.* labels; raises LabelError listing every problem."""
    labels = container.labels
    problems: list[str] = []

    def bad(label: str, value: str, accepted: str) -> None:
        problems.append(f"label {label}={value!r} is invalid: {accepted}")

    for key in sorted(labels):
        if key.startswith(PREFIX) and key not in KNOWN_LABELS:
            bad(key, labels[key], "unknown label; accepted labels are " + ", ".join(KNOWN_LABELS))

    if enable_value(labels) is not True:
        bad(ENABLE, labels.get(ENABLE, ""), "accepted: " + "/".join(TRUE_VALUES) + " to enable, "
            + "/".join(FALSE_VALUES) + " to disable (case-insensitive)")

    schedule = default_schedule
    if SCHEDULE in labels:
        try:
            schedule = parse_schedule(labels[SCHEDULE])
        except ValueError as exc:
            bad(SCHEDULE, labels[SCHEDULE], str(exc))

    strategy = _choice(labels, STRATEGY, Strategy.STOP, bad)
    compression = _choice(labels, COMPRESSION, Compression.ZSTD, bad)
    image = _choice(labels, IMAGE, ImagePolicy.AUTO, bad)

    keep = default_keep
    if KEEP in labels:
        try:
            keep = parse_keep(labels[KEEP], default_keep)
        except ValueError as exc:
            bad(KEEP, labels[KEEP], str(exc))
    if not keep.retains(schedule.frequency):
        bad(KEEP, labels.get(KEEP, str(keep)), f"keeps no archive of this {schedule.frequency} schedule; "
            "accepted: at least 1 for its frequency or a higher one")

    stop_timeout = DEFAULT_STOP_TIMEOUT
    if STOP_TIMEOUT in labels:
        raw = labels[STOP_TIMEOUT].strip()
        if re.fullmatch(r"[0-9]{1,5}", raw) and int(raw) <= MAX_STOP_TIMEOUT:
            stop_timeout = int(raw)
        else:
            bad(STOP_TIMEOUT, labels[STOP_TIMEOUT], f"accepted: whole seconds from 0 to {MAX_STOP_TIMEOUT}")

    name = default_name(container)
    if NAME in labels:
        name = labels[NAME].strip()
        if not _NAME_RE.match(name):
            bad(NAME, labels[NAME], "accepted: 1-100 characters of letters, digits, '.', '_' and '-', "
                "starting with a letter or digit")

    exec_pre = _command(labels, EXEC_PRE, bad)
    exec_post = _command(labels, EXEC_POST, bad)
    exclude = _list(labels.get(EXCLUDE, ""))
    wanted = _list(labels[VOLUMES]) if VOLUMES in labels else None
    if wanted is not None and not wanted:
        bad(VOLUMES, labels[VOLUMES], "accepted: a comma list of volume names or mount destinations")

    volumes: tuple[VolumeSpec, ...] = ()
    try:
        volumes = select_volumes(container, wanted)
    except ValueError as exc:
        if VOLUMES in labels:
            bad(VOLUMES, labels[VOLUMES], str(exc))
        else:
            problems.append(f"nothing to back up: {exc} with label {VOLUMES}")

    if problems:
        raise LabelError(container.name, problems)

    config = TargetConfig(
        name=name,
        schedule=schedule,
        strategy=strategy,
        volumes=wanted,
        exclude=exclude,
        compression=compression,
        exec_pre=exec_pre,
        exec_post=exec_post,
        stop_timeout=stop_timeout,
        image=image,
        keep=keep,
    )
    return Target(container=container, config=config, volumes=volumes)


def intended_name(container: ContainerInfo) -> str:
    """The backup name a container asks for, even when its labels are otherwise invalid."""
    return container.labels.get(NAME, "").strip() or default_name(container)


def default_name(container: ContainerInfo) -> str:
    """The compose service name, else the container name, made safe for file names."""
    raw = container.compose_service or container.name
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", raw.lstrip("/")).strip("-._")
    return cleaned[:100] or container.short_id


def select_volumes(container: ContainerInfo, wanted: tuple[str, ...] | None) -> tuple[VolumeSpec, ...]:
    """Pick the mounts to back up and give each a short unique type name.

    Without a list: every named volume. With one: each entry must match a volume name
    (with or without the compose project prefix) or a mount destination; bind mounts
    are only included this way.
    """
    project = container.compose_project
    if wanted is None:
        chosen = [m for m in container.mounts if m.kind == "volume"]
        if not chosen:
            raise ValueError(
                "the container has no named volumes; list bind mounts or mount destinations"
                + _available(container)
            )
    else:
        chosen = []
        for entry in wanted:
            match = next((m for m in container.mounts if _matches(m, entry, project)), None)
            if match is None:
                raise ValueError(f"{entry!r} is not mounted in the container{_available(container)}")
            if match not in chosen:
                chosen.append(match)

    specs: list[VolumeSpec] = []
    used: set[str] = set()
    for mount in chosen:
        base = short_type_name(mount, project)
        type_name, n = base, 2
        while type_name in used:
            type_name, n = f"{base}-{n}", n + 1
        used.add(type_name)
        specs.append(VolumeSpec(type_name=type_name, mount=mount))
    return tuple(specs)


def short_type_name(mount, project: str | None) -> str:
    """A readable, file-name-safe name for a mount: the volume name without the compose
    project prefix, or the last part of a bind mount's destination. Never contains "_",
    so archive names can be split unambiguously."""
    if mount.kind == "volume":
        raw = mount.source
        if project and raw.startswith(project + "_"):
            raw = raw[len(project) + 1:]
        # Anonymous volumes are 64 hex characters: their destination reads better.
        if re.fullmatch(r"[0-9a-f]{64}", raw):
            raw = mount.destination.rstrip("/").rsplit("/", 1)[-1]
    else:
        raw = mount.destination.rstrip("/").rsplit("/", 1)[-1]
    cleaned = _UNSAFE_CHARS.sub("-", raw).strip("-.")
    return cleaned[:60] or "root"


def _matches(mount, entry: str, project: str | None) -> bool:
    if entry.rstrip("/") == mount.destination.rstrip("/") and entry.startswith("/"):
        return True
    if mount.kind == "volume":
        return entry == mount.source or (project is not None and f"{project}_{entry}" == mount.source)
    return False


def _available(container: ContainerInfo) -> str:
    if not container.mounts:
        return " (it has no mounts)"
    listed = ", ".join(
        f"{m.source}:{m.destination}" if m.kind == "volume" else f"bind {m.destination}" for m in container.mounts
    )
    return f"; accepted: one of {listed}"


def _choice(labels: Mapping[str, str], key: str, default: E, bad) -> E:
    """The enum member a label names (case-insensitive), or the default."""
    if key not in labels:
        return default
    kind = type(default)
    try:
        return kind(labels[key].strip().lower())
    except ValueError:
        bad(key, labels[key], "accepted: " + ", ".join(member.value for member in kind))
        return default


def _command(labels: Mapping[str, str], key: str, bad) -> str | None:
    if key not in labels:
        return None
    value = labels[key].strip()
    if not value:
        bad(key, labels[key], "accepted: a non-empty command")
        return None
    return value


def _list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())
