"""Per-node folders on every destination: `NodeFolder` shows a destination as seen from
one node's folder (`{its own prefix}/{node}/daily/NAME`), so the nodes of a fleet share a
bucket or remote without meeting. One wrapper for every kind (S3, rclone, a mounted disk
and any kind added later): it only moves relpaths into the folder and back.

Relpaths on both sides of the wrapper stay "daily/NAME": the copy index, the sync and the
rotation work as on a single host, and see only the node's own folder (its listing is
the folder's). Keys (`RemoteObject.key`, `key()`, `describe()`) are the real names on the
destination, with the node's folder in them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable, Sequence

from ..core.naming import safe_node_name
from .base import Destination, RemoteObject


class NodeFolder:
    """`inner` under the folder `node`; `name` is the inner destination's (metrics,
    `--from`, the copy index)."""

    def __init__(self, inner: Destination, node: str):
        self.inner = inner
        self.node = safe_node_name(node, "node name")
        self._folder = f"{node}/"

    @property
    def name(self) -> str:
        return self.inner.name

    def upload(self, path: Path, relpath: str, sha256: str) -> RemoteObject:
        return self._out(self.inner.upload(path, self._in(relpath), sha256))

    def copy(self, src_relpath: str, dst_relpath: str) -> RemoteObject:
        return self._out(self.inner.copy(self._in(src_relpath), self._in(dst_relpath)))

    def list(self, under: str = "") -> list[RemoteObject]:
        return [self._out(o) for o in self.inner.list(self._in(under)) if o.relpath.startswith(self._folder)]

    def head(self, relpath: str) -> RemoteObject | None:
        found = self.inner.head(self._in(relpath))
        return self._out(found) if found is not None else None

    def download(self, relpath: str, dest: Path, file_mode: int = 0o600) -> RemoteObject:
        return self._out(self.inner.download(self._in(relpath), dest, file_mode))

    def delete(self, relpaths: Sequence[str]) -> None:
        self.inner.delete([self._in(r) for r in relpaths])

    def check(self) -> None:
        self.inner.check()

    def key(self, relpath: str) -> str:
        return self.inner.key(self._in(relpath))

    def describe(self, relpath: str = "") -> str:
        return self.inner.describe(self._in(relpath)) if relpath else self.inner.describe() + self._folder

    def _in(self, relpath: str) -> str:
        return self._folder + relpath.lstrip("/")

    def _out(self, obj: RemoteObject) -> RemoteObject:
        return dataclasses.replace(obj, relpath=obj.relpath.removeprefix(self._folder))


def bare(destination: Destination) -> Destination:
    """The destination itself, without a node's folder."""
    return destination.inner if isinstance(destination, NodeFolder) else destination


def on_node(destination: Destination, node: str | None) -> Destination:
    """`destination` as seen from `node`'s folder (None: the destination's root, the
    single-host layout)."""
    return bare(destination) if node is None else NodeFolder(bare(destination), node)


def all_on_node(destinations: Iterable[Destination], node: str | None) -> tuple[Destination, ...]:
    return tuple(on_node(d, node) for d in destinations)
