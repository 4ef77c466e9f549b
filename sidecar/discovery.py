"""Labelled containers -> targets and skipped containers. Pure: the caller supplies the
containers as the engine listed them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .errors import LabelError
from .labels import intended_name, is_candidate, parse_target
from .model import ContainerInfo, Skipped, Target
from .retention import DEFAULT_KEEP, Keep
from .schedule import Schedule


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
             project: str | None = None, default_keep: Keep = DEFAULT_KEEP) -> Discovery:
    """Validate every candidate; a bad one is skipped with its reason, the rest go on.
    Two containers asking for the same backup name would write over each other's
    archive names, so the second (by container name) is skipped. With `project`, only
    containers of that compose project are considered (one sidecar per stack)."""
    targets: list[Target] = []
    skipped: list[Skipped] = []
    by_name: dict[str, Target] = {}
    for container in sorted(containers, key=lambda c: (c.name, c.id)):
        if not is_candidate(container.labels):
            continue
        if project is not None and container.compose_project != project:
            continue
        try:
            target = parse_target(container, default_schedule, default_keep)
        except LabelError as exc:
            skipped.append(Skipped(container, str(exc)))
            continue
        other = by_name.get(target.backup_name)
        if other is not None:
            skipped.append(Skipped(container, (
                f"container {container.name!r}: backup name {target.backup_name!r} is already used by container "
                f"{other.container.name!r}; set label backup.name to a name of its own"
            )))
            continue
        by_name[target.backup_name] = target
        targets.append(target)
    return Discovery(tuple(targets), tuple(skipped))
