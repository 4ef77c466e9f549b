"""Container labels -> validated Target. Pure: no Docker, no I/O.

`LABELS` holds one `Label` row per `backup.*` label: its parser, default, help and the
TargetConfig field it fills. The table drives `parse_target`, `KNOWN_LABELS`, the error
messages and docs/reference/labels.md (`python -m sidecar.doctables`); the labels that
need the container or another label (enable, volumes, keep) are read by the small rules
after it. To add a label: add a row (and its TargetConfig field).

Every problem found on one container is collected and reported together, each naming
the label, the value and what is accepted; the caller skips that container only.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .errors import LabelError
from .model import (
    Compression,
    ImagePolicy,
    StorageFormat,
    ContainerInfo,
    Mount,
    SharedPolicy,
    Strategy,
    Target,
    TargetConfig,
    VolumeSpec,
)
from .presetnames import PRESETS
from .ping_urls import ACCEPTED as PING_ACCEPTED
from .ping_urls import parse_ping_url
from .retention import DEFAULT_KEEP, Keep, parse_keep
from .schedule import Schedule
from .values import ACCEPTED_TRUTH, BOOLEAN, FALSE_VALUES, TRUE_VALUES, Parser, comma_list, member_of, one_of, truth, whole
from .values import KEEP as KEEP_VALUES  # KEEP and SCHEDULE here are label names
from .values import SCHEDULE as SCHEDULE_VALUES

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
SHARED = "backup.shared"
GROUP = "backup.group"
GROUP_ORDER = "backup.group.order"
READY_TIMEOUT = "backup.ready-timeout"
EXEC_USER = "backup.exec.user"
EXEC_TIMEOUT = "backup.exec.timeout"
PRESET = "backup.preset"
PRESET_USER = "backup.preset.user"
PRESET_DATABASE = "backup.preset.database"
SQLITE_PATHS = "backup.sqlite.paths"
PING = "backup.ping"

DEFAULT_EXEC_TIMEOUT = 3600
MAX_EXEC_TIMEOUT = 7 * 86400
MIRROR = "backup.mirror"
HOT_OK = "backup.hot-ok"
STACK = PREFIX + "stack"  # read by sidecar/core/stacks.py, on any container of a Compose project
STACK_INCLUDE = PREFIX + "stack.include"
STACK_EXCLUDE = PREFIX + "stack.exclude"
FORMAT = "backup.format"

DEFAULT_STOP_TIMEOUT = 10
MAX_STOP_TIMEOUT = 3600
DEFAULT_READY_TIMEOUT = 60

# Service names end up in file names; "_" is allowed because names are parsed from
# the right (see naming.py), "/" and leading dots are not.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9.-]+")
_ACCEPTED_ENABLE = ("accepted: " + "/".join(TRUE_VALUES) + " to enable, " + "/".join(FALSE_VALUES)
                    + " to disable (case-insensitive)")


@dataclass(frozen=True)
class Label:
    """One backup.* label: how it is read, checked and documented."""

    name: str
    parse: Parser | None  # its ValueError says what is accepted; None: read by a rule below
    default: Any  # the value when the label is absent (rules and the caller may supply it instead)
    help: str  # Markdown, for docs/reference/labels.md
    field: str | None = None  # the TargetConfig attribute it fills
    accepted: str | None = None  # the reference's accepted values when a rule reads the label
    shown_default: str | None = None  # the reference's default when it is no literal value
    secret: bool = False  # its value holds a token: never quoted in a message


def _name(raw: str) -> str:
    name = raw.strip()
    if not _NAME_RE.match(name):
        raise ValueError("accepted: 1-100 characters of letters, digits, '.', '_' and '-', "
                         "starting with a letter or digit")
    return name


def _command(raw: str) -> str:
    if not raw.strip():
        raise ValueError("accepted: a non-empty command")
    return raw.strip()


def _volume_list(raw: str) -> tuple[str, ...]:
    wanted = comma_list(raw)
    if not wanted:
        raise ValueError("accepted: a comma list of volume names or mount destinations")
    return wanted


COMMAND = Parser(_command, "a command")


def _user(raw: str) -> str:
    user = raw.strip()
    if not re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31})?", user):
        raise ValueError("accepted: a user name or uid, optionally with :group or :gid")
    return user


def _identifier(raw: str) -> str:
    name = raw.strip()
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_$.-]{0,62}", name):
        raise ValueError("accepted: 1-63 letters, digits, '_', '$', '.', '-'")
    return name


def _globs(raw: str) -> tuple[str, ...]:
    patterns = comma_list(raw)
    if not patterns or any(not p.startswith("/") or "/../" in p + "/" for p in patterns):
        raise ValueError("accepted: a comma list of absolute paths or globs inside the container "
                         "(`/var/lib/grafana/grafana.db`, `/data/*.sqlite`)")
    return patterns


def sqlite_globs(container: ContainerInfo) -> tuple[str, ...]:
    """A container's `backup.sqlite.paths`; raises LabelError when missing or malformed."""
    raw = container.labels.get(SQLITE_PATHS, "")
    try:
        return _globs(raw)
    except ValueError as err:
        raise LabelError(container.name, [f"{SQLITE_PATHS}={raw!r}: {err}"]) from None


