"""The stack itself: which Compose projects in scope have their definition archived, and
which host files make it up. Pure: the caller supplies the containers and targets.

Compose labels every container with its project, working folder and config files (and,
from 1.29, an explicit `--env-file`); file secrets are bind mounts at `/run/secrets/NAME`,
and configs the services read are read-only bind mounts of files or folders. Each file
gets the path a restore puts it at: relative to the working folder, or under `_outside/`
followed by its absolute host path when it lives elsewhere.

A project's stack archive is made with the backups of its first target (by backup name),
so one archive per project per run of that target, on that target's schedule.
"""

from __future__ import annotations

import enum
import posixpath
from dataclasses import dataclass
from typing import Iterable

from .labels import STACK as STACK_LABEL, STACK_EXCLUDE as EXCLUDE_LABEL, STACK_INCLUDE as INCLUDE_LABEL
from .model import ContainerInfo, Target
from .values import ACCEPTED_TRUTH, truth

PROJECT = "com.docker.compose.project"
WORKING_DIR = "com.docker.compose.project.working_dir"
CONFIG_FILES = "com.docker.compose.project.config_files"
ENVIRONMENT_FILE = "com.docker.compose.project.environment_file"


ITEM = "stack"  # the {type} of stack archive names: {project}_stack_{date}_{frequency}.tar.zst
OUTSIDE = "_outside"  # archive folder of files outside the working folder (their absolute path below it)
SECRETS_DIR = "/run/secrets/"
DEFAULT_ENV_FILE = ".env"


class PartKind(enum.Enum):
    COMPOSE = "compose"  # a file Compose read the project from
    ENV = "env"  # an environment file
    SECRET = "secret"  # a file secret
    CONFIG = "config"  # a read-only bind mount from the working folder
    EXTRA = "extra"  # named by backup.stack.include / BACKUP_STACK_INCLUDE

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class StackPart:
    kind: PartKind
    host_path: str  # absolute, on the engine's host
    relpath: str  # where it is stored, and restored, relative to the project folder
    optional: bool = False  # may be missing (the implicit `.env`): left out without a word


@dataclass(frozen=True)
class StackSettings:
    """BACKUP_STACK*: whether stacks are archived, extra paths, the size bound."""

    enabled: bool = True
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_bytes: int = 20 * 1024 * 1024


@dataclass(frozen=True)
class Stack:
    project: str
    working_dir: str
    parts: tuple[StackPart, ...]
    exclude: tuple[str, ...]
    leader: str  # backup name of the target whose runs make the archive

    @property
    def secrets(self) -> tuple[StackPart, ...]:
        return tuple(p for p in self.parts if p.kind is PartKind.SECRET)

    def without_secrets(self) -> "Stack":
        return Stack(self.project, self.working_dir, tuple(p for p in self.parts if p.kind is not PartKind.SECRET),
                     self.exclude, self.leader)


@dataclass(frozen=True)
class StackSkipped:
    project: str
    reason: str
    warn: bool = True  # False: by choice (an opt-out label) or no Compose project at all, said at INFO


@dataclass(frozen=True)
class StackDiscovery:
    stacks: tuple[Stack, ...] = ()
    skipped: tuple[StackSkipped, ...] = ()

    def led_by(self, backup_name: str) -> Stack | None:
        """The stack whose archive is made with `backup_name`'s backups."""
        return next((s for s in self.stacks if s.leader == backup_name), None)

    def find(self, project: str) -> Stack | None:
        return next((s for s in self.stacks if s.project == project), None)


def relpath_for(host_path: str, working_dir: str) -> str:
    """Where a host file is stored: relative to the working folder, else below `_outside/`."""
    path, base = posixpath.normpath(host_path), posixpath.normpath(working_dir)
    if path == base:
        return "."
    if path.startswith(base.rstrip("/") + "/"):
        return path[len(base.rstrip("/")) + 1:]
    return f"{OUTSIDE}/{path.lstrip('/')}"


def _inside(path: str, working_dir: str) -> bool:
    relpath = relpath_for(path, working_dir)
    return relpath != "." and not relpath.startswith(OUTSIDE + "/")


