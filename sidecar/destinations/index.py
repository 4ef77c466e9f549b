"""The copy index of each destination: which off-site copies this sidecar made and
verified, kept on the backup volume so `plan`, `list` and the metrics show the 3-2-1
state without asking the store, and a sync skips what it already checked.

One JSON document per destination in `.sidecar/`: `remote.json` for "s3" (the name it
had before destinations existed, so an upgrade does not verify every copy again),
`remote-NAME.json` for any other; `remote-NAME@NODE.json` for the destination's folder of
a node (BACKUP_NODE_PREFIX), so turning the prefix on or off starts from an index of the
folder actually used (copies found there are verified again, the rest uploaded).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..core.naming import safe_component
from ..store.state import JsonState


@dataclass(frozen=True)
class CopyEntry:
    """One off-site copy, verified (the store's checksum and a head after the upload or
    copy) at `verified_at`."""

    relpath: str  # on the destination (may end in .age when only the off-site copy is encrypted)
    local_relpath: str
    sha256: str  # of the object's bytes
    local_sha256: str  # of the local archive it was made from
    size: int
    verified_at: float


def index_path(state_dir: Path, destination: str, node: str | None = None) -> Path:
    """The index file of a destination, or of a node's folder on it (names become part of
    a file name: checked)."""
    safe_component(destination, "destination name")
    if node is not None:
        # A name as long as DNS allows would not fit in a file name: its digest stands in.
        folder = safe_component(node, "node name") if len(node) <= 64 else hashlib.sha256(node.encode()).hexdigest()
        return state_dir / f"remote-{destination}@{folder}.json"
    return state_dir / ("remote.json" if destination == "s3" else f"remote-{destination}.json")


class CopyIndex:
    def __init__(self, state_dir: Path, destination: str, node: str | None = None):
        """`node`: the index of that node's folder on the destination (None: its root)."""
        self.destination = destination
        self._state = JsonState(index_path(state_dir, destination, node), f"copy index of {destination}")

    def entries(self) -> dict[str, CopyEntry]:
        """Copies by their relpath on the destination."""
        return _parse(self._state.read())

    def by_local(self) -> dict[str, CopyEntry]:
        """Copies by the relpath of the local archive they were made from."""
        return {e.local_relpath: e for e in self.entries().values()}

    def record(self, entry: CopyEntry) -> None:
        with self._state.update() as data:
            copies = _parse(data)
            copies[entry.relpath] = entry
            _store(data, copies)

    def forget(self, relpaths: Iterable[str]) -> None:
        gone = set(relpaths)
        with self._state.update() as data:
            copies = _parse(data)
            if gone & copies.keys():
                _store(data, {k: v for k, v in copies.items() if k not in gone})


def _parse(data: dict) -> dict[str, CopyEntry]:
    fields = {f.name for f in dataclasses.fields(CopyEntry)}
    found = {}
    for item in data.get("copies", []) or []:
        if isinstance(item, dict) and fields <= item.keys():
            found[item["relpath"]] = CopyEntry(**{k: item[k] for k in fields})
    return found


def _store(data: dict, copies: dict[str, CopyEntry]) -> None:
    data["copies"] = [dataclasses.asdict(e) for e in sorted(copies.values(), key=lambda e: e.relpath)]