LABELS: tuple[Label, ...] = (
    Label(ENABLE, None, None, "opt in (a true value) or out (a false one)",
          accepted=BOOLEAN.accepted + " (case-insensitive)", shown_default="(required)"),
    Label(SCHEDULE, SCHEDULE_VALUES, None, "when to back up, read in the sidecar's `TZ`",
          field="schedule", shown_default="`BACKUP_DEFAULT_SCHEDULE`"),
    Label(STRATEGY, member_of(Strategy), Strategy.STOP, "`stop`: stop, read the data, start again before "
          "anything else; `pause`: freeze with pause/unpause; `hot`: no interruption", field="strategy"),
    Label(VOLUMES, Parser(_volume_list, "comma list"), None, "named volumes (with or without the Compose project "
          "prefix) or mount destinations to include; bind mounts are included only when listed here",
          field="volumes", shown_default="every named volume mounted"),
    Label(EXCLUDE, Parser(comma_list, "comma list of glob patterns"), (), "left out of archives, matched against "
          "the path relative to the volume, the base name, and each parent folder (`cache` drops `cache/` and "
          "everything in it)", field="exclude"),
    Label(NAME, Parser(_name, "1-100 letters, digits, `.`, `_`, `-`; a letter or digit first"), None,
          "the `{service}` part of archive names, and the NAME the CLI accepts", field="backup_name",
          shown_default="Compose service label, else container name"),
    Label(COMPRESSION, member_of(Compression), Compression.ZSTD, "how archives are compressed",
          field="compression"),
    Label(EXEC_PRE, COMMAND, None, "run inside the container (through `sh -c` when the image has a shell, else "
          "split like a shell and run directly) before the archive, e.g. an SQLite `.backup` or the Prometheus "
          "snapshot API. A non-zero exit aborts that target's backup, reported as a failure, and nothing is "
          "stopped", field="exec_pre"),
    Label(EXEC_POST, COMMAND, None, "run inside the container after the archive (after the restart for `stop`). "
          "A failure is reported; the archives are kept", field="exec_post"),
    Label(STOP_TIMEOUT, whole(0, MAX_STOP_TIMEOUT, "accepted: whole seconds", digits=5), DEFAULT_STOP_TIMEOUT,
          "seconds given to a graceful stop before Docker kills the container", field="stop_timeout"),
    Label(IMAGE, member_of(ImagePolicy), ImagePolicy.AUTO, "`auto`: export the container's image when it cannot "
          "be pulled again (built here, never pushed: no repository digest); `always`; `never`", field="image"),
    Label(EXEC_USER, Parser(_user, "user[:group] or uid[:gid]"), None, "the user `backup.exec.pre`/`post` and a "
          "preset's tool run as inside the container (`postgres`, `999:999`)", field="exec_user",
          shown_default="the container's user"),
    Label(EXEC_TIMEOUT, whole(1, MAX_EXEC_TIMEOUT, "accepted: whole seconds", digits=7), DEFAULT_EXEC_TIMEOUT,
          "seconds `backup.exec.pre`/`post` and a preset's dump may run; then the command is killed inside the "
          "container (by `timeout` when the image has one) and the run fails", field="exec_timeout"),
    Label(PRESET, one_of(PRESETS), None, "back up through the app's own tool, without stopping it: `postgres` "
          "(`pg_dumpall`, or `pg_dump -Fc` of `backup.preset.database`), `sqlite` (the online backup API, from a "
          "worker container, on `backup.sqlite.paths`), `mysql`/`mariadb` (`mariadb-dump`/`mysqldump "
          "--single-transaction`), `redis` (`BGSAVE`, then the RDB), `prometheus` (the TSDB snapshot API), `mongodb` (`mongodump "
          "--archive`); see "
          "Presets. Only the dump is archived "
          "unless `backup.volumes` names volumes too",
          field="preset", shown_default="none"),
    Label(PRESET_USER, Parser(_identifier, "a database role"), None, "the role a preset connects as",
          field="preset_user", shown_default="postgres: `PGUSER`, else `POSTGRES_USER`, else `postgres`; mysql: `root`"),
    Label(PRESET_DATABASE, Parser(_identifier, "a database name"), None, "dump this database only "
          "(`pg_dump -Fc`) instead of the whole cluster", field="preset_database", shown_default="all"),
    Label(SQLITE_PATHS, Parser(_globs, "comma list of absolute globs"), None, "the SQLite databases the `sqlite` "
          "preset backs up: paths or globs inside the container, on its volumes", field="sqlite_paths",
          shown_default="(required with `sqlite`)"),
    Label(KEEP, None, None, "rotation for this container (`daily=14,monthly=12`); frequencies not named come "
          "from `BACKUP_KEEP`", field="keep", accepted=KEEP_VALUES.accepted, shown_default="`BACKUP_KEEP`"),
    Label(SHARED, member_of(SharedPolicy), SharedPolicy.QUIESCE, "with `stop`/`pause`: `quiesce` stops (or "
          "pauses) every other running container that mounts one of the backed-up volumes read-write, and puts "
          "it back after the read; `ignore` leaves them running (the log names them)", field="shared"),
    Label(GROUP, Parser(_name, "1-100 letters, digits, `.`, `_`, `-`; a letter or digit first"), None,
          "containers with the same group are backed up in one run: all stopped (or paused) before the first "
          "archive, in reverse dependency order, and started after the last, in dependency order. Members must "
          "agree on `backup.schedule` and `backup.strategy` (else every member is skipped with both values named); "
          "`backup NAME` of one member backs up the whole group",
          field="group", shown_default="none"),
    Label(GROUP_ORDER, whole(0, 1000, "accepted: a whole number"), None, "order in the group when Compose "
          "records no `depends_on`: low starts first and stops last", field="group_order",
          shown_default="Compose's `depends_on`, else the name"),
    Label(READY_TIMEOUT, whole(0, MAX_STOP_TIMEOUT, "accepted: whole seconds", digits=5), DEFAULT_READY_TIMEOUT,
          "after a `stop`/`pause` backup: seconds to wait for the container's healthcheck to say healthy (the "
          "downtime ends then; a warning when it does not). No healthcheck: running is ready",
          field="ready_timeout"),
    Label(MIRROR, BOOLEAN, None, "`stop`/`pause`: keep a staging mirror of each volume on the backup volume so "
          "the container is down only while what changed is copied (see docs/how-to/mirror.md); a false value: "
          "down while the whole volume is read. The mirror is a plaintext copy: with local encryption on "
          "(`BACKUP_ENCRYPT_LOCAL`) it is off unless this label is true", field="mirror",
          shown_default="`true`; `false` with local encryption"),
    Label(HOT_OK, BOOLEAN, False, "with `backup.strategy=hot` on a container that looks like a database server: "
          "a true value acknowledges that its hot copies are safe (e.g. `backup.exec.pre` makes the app flush "
          "and hold its writes, or the data is a cache), which silences the warning of every run, its "
          "notification and `backup_sidecar_consistency_risk`; see docs/how-to/presets-notes.md",
          field="hot_ok"),
    # Read for the whole Compose project by sidecar/core/stacks.py (any container of it, labelled for backups or not).
    Label(STACK, None, None, "a false value on any container of a Compose project: its stack (Compose files, "
          "`.env`, file secrets and configs) is not archived (see the disaster-recovery guide)",
          accepted=ACCEPTED_TRUTH, shown_default="true (`BACKUP_STACK`)"),
    Label(STACK_INCLUDE, None, None, "more files or folders of the project's working folder to keep in its stack "
          "archive (e.g. a Traefik `dynamic` folder no service mounts read-only)",
          accepted="comma list of paths relative to the working folder, without `..`", shown_default="none"),
    Label(STACK_EXCLUDE, None, None, "left out of the project's stack archive, matched like `backup.exclude` "
          "against the stored path", accepted="comma list of glob patterns", shown_default="none"),
    Label(PING, Parser(parse_ping_url, PING_ACCEPTED), None, "this container's heartbeat URL, pinged when its "
          "backup starts, succeeds or fails, besides `BACKUP_PING_URL` (same kinds; see docs/how-to/pings.md). "
          "Holds a token: never shown", field="ping", shown_default="none", secret=True),
    Label(FORMAT, member_of(StorageFormat), None, "`archive`: dated `.tar.zst` files; `restic`: one snapshot per "
          "volume (or dump) and run in the deduplicated restic repository `BACKUP_DIR/restic` (see "
          "docs/how-to/restic.md)", field="format", shown_default="`BACKUP_FORMAT`"),
)
SECRET_LABELS = frozenset(label.name for label in LABELS if label.secret)

