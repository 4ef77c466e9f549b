"""Small stream adapters shared by the engine, archive and crypto layers."""

from __future__ import annotations

from typing import Iterable


class ChunkedReader:
    """A read-only file whose data comes in chunks from `_next_chunk(wanted)`; a
    subclass sets `self._at_end` once no chunk will follow.

    Keeps the current chunk and an offset into it, so many small reads (tar headers)
    never copy the rest of a large chunk."""

    def __init__(self) -> None:
        self._chunk = b""
        self._pos = 0
        self._at_end = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        parts: list[bytes] = []
        wanted = size
        while wanted != 0:
            if self._pos >= len(self._chunk):
                if self._at_end:
                    break
                self._chunk, self._pos = self._next_chunk(wanted), 0
                continue
            end = len(self._chunk) if wanted < 0 else min(len(self._chunk), self._pos + wanted)
            parts.append(self._chunk[self._pos:end])
            if wanted > 0:
                wanted -= end - self._pos
            self._pos = end
        return b"".join(parts)

    def _next_chunk(self, wanted: int) -> bytes:
        raise NotImplementedError


class IterReader(ChunkedReader):
    """A file over an iterator of byte chunks, for tarfile's stream mode."""

    def __init__(self, chunks: Iterable[bytes]):
        super().__init__()
        self._chunks = iter(chunks)

    def _next_chunk(self, wanted: int) -> bytes:
        try:
            return next(self._chunks)
        except StopIteration:
            self._at_end = True
            return b""