def discover_stacks(targets: Iterable[Target], containers: Iterable[ContainerInfo],
                    settings: StackSettings) -> StackDiscovery:
    """The stacks of the Compose projects the targets belong to. `containers`: every
    container of the engine (or of the scope), running or not: the project's unlabelled
    services mount secrets too."""
    if not settings.enabled:
        return StackDiscovery()
    leaders: dict[str, str] = {}
    for target in sorted(targets, key=lambda t: t.backup_name):
        project = target.container.compose_project
        if project is not None:
            leaders.setdefault(project, target.backup_name)
    members: dict[str, list[ContainerInfo]] = {p: [] for p in leaders}
    for container in sorted(containers, key=lambda c: (c.name, c.id)):
        if container.compose_project in members:
            members[container.compose_project].append(container)
    stacks, skipped = [], []
    for project in sorted(leaders):
        found = _stack(project, members[project], leaders[project], settings)
        (stacks if isinstance(found, Stack) else skipped).append(found)
    return StackDiscovery(tuple(stacks), tuple(skipped))


def _stack(project: str, containers: list[ContainerInfo], leader: str,
           settings: StackSettings) -> Stack | StackSkipped:
    problems: list[str] = []
    for c in containers:
        raw = c.labels.get(STACK_LABEL)
        if raw is not None and truth(raw) is None:
            problems.append(f"container {c.name!r}: label {STACK_LABEL}={raw!r} is invalid: accepted: {ACCEPTED_TRUTH}")
        elif raw is not None and truth(raw) is False:
            return StackSkipped(project, f"label {STACK_LABEL}={raw} on container {c.name!r}", warn=False)
    dirs = sorted({c.labels[WORKING_DIR] for c in containers if c.labels.get(WORKING_DIR)})
    if not dirs:  # labelled by hand, not started by Compose: no stack to keep
        return StackSkipped(project, f"no container of project {project!r} has the label {WORKING_DIR} (not "
                            "started by Compose)", warn=False)
    if len(dirs) > 1:
        problems.append(f"containers of project {project!r} name different working folders ({', '.join(dirs)}): "
                        "two folders use one project name")
    elif not posixpath.isabs(dirs[0]):
        problems.append(f"label {WORKING_DIR}={dirs[0]!r} is not an absolute path")
    include = list(settings.include)
    exclude = list(settings.exclude)
    for c in containers:
        include += _paths(c, INCLUDE_LABEL, problems)
        exclude += _list(c.labels.get(EXCLUDE_LABEL, ""))
    if problems:
        return StackSkipped(project, "; ".join(problems))
    working_dir = posixpath.normpath(dirs[0])
    parts: dict[str, StackPart] = {}

    def add(kind: PartKind, path: str, optional: bool = False) -> None:
        host = posixpath.normpath(posixpath.join(working_dir, path))
        relpath = relpath_for(host, working_dir)
        if relpath != "." and relpath not in parts:
            parts[relpath] = StackPart(kind, host, relpath, optional)

    for c in containers:
        for name in _list(c.labels.get(CONFIG_FILES, "")):
            add(PartKind.COMPOSE, name)
    env_files = {f for c in containers for f in _list(c.labels.get(ENVIRONMENT_FILE, ""))}
    for name in sorted(env_files):
        add(PartKind.ENV, name)
    if not env_files:
        add(PartKind.ENV, DEFAULT_ENV_FILE, optional=True)
    for c in containers:
        for m in sorted(c.mounts, key=lambda m: m.destination):
            if m.kind != "bind" or not posixpath.isabs(m.source):
                continue
            if m.destination.startswith(SECRETS_DIR):
                add(PartKind.SECRET, m.source)
            elif m.read_only and _inside(m.source, working_dir):  # elsewhere: /etc/localtime and the like
                add(PartKind.CONFIG, m.source)
    for path in include:
        add(PartKind.EXTRA, path)
    return Stack(project, working_dir, tuple(sorted(parts.values(), key=lambda p: p.relpath)),
                 tuple(dict.fromkeys(exclude)), leader)


def _list(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def _paths(container: ContainerInfo, label: str, problems: list[str]) -> list[str]:
    """Relative paths of the working folder from `label`: no absolute path, no `..`."""
    found = []
    for item in _list(container.labels.get(label, "")):
        problem = include_problem(item)
        if problem is not None:
            problems.append(f"container {container.name!r}: label {label}={item!r} is invalid: {problem}")
        else:
            found.append(item)
    return found


def include_problem(path: str) -> str | None:
    """Why `path` cannot name an extra path of the working folder (None: it can)."""
    if posixpath.isabs(path) or ".." in path.split("/") or posixpath.normpath(path) == ".":
        return "accepted: paths relative to the project's working folder, without '..'"
    return None