KNOWN_LABELS = tuple(label.name for label in LABELS)


def enable_value(labels: Mapping[str, str]) -> bool | None:
    """True/False for a recognised backup.enable value, None when absent or unrecognised."""
    raw = labels.get(ENABLE)
    return None if raw is None else truth(raw)


def is_candidate(labels: Mapping[str, str]) -> bool:
    """A container the sidecar should look at: enabled, or carrying a backup.enable it can't read."""
    return ENABLE in labels and enable_value(labels) is not False


def parse_target(container: ContainerInfo, default_schedule: Schedule, default_keep: Keep = DEFAULT_KEEP) -> Target:
    """Validate a labelled container's backup.* labels; raises LabelError listing every problem."""
    labels = container.labels
    problems: list[str] = []
    failed: set[str] = set()

    def bad(label: str, value: str, accepted: str) -> None:
        failed.add(label)
        shown = label if label in SECRET_LABELS else f"{label}={value!r}"
        problems.append(f"label {shown} is invalid: {accepted}")

    for key in sorted(labels):
        if key.startswith(PREFIX) and key not in KNOWN_LABELS:
            bad(key, labels[key], "unknown label; accepted labels are " + ", ".join(KNOWN_LABELS))
    if enable_value(labels) is not True:
        bad(ENABLE, labels.get(ENABLE, ""), _ACCEPTED_ENABLE)

    values = {label.field: label.default for label in LABELS if label.field is not None}
    values.update(schedule=default_schedule, backup_name=default_name(container))
    for label in LABELS:
        if label.parse is not None and label.name in labels:
            try:
                values[label.field] = label.parse(labels[label.name])
            except ValueError as exc:
                bad(label.name, labels[label.name], str(exc))
    values["keep"] = _keep(labels, values["schedule"], default_keep, bad)
    # A preset alone archives only its dump: volumes too only when backup.volumes names them.
    with_volumes = values["preset"] is None or VOLUMES in labels
    volumes = _volumes(container, values["volumes"], VOLUMES in failed, bad, problems) if with_volumes else ()
    if values["preset"] == "sqlite" and not values["sqlite_paths"] and SQLITE_PATHS not in failed:
        problems.append(f"label {SQLITE_PATHS} is missing: required with backup.preset=sqlite; accepted: a comma "
                        "list of absolute globs")

    if problems:
        raise LabelError(container.name, problems)
    return Target(container=container, config=TargetConfig(**values), volumes=volumes)


