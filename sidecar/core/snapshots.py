"""restic snapshots in the seed's vocabulary (BACKUP_FORMAT=restic). Pure: no restic, no
clock; the adapter (sidecar/store/restic.py) runs restic and hands its `--json` output here.

A snapshot is one volume or one dump of one target from one run. Its tags say whose it is:

    backup-sidecar   every snapshot the sidecar made (a repository may hold others)
    target=NAME      the target's backup name (the `{service}` of archive names)
    item=TYPE        the volume's short name or the preset's `{preset}+dump` (the `{type}`)
    frequency=FREQ   the target's schedule frequency when it was taken

and its host is the node's name. `snapshot_names` gives each snapshot the name an archive
of the same run would have had, `{service}_{type}_{YYYY-MM-DD}[THHMMSS][-N]_{frequency}`
without the extension, so `list`, `plan` and `restore --snapshot` speak one language.
`forget_args` turns backup.keep / BACKUP_KEEP into restic's `forget --keep-*` options.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Iterable, Mapping

from .errors import ArchiveError
from .naming import ArchiveName, safe_component
from .retention import Keep
from .schedule import Frequency

OWN_TAG = "backup-sidecar"
TARGET_TAG = "target="
ITEM_TAG = "item="
FREQUENCY_TAG = "frequency="
# Where a worker sees the volume it backs up: every volume snapshot has this one path, so
# a restore into a volume mounted at RESTORE_ROOT + VOLUME_PATH writes nowhere else.
VOLUME_PATH = "/volume"
RESTORE_ROOT = "/restore"


def tags(backup_name: str, item: str, frequency: Frequency) -> tuple[str, ...]:
    """The tags of a new snapshot (restic separates tags by commas: none may hold one)."""
    safe_component(backup_name, "backup name")
    safe_component(item, "item")
    found = (OWN_TAG, TARGET_TAG + backup_name, ITEM_TAG + item, FREQUENCY_TAG + frequency.value)
    if any("," in t for t in found):
        raise ArchiveError(f"a snapshot tag cannot hold ',': {', '.join(found)}")
    return found


def selector(backup_name: str, item: str | None = None) -> str:
    """A `--tag` value matching a target's snapshots (of one item when given)."""
    parts = [OWN_TAG, TARGET_TAG + backup_name] + ([ITEM_TAG + item] if item is not None else [])
    return ",".join(parts)


@dataclass(frozen=True)
class Snapshot:
    """One snapshot as `restic snapshots --json` describes it."""

    id: str
    short_id: str
    time: datetime  # aware
    host: str
    paths: tuple[str, ...]
    tags: tuple[str, ...]

    def _tag(self, prefix: str) -> str | None:
        return next((t[len(prefix):] for t in self.tags if t.startswith(prefix)), None)

    @property
    def ours(self) -> bool:
        return OWN_TAG in self.tags and self.backup_name is not None and self.item is not None

    @property
    def backup_name(self) -> str | None:
        return self._tag(TARGET_TAG)

    @property
    def item(self) -> str | None:
        return self._tag(ITEM_TAG)

    @property
    def frequency(self) -> Frequency:
        value = self._tag(FREQUENCY_TAG)
        try:
            return Frequency(value)
        except ValueError:
            return Frequency.DAILY


@dataclass(frozen=True)
class BackupSummary:
    """The last line of `restic backup --json` (message_type "summary")."""

    snapshot_id: str
    files_new: int
    files_changed: int
    files_unmodified: int
    data_added: int  # bytes added to the repository (after deduplication, before compression)
    total_bytes_processed: int  # bytes read
    seconds: float


def parse_snapshots(text: str) -> list[Snapshot]:
    """`restic snapshots --json`, oldest first. Raises ArchiveError on anything else."""
    try:
        records = json.loads(text or "[]")
    except ValueError as exc:
        raise ArchiveError(f"restic snapshots printed no JSON list: {text[:200]!r}") from exc
    if not isinstance(records, list):
        raise ArchiveError(f"restic snapshots printed {type(records).__name__}, expected a list")
    found = [_snapshot(r) for r in records if isinstance(r, dict)]
    return sorted(found, key=lambda s: s.time)


@dataclass(frozen=True)
class Forgotten:
    """What one `restic forget --json` kept and removed (or would, with --dry-run)."""

    kept: tuple[Snapshot, ...]
    removed: tuple[Snapshot, ...]


