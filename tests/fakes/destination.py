"""A Destination kept in a dict, for the actions tier: verified like a real one (the
file must match its sha256; a download is checked against the object's sha256), can be
switched "down" (every call raises DestinationUnreachable) and counts its calls."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from sidecar.destinations import RemoteObject
from sidecar.core.errors import ChecksumMismatch, DestinationError, DestinationUnreachable


@dataclass
class _Stored:
    data: bytes
    sha256: str
    last_modified: datetime


class FakeDestination:
    def __init__(self, name: str = "s3"):
        self.name = name
        self.objects: dict[str, _Stored] = {}
        self.down = False
        self.calls: Counter[str] = Counter()

    # --- the Protocol -------------------------------------------------------------
    def upload(self, path: Path, relpath: str, sha256: str) -> RemoteObject:
        self._enter("upload")
        data = Path(path).read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ChecksumMismatch(f"{path}: does not match {sha256}; not uploading it")
        self.objects[relpath] = _Stored(data, sha256, datetime.now(timezone.utc))
        return self._object(relpath)

    def copy(self, src_relpath: str, dst_relpath: str) -> RemoteObject:
        self._enter("copy")
        if src_relpath not in self.objects:
            raise DestinationError(f"{self.describe(src_relpath)}: the source does not exist", destination=self.name)
        src = self.objects[src_relpath]
        self.objects[dst_relpath] = _Stored(src.data, src.sha256, datetime.now(timezone.utc))
        return self._object(dst_relpath)

    def list(self, under: str = "") -> list[RemoteObject]:
        self._enter("list")
        return [self._object(rel, with_sha=False) for rel in sorted(self.objects) if rel.startswith(under)]

    def head(self, relpath: str) -> RemoteObject | None:
        self._enter("head")
        return self._object(relpath) if relpath in self.objects else None

    def download(self, relpath: str, dest: Path, file_mode: int = 0o600) -> RemoteObject:
        self._enter("download")
        stored = self.objects.get(relpath)
        if stored is None:
            raise DestinationError(f"{self.describe(relpath)}: NoSuchKey", destination=self.name)
        if hashlib.sha256(stored.data).hexdigest() != stored.sha256:
            raise ChecksumMismatch(f"{self.describe(relpath)}: downloaded bytes do not match {stored.sha256}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(stored.data)
        os.chmod(dest, file_mode)
        return self._object(relpath)

    def delete(self, relpaths: Sequence[str]) -> None:
        self._enter("delete")
        for rel in relpaths:
            self.objects.pop(rel, None)

    def check(self) -> None:
        self._enter("check")

    def key(self, relpath: str) -> str:
        return f"fake/{relpath}"

    def describe(self, relpath: str = "") -> str:
        return f"fake://{self.name}/{relpath}"

    # --- helpers for tests ----------------------------------------------------------
    def put(self, relpath: str, data: bytes, sha256: str | None = None) -> None:
        """An object placed behind the sidecar's back (another host, a damaged copy)."""
        self.objects[relpath] = _Stored(data, sha256 or hashlib.sha256(data).hexdigest(), datetime.now(timezone.utc))

    def _enter(self, operation: str) -> None:
        self.calls[operation] += 1
        if self.down:
            raise DestinationUnreachable(f"{self.name} {operation} failed after 3 attempts: could not connect",
                                         destination=self.name, operation=operation)

    def _object(self, relpath: str, with_sha: bool = True) -> RemoteObject:
        stored = self.objects[relpath]
        return RemoteObject(relpath, self.key(relpath), len(stored.data), stored.last_modified,
                            stored.sha256 if with_sha else None)
