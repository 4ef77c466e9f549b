"""The Destination seam: what every off-site destination (S3, rclone remotes, a second
local disk) offers the actions, and the typed object it holds.

A destination stores files at relative paths mirroring the backup volume ("daily/NAME",
"images/NAME"). Each object carries the SHA-256 of its bytes (S3: the user metadata
"sha256"), so uploads and downloads are verified end to end whatever the backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable


@dataclass(frozen=True)
class RemoteObject:
    """One object a destination holds."""

    relpath: str  # relative to the destination's root, e.g. "daily/NAME"
    key: str  # its name on the destination (S3 key with the prefix), for logs and `list --remote`
    size: int
    last_modified: datetime
    sha256: str | None  # of its bytes; None when absent or not fetched (listings)


@runtime_checkable
class Destination(Protocol):
    """An off-site copy target. Every method raises DestinationError (its subclass
    DestinationUnreachable when the store does not answer) or ChecksumMismatch."""

    @property
    def name(self) -> str:
        """"s3" today; the `destination` metric label, `--from NAME`, `list --remote NAME`."""
        ...

    def upload(self, path: Path, relpath: str, sha256: str) -> RemoteObject:
        """Send a finished file and return the object once the destination's copy is
        verified against `sha256` (ChecksumMismatch when the file itself does not match)."""
        ...

    def copy(self, src_relpath: str, dst_relpath: str) -> RemoteObject:
        """Server-side copy (promotions: no second upload), verified."""
        ...

    def list(self, under: str = "") -> list[RemoteObject]:
        """Objects whose relpath starts with `under`; sha256 may be None."""
        ...

    def head(self, relpath: str) -> RemoteObject | None:
        """The object with its sha256, or None when it does not exist."""
        ...

    def download(self, relpath: str, dest: Path, file_mode: int = 0o600) -> RemoteObject:
        """Fetch to `dest` (through a partial file); it appears only when its bytes match
        the object's sha256."""
        ...

    def delete(self, relpaths: Sequence[str]) -> None:
        """Delete objects; missing ones count as deleted."""
        ...

    def check(self) -> None:
        """The destination is reachable and usable with this configuration."""
        ...

    def key(self, relpath: str) -> str:
        """The object's name on the destination (e.g. the S3 key under the prefix)."""
        ...

    def describe(self, relpath: str = "") -> str:
        """A location for logs and messages (e.g. s3://bucket/prefix/daily/NAME), no secrets."""
        ...
