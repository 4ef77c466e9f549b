"""Backup groups (label backup.group): which targets go together, whether their labels
agree, and the order to stop and start them. Pure: no Docker.

Order: Compose's `depends_on` where the engine records it (Compose v2 writes the label
`com.docker.compose.depends_on`, e.g. `db:service_started:false,cache:...`; Compose 1.29
writes nothing), then `backup.group.order` (low first), then the backup name. A container
starts after what it depends on and stops before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from .model import Target

DEPENDS_ON = "com.docker.compose.depends_on"


@dataclass(frozen=True)
class Group:
    name: str
    members: tuple[Target, ...]  # in start order (dependencies first)

    @property
    def stop_order(self) -> tuple[Target, ...]:
        return tuple(reversed(self.members))

    @property
    def lead(self) -> Target:
        """The member whose schedule and strategy stand for the group (all agree)."""
        return self.members[0]


def depends_on(target: Target) -> set[str]:
    """Compose services this target's container depends on (empty without the label)."""
    raw = target.container.labels.get(DEPENDS_ON, "")
    return {item.split(":", 1)[0].strip() for item in raw.split(",") if item.strip()}


def start_order(members: Iterable[Target]) -> tuple[Target, ...]:
    """Dependencies first; among the ready ones, backup.group.order then name. A cycle
    (Compose refuses those) falls back to the same tie-break."""
    pending = sorted(members, key=_rank)
    services = {t.container.compose_service: t for t in pending if t.container.compose_service}
    ordered: list[Target] = []
    while pending:
        done = {t.container.compose_service for t in ordered}
        ready = [t for t in pending if not (depends_on(t) & set(services)) - done] or pending[:1]
        ordered.append(ready[0])
        pending.remove(ready[0])
    return tuple(ordered)


def _rank(target: Target) -> tuple[int, str]:
    order = target.config.group_order
    return (order if order is not None else 1001, target.backup_name)


def disagreements(members: Sequence[Target]) -> list[str]:
    """What the members of one group must agree on and do not (schedule, strategy)."""
    problems = []
    first = members[0]
    for other in members[1:]:
        for what, mine, theirs in (("backup.schedule", first.config.schedule.expression,
                                    other.config.schedule.expression),
                                   ("backup.strategy", str(first.config.strategy), str(other.config.strategy))):
            if mine != theirs:
                problems.append(f"{what} is {mine!r} on {first.container.name!r} but {theirs!r} on "
                                f"{other.container.name!r}; members of group {first.config.group!r} must agree "
                                "(set it the same on every member)")
    return problems


def groups_of(targets: Iterable[Target]) -> dict[str, Group]:
    by_name: dict[str, list[Target]] = {}
    for target in targets:
        if target.config.group is not None:
            by_name.setdefault(target.config.group, []).append(target)
    return {name: Group(name, start_order(members)) for name, members in by_name.items()}