def parse_forget(text: str) -> Forgotten:
    """`restic forget --json`: a list of groups, each with its `keep` and `remove` lists of
    snapshot records (printed on the first line). Raises ArchiveError on anything else."""
    first = text.strip().splitlines()[0] if text.strip() else "[]"
    try:
        groups = json.loads(first)
    except ValueError as exc:
        raise ArchiveError(f"restic forget printed no JSON list: {first[:200]!r}") from exc
    if not isinstance(groups, list):
        raise ArchiveError(f"restic forget printed {type(groups).__name__}, expected a list")
    kept: list[Snapshot] = []
    removed: list[Snapshot] = []
    for group in groups:
        if isinstance(group, dict):
            kept += [_snapshot(r) for r in group.get("keep") or () if isinstance(r, dict)]
            removed += [_snapshot(r) for r in group.get("remove") or () if isinstance(r, dict)]
    return Forgotten(tuple(sorted(kept, key=lambda s: s.time)), tuple(sorted(removed, key=lambda s: s.time)))


def _snapshot(record: Mapping) -> Snapshot:
    try:
        return Snapshot(str(record["id"]), str(record.get("short_id") or str(record["id"])[:8]),
                        parse_time(str(record["time"])), str(record.get("hostname") or ""),
                        tuple(record.get("paths") or ()), tuple(record.get("tags") or ()))
    except (KeyError, ValueError) as exc:
        raise ArchiveError(f"restic snapshots: unreadable record {dict(record)!r} ({exc})") from exc


_FRACTION = re.compile(r"\.(\d+)")


def parse_time(text: str) -> datetime:
    """restic's RFC 3339 times carry nanoseconds and `Z` or an offset; Python reads micro."""
    text = _FRACTION.sub(lambda m: "." + m[1][:6].ljust(6, "0"), text.strip(), count=1)
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def parse_backup_line(line: str) -> dict | None:
    """One line of `restic backup --json`, None when it is not a JSON object."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def summary_of(record: Mapping) -> BackupSummary | None:
    """The summary record of `restic backup --json`; None for any other line."""
    if record.get("message_type") != "summary":
        return None
    return BackupSummary(str(record.get("snapshot_id") or ""), int(record.get("files_new") or 0),
                         int(record.get("files_changed") or 0), int(record.get("files_unmodified") or 0),
                         int(record.get("data_added") or 0), int(record.get("total_bytes_processed") or 0),
                         float(record.get("total_duration") or 0.0))


def snapshot_names(snapshots: Iterable[Snapshot], tz: tzinfo) -> dict[str, str]:
    """Each of our snapshots' id -> its name in the seed's vocabulary. The second snapshot
    of a (target, item) on one day gets the time, one in the same second a sequence number,
    as choose_name does for archives."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for snap in sorted((s for s in snapshots if s.ours), key=lambda s: s.time):
        when = snap.time.astimezone(tz).replace(tzinfo=None, microsecond=0)
        candidate = ArchiveName(when, snap.backup_name, snap.item, snap.frequency, "")
        seq = 1
        while candidate.filename in taken:
            candidate = ArchiveName(when, snap.backup_name, snap.item, snap.frequency, "", has_time=True,
                                    seq=0 if seq == 1 else seq)
            seq += 1
        taken.add(candidate.filename)
        names[snap.id] = candidate.filename
    return names


def choose_snapshot(snapshots: list[Snapshot], wanted: str, names: Mapping[str, str]) -> Snapshot:
    """`latest`, a snapshot's (short) id or its name, among `snapshots` (one target's item)."""
    if not snapshots:
        raise ArchiveError("no snapshot to choose from")
    if wanted == "latest":
        return max(snapshots, key=lambda s: s.time)
    for snap in snapshots:
        if wanted in (snap.id, snap.short_id, names.get(snap.id)) or (len(wanted) >= 8 and snap.id.startswith(wanted)):
            return snap
    shown = ", ".join(f"{s.short_id} ({names.get(s.id, '-')})" for s in snapshots[-5:])
    raise ArchiveError(f"no snapshot {wanted!r}; expected latest, an id or a name, e.g. {shown}")


def forget_args(keep: Keep) -> tuple[str, ...]:
    """backup.keep as `restic forget` options: one `--keep-FREQ N` per frequency kept, and
    `--keep-last 1` so the newest snapshot is never forgotten (as rotation never deletes a
    target's newest archive). Periods are restic's (calendar hours, days, ISO weeks, months)."""
    args: list[str] = []
    for freq in Frequency:
        count = keep.of(freq)
        if count > 0:
            args += [f"--keep-{freq.value}", str(count)]
    return (*args, "--keep-last", "1")


def restore_include(path: str | None) -> str | None:
    """`restore --path PATH` (relative to the volume) as restic's `--include`; refuses what
    would name something outside the volume. None: the whole volume."""
    if path is None:
        return None
    parts = [p for p in path.strip().split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts) or "\0" in path:
        raise ArchiveError(f"--path {path[:300]!r} does not name a file or folder inside the volume; expected a "
                           "path relative to the volume's root, without '..' (e.g. config/app.ini)")
    return VOLUME_PATH + "/" + "/".join(parts)
