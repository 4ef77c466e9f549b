"""Labelled containers -> targets and skipped containers. Pure: the caller supplies the
containers as the engine listed them."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Iterable

from .errors import LabelError
from .groups import disagreements, groups_of
from .labels import intended_name, is_candidate, parse_target
from .model import ContainerInfo, ContainerState, Skipped, Strategy, Target
from .retention import DEFAULT_KEEP, Keep
from .schedule import Schedule
from .swarm import backed_up_elsewhere, merged_labels, stop_problem

logger = logging.getLogger(__name__)

_CONTAINER_NUMBER = "com.docker.compose.container-number"


ALL_PROJECTS = "*"  # BACKUP_PROJECT value: every labelled container on the engine


@dataclass(frozen=True)
class Scope:
    """Which labelled containers the sidecar backs up: one Compose project, or all."""

    project: str | None  # None: every labelled container on the engine
    why: str  # how it was chosen, for `plan` and the daemon's start-up line

    def describe(self) -> str:
        where = f"Compose project {self.project!r}" if self.project is not None else "every project on the engine"
        return f"{where} ({self.why})"


def resolve_scope(setting: str | None, own: ContainerInfo | None) -> Scope:
    """BACKUP_PROJECT when set (`*`: all); else the project of the sidecar's own container
    (`own`, None when it runs outside a container), so a sidecar in one stack never stops
    another stack's services; else the whole engine, as before scopes existed."""
    if setting == ALL_PROJECTS:
        return Scope(None, f"BACKUP_PROJECT={ALL_PROJECTS}")
    if setting is not None:
        return Scope(setting, "BACKUP_PROJECT")
    if own is not None and own.compose_project is not None:
        return Scope(own.compose_project, f"the sidecar's own container {own.name!r}; BACKUP_PROJECT=* widens it")
    if own is not None:
        return Scope(None, f"its container {own.name!r} is in no Compose project; set BACKUP_PROJECT to narrow it")
    return Scope(None, "not running in a container; set BACKUP_PROJECT to narrow it")


@dataclass(frozen=True)
class Discovery:
    targets: tuple[Target, ...]
    skipped: tuple[Skipped, ...]

    def find(self, ref: str) -> Target | None:
        """A target by its {service} name, container name, full ID or ID prefix."""
        for target in self.targets:
            if ref == target.backup_name:
                return target
        for target in self.targets:
            if ref == target.container.name:
                return target
        if len(ref) >= 4:
            matches = [t for t in self.targets if t.container.id.startswith(ref)]
            if len(matches) == 1:
                return matches[0]
        return None

    def backup_name_for(self, ref: str) -> str:
        """The backup name `ref` stands for: a target's name, else `ref` itself (archives
        of a container that is gone are still listed and pruned by their name)."""
        target = self.find(ref)
        return target.backup_name if target is not None else ref

    def keep_for(self, backup_name: str, default: Keep) -> Keep | None:
        """Rotation rules for archives of `backup_name`: its target's, `default` for archives
        whose container is gone, None (leave them alone) when its container is skipped for
        bad labels: its intended backup.keep is unknown."""
        for target in self.targets:
            if target.backup_name == backup_name:
                return target.config.keep
        if any(intended_name(s.container) == backup_name for s in self.skipped):
            return None
        return default

    def find_skipped(self, ref: str) -> Skipped | None:
        for skipped in self.skipped:
            c = skipped.container
            if ref == c.name or (len(ref) >= 4 and c.id.startswith(ref)):
                return skipped
        return None


def discover(containers: Iterable[ContainerInfo], default_schedule: Schedule,
             project: str | None = None, default_keep: Keep = DEFAULT_KEEP, own_id: str | None = None) -> Discovery:
    """Validate every candidate; a bad one is skipped with its reason, the rest go on.
    Two containers asking for the same backup name would write over each other's
    archive names, so the second (by container name) is skipped, unless both are one
    Compose service being recreated (see `_replacing`). With `project`, only containers of
    that compose project are considered (one sidecar per stack)."""
    targets: list[Target] = []
    skipped: list[Skipped] = []
    by_name: dict[str, Target] = {}
    for container in sorted(containers, key=lambda c: (c.name, c.id)):
        if not is_candidate_container(container):
            continue
        if project is not None and container.compose_project != project:
            continue
        if container.swarm is not None:
            labels, conflicts = merged_labels(container.labels, container.swarm)
            if conflicts:
                skipped.append(Skipped(container, f"container {container.name!r}: " + "; ".join(conflicts)
                                       + "; set each label in one place"))
                continue
            if (elsewhere := backed_up_elsewhere(container.swarm)) is not None:
                logger.debug("not this node's to back up", extra={"container": container.name, "reason": elsewhere})
                continue
            container = replace(container, labels=labels)
        try:
            target = parse_target(container, default_schedule, default_keep)
        except LabelError as exc:
            skipped.append(Skipped(container, str(exc)))
            continue
        if container.swarm is not None and target.config.strategy is Strategy.STOP and (
                problem := stop_problem(container.swarm, f"container {container.name!r}")) is not None:
            skipped.append(Skipped(container, problem))
            continue
        if container.id == own_id and (target.config.strategy is not Strategy.HOT or target.config.group):
            skipped.append(Skipped(container, (
                f"container {container.name!r} is the sidecar itself: it never stops, pauses or restarts itself; "
                "use backup.strategy=hot (and no backup.group) to back up its own volumes")))
            continue
        other = by_name.get(target.backup_name)
        if other is not None and _same_service(other.container, container):
            keep, drop = (target, other) if _rank(container) > _rank(other.container) else (other, target)
            logger.debug("container being replaced by Compose: backing up its successor", extra={
                "target": target.backup_name, "container": keep.container.name, "replaced": drop.container.name})
            if keep is target:
                targets[targets.index(other)] = target
                by_name[target.backup_name] = target
            continue
        if other is not None:
            skipped.append(Skipped(container, (
                f"container {container.name!r}: backup name {target.backup_name!r} is already used by container "
                f"{other.container.name!r}; set label backup.name to a name of its own"
            )))
            continue
        by_name[target.backup_name] = target
        targets.append(target)
    for group in groups_of(targets).values():
        problems = disagreements(group.members)
        if problems:
            for member in group.members:
                targets.remove(member)
                skipped.append(Skipped(member.container, f"container {member.container.name!r}: "
                                       + "; ".join(problems)))
    return Discovery(tuple(targets), tuple(skipped))


def is_candidate_container(container: ContainerInfo) -> bool:
    """A container to look at: labelled itself, or a Swarm task whose service (as a
    manager reads it) is labelled."""
    if is_candidate(container.labels):
        return True
    service = container.swarm.service if container.swarm is not None else None
    return service is not None and is_candidate(service.labels)


def _same_service(a: ContainerInfo, b: ContainerInfo) -> bool:
    """Both are the same container of one Compose service: `up -d` recreating it renames
    the old one to `<id12>_<name>` and creates the new one (same container number) beside
    it for a moment. Replicas of a scaled service differ in number: a true clash."""
    def key(c: ContainerInfo) -> tuple:
        return c.compose_project, c.compose_service, c.labels.get(_CONTAINER_NUMBER)

    return a.compose_project is not None and a.compose_service is not None and key(a) == key(b)


def _rank(container: ContainerInfo) -> tuple[bool, bool]:
    """Which of two containers of one service to back up: the running one, else the one
    Compose did not rename on its way out."""
    return container.state is ContainerState.RUNNING, not container.name.startswith(f"{container.short_id}_")
