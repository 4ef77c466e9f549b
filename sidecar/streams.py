"""Small stream adapters shared by the engine and archive layers."""

from __future__ import annotations

from typing import Iterable


class IterReader:
    """A minimal read-only file over an iterator of byte chunks, for tarfile's stream mode.

    Keeps the current chunk and an offset into it, so many small reads (tar headers)
    never copy the rest of a large chunk."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._chunk = b""
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        parts: list[bytes] = []
        wanted = size
        while wanted != 0:
            if self._pos >= len(self._chunk):
                try:
                    self._chunk, self._pos = next(self._chunks), 0
                except StopIteration:
                    break
                continue
            end = len(self._chunk) if wanted < 0 else min(len(self._chunk), self._pos + wanted)
            parts.append(self._chunk[self._pos:end])
            if wanted > 0:
                wanted -= end - self._pos
            self._pos = end
        return b"".join(parts)