def _keep(labels: Mapping[str, str], schedule: Schedule, default_keep: Keep, bad: Callable) -> Keep:
    """backup.keep over the sidecar's BACKUP_KEEP; it must keep something of the schedule's frequency."""
    keep = default_keep
    if KEEP in labels:
        try:
            keep = parse_keep(labels[KEEP], default_keep)
        except ValueError as exc:
            bad(KEEP, labels[KEEP], str(exc))
    if not keep.retains(schedule.frequency):
        bad(KEEP, labels.get(KEEP, str(keep)), f"keeps no archive of this {schedule.frequency} schedule; "
            "accepted: at least 1 for its frequency or a higher one")
    return keep


def _volumes(container: ContainerInfo, wanted: tuple[str, ...] | None, label_failed: bool, bad: Callable,
             problems: list[str]) -> tuple[VolumeSpec, ...]:
    """The mounts backup.volumes names (every named volume without it)."""
    if label_failed:  # already reported; an empty list selects nothing
        return ()
    try:
        return select_volumes(container, wanted)
    except ValueError as exc:
        if VOLUMES in container.labels:
            bad(VOLUMES, container.labels[VOLUMES], str(exc))
        else:
            problems.append(f"nothing to back up: {exc} with label {VOLUMES}")
        return ()


def label_backup_name(container: ContainerInfo) -> str:
    """The backup name of any container, labelled or not (restore into a container that is
    no target): its backup.name label checked as for a target, else the default name.
    Raises LabelError for a backup.name no target could have (`../../x`)."""
    raw = container.labels.get(NAME, "")
    if not raw.strip():
        return default_name(container)
    try:
        return _name(raw)
    except ValueError as exc:
        raise LabelError(container.name, [f"label {NAME}={raw!r} is invalid: {exc}"]) from None


