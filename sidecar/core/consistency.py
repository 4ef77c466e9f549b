"""Whether a target's archives can be trusted to restore: a target that looks like a
database server (its image or command names one) copied `hot` without a preset. Issue 10
measured hot copies of live PostgreSQL and SQLite restoring silently corrupt, and one of
six hot MariaDB copies under load could not start (InnoDB "log sequence number is in the
future"). Every such run says so: `plan`, the run's summary line, a warning notification
and the metric `backup_sidecar_consistency_risk`, until the labels change or the user
acknowledges it with `backup.hot-ok=true` (the copy is then theirs to trust: e.g. the app
flushes and holds its writes in backup.exec.pre, or the data is only a cache).

Files in volumes (`*.db`, `*.sqlite`) are not looked for: that would read every volume
(and hold every `docker exec` into the container while the engine streams it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .labels import HOT_OK, PRESET, STRATEGY
from .model import Strategy, Target
from .presetnames import PRESETS

# (what a server's image or command is called, the app, its preset): first match wins.
DATABASES: tuple[tuple[re.Pattern, str, str], ...] = (
    (re.compile(r"(^|[/_-])(postgres|postgis|timescaledb)([:_-]|$)"), "PostgreSQL", "postgres"),
    (re.compile(r"(^|[/_-])(mysqld?|mariadbd?|percona)([:_-]|$)"), "MySQL/MariaDB", "mysql"),
    (re.compile(r"(^|[/_-])(mongod?|mongodb)([:_-]|$)"), "MongoDB", "mongodb"),
    (re.compile(r"(^|[/_-])(redis-server|redis|valkey)([:_-]|$)"), "Redis", "redis"),
    (re.compile(r"(^|[/_-])(sqlite3?)([:_-]|$)"), "SQLite", "sqlite"),
)


@dataclass(frozen=True)
class ConsistencyRisk:
    """A target copied hot while it looks like a live database."""

    target: str
    app: str  # the family: "MySQL/MariaDB"
    seen: str  # what named it: "mariadb" (from the image or the command)
    preset: str | None  # the preset that backs it up consistently (None: none yet)

    @property
    def advice(self) -> str:
        fix = (f"set {PRESET}={self.preset} (its own dump, no downtime) or {STRATEGY}=pause"
               if self.preset is not None else f"set {STRATEGY}=pause or stop (no preset for it yet)")
        return f"{fix}; or, if the copy is safe for this app, acknowledge it with {HOT_OK}=true"

    @property
    def summary(self) -> str:
        """The run's warning, in one line: what, why it matters, the label, the fix."""
        return (f"hot copy of a live database ({self.seen}, {self.app}) by {STRATEGY}=hot: it can restore "
                f"silently corrupt; {self.advice}")

    @property
    def warning(self) -> str:
        """The same for `plan`, which lists every target: it starts with the target's name."""
        return (f"{self.target} looks like {self.app} ({self.seen}) and is copied hot: a hot copy of a live database "
                f"can restore silently corrupt; {self.advice}")

    @property
    def key(self) -> str:
        """What a change of the risk is noticed by (the notification state)."""
        return f"{self.seen}/{self.preset or '-'}"


def may_be_at_risk(target: Target) -> bool:
    """Whether `target` can be at risk at all: hot, without a preset, not acknowledged
    (none of the others needs its command looked up)."""
    cfg = target.config
    return cfg.strategy is Strategy.HOT and not cfg.preset and not cfg.hot_ok


def looks_like(image: str, command: tuple[str, ...] = ()) -> tuple[str, str, str] | None:
    """(the app, the name that matched, its preset) when the image or the first words of
    the command name a database server; None otherwise."""
    names = [image.lower()] + [part.rsplit("/", 1)[-1].lower() for part in command[:2]]
    for pattern, app, preset in DATABASES:
        for name in names:
            match = pattern.search(name)
            if match:
                return app, match.group(2), preset
    return None


def hot_copy_risk(target: Target, command: tuple[str, ...] = ()) -> ConsistencyRisk | None:
    """The risk of a backup of `target` (its container runs `command`), or None."""
    if not may_be_at_risk(target):
        return None
    found = looks_like(target.container.image, command)
    if found is None:
        return None
    app, seen, preset = found
    return ConsistencyRisk(target.backup_name, app, seen, preset if preset in PRESETS else None)
