"""Small stream adapters shared by the engine, archive and crypto layers."""

from __future__ import annotations

import threading
from typing import Callable, Iterable


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

class Heartbeat:
    """A progress event every `interval` seconds while a worker writes a stream, also while
    tar is slow (the sidecar checks for cancellation on each line it reads); the archive and
    mirror workers share it."""

    def __init__(self, interval: float, done: Callable[[], int], emit: Callable[[dict], None]):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval, done, emit), daemon=True)
        self._thread.start()

    def _run(self, interval: float, done: Callable[[], int], emit: Callable[[dict], None]) -> None:
        while not self._stop.wait(interval):
            emit({"event": "progress", "tar_bytes": done()})

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