def intended_name(container: ContainerInfo) -> str:
    """The backup name a container asks for, even when its labels are otherwise invalid."""
    return container.labels.get(NAME, "").strip() or default_name(container)


def default_name(container: ContainerInfo) -> str:
    """The compose service name, else a Swarm task's service name (inside its stack: a
    task container's own name changes with every task), else the container name, made
    safe for file names."""
    raw = container.compose_service or (container.swarm.short_service_name if container.swarm else container.name)
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", raw.lstrip("/")).strip("-._")
    return cleaned[:100] or container.short_id


def select_volumes(container: ContainerInfo, wanted: tuple[str, ...] | None) -> tuple[VolumeSpec, ...]:
    """Pick the mounts to back up and give each a short unique type name.

    Without a list: every named volume. With one: each entry must match a volume name
    (with or without the compose project prefix) or a mount destination; bind mounts
    are only included this way.
    """
    project = container.volume_prefix
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
            match = next((m for m in container.mounts if mount_matches(m, entry, project)), None)
            if match is None:
                raise ValueError(f"{entry!r} is not mounted in the container{_available(container)}")
            if match not in chosen:
                chosen.append(match)

    names = _unique_names(chosen, project)
    return tuple(VolumeSpec(volume_name=names[mount.destination], mount=mount) for mount in chosen)


def _unique_names(mounts: list[Mount], project: str | None) -> dict[str, str]:
    """Short names by mount destination. Suffixes (`-2`, ...) go by destination order:
    the engine lists `Mounts` in no fixed order (a Go map), and archive names must not
    swap between two runs."""
    names: dict[str, str] = {}
    used: set[str] = set()
    for mount in sorted(mounts, key=lambda m: m.destination):
        base = short_volume_name(mount, project)
        volume_name, n = base, 2
        while volume_name in used:
            volume_name, n = f"{base}-{n}", n + 1
        used.add(volume_name)
        names[mount.destination] = volume_name
    return names


def restore_volumes(container: ContainerInfo) -> tuple[VolumeSpec, ...]:
    """Every mount a restore may name, under the short name its backup gives it: the
    backup's own selection first (by backup.volumes when that label reads, else every
    named volume), then the container's other mounts, so `restore --volume NAME` finds
    the mount the archive NAME came from even when short names collide."""
    wanted = None
    if VOLUMES in container.labels:
        with contextlib.suppress(ValueError):
            wanted = _volume_list(container.labels[VOLUMES])
    try:
        selected = select_volumes(container, wanted)
    except ValueError:
        selected = ()
    every = select_volumes(container, tuple(m.destination for m in container.mounts)) if container.mounts else ()
    chosen = {spec.mount for spec in selected}
    return selected + tuple(spec for spec in every if spec.mount not in chosen)


def short_volume_name(mount: Mount, project: str | None) -> str:
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


def mount_matches(mount, entry: str, project: str | None) -> bool:
    """Whether `entry` names `mount`: its destination, its volume name, or the volume
    name without the Compose project prefix."""
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
