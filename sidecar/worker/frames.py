"""A staging mirror's archive as independent zstd frames, so a steady-state backup compresses
only what changed (issue 20: a 1%-changed volume's backup near `tar | zstd`, not a whole
compression of the volume each time).

The tar stream (GNU tar over the mirror, exactly as the plain path makes it) is cut into
segments at member starts chosen by the member's name (a cut where crc32(name) has its low
bits 0, once the segment holds SEGMENT_MIN bytes; a member larger than SEGMENT_BIG is cut
every SEGMENT_BIG bytes from its start), so a change moves no cut elsewhere. Each segment is
one zstd frame; a zstd file of several frames is one stream for `zstd -d`, `tar --zstd` and
this project's readers (read_across_frames). The frames' index (`frames.json` in the
mirror's folder) keeps, per frame, the SHA-256 of its tar bytes and of its compressed bytes
and where it lies in the archive it was written to.

The next archive of the mirror looks each segment's SHA-256 up in that index: found, the
compressed frame is read from the previous archive (still the file recorded: same path,
inode, size and mtime) and its own SHA-256 checked before it is written; else the segment
is compressed. So the archive's tar stream is always the one tar makes of the mirror now;
only the compression of an identical segment is taken from before. Not used with age
encryption (the frames of an encrypted archive cannot be read back without its identity)
or another compression than zstd.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import zstandard

from ..mirror.worker import FRAMES, write_durably
from ..tarball.archive import ZSTD_LEVEL
from .reuse import final_of

INDEX_VERSION = 1
LEVEL = ZSTD_LEVEL  # the plain path's level (zstd -3)
SEGMENT_MIN = 4 << 20
SEGMENT_BIG = 16 << 20  # a cut at least this often, also inside a large member
CUT_MASK = 0x3  # a cut before one member name in four, once SEGMENT_MIN is reached (1 MiB: 2.5% larger archives; 4 MiB: none measured)
IN_FLIGHT = 4  # segments being hashed and compressed at once (memory: IN_FLIGHT x SEGMENT_BIG)


@dataclass(frozen=True)
class Frame:
    key: str  # SHA-256 of the segment's tar bytes
    offset: int  # in the archive file
    length: int
    sha256: str  # of the compressed frame


@dataclass
class FrameIndex:
    path: str
    ino: int
    size: int
    mtime_ns: int
    frames: dict[str, Frame] = field(default_factory=dict)


def load_index(mirror: Path) -> FrameIndex | None:
    """The previous archive's frames, when that archive is still the file they were read from."""
    try:
        doc = json.loads((mirror / FRAMES).read_text())
        if doc.get("version") != INDEX_VERSION or doc.get("level") != LEVEL:
            return None
        index = FrameIndex(str(doc["path"]), int(doc["ino"]), int(doc["size"]), int(doc["mtime_ns"]),
                           {row[0]: Frame(str(row[0]), int(row[1]), int(row[2]), str(row[3])) for row in doc["frames"]})
        st = os.stat(index.path, follow_symlinks=False)
    except (OSError, ValueError, TypeError, KeyError, IndexError):
        return None
    if (st.st_ino, st.st_size, st.st_mtime_ns) != (index.ino, index.size, index.mtime_ns):
        return None
    return index


def save_index(mirror: Path, output: Path, frames: list[Frame]) -> None:
    st = os.stat(output)
    doc = {"version": INDEX_VERSION, "level": LEVEL, "path": str(final_of(output)), "ino": st.st_ino,
           "size": st.st_size, "mtime_ns": st.st_mtime_ns,
           "frames": [[f.key, f.offset, f.length, f.sha256] for f in frames]}
    write_durably(mirror / FRAMES, json.dumps(doc, separators=(",", ":")))


def forget_index(mirror: Path) -> None:
    (mirror / FRAMES).unlink(missing_ok=True)


def is_cut(name: bytes) -> bool:
    return zlib.crc32(name) & CUT_MASK == 0


class Framer:
    """Takes the tar stream (`write`) and the members' starts (`member`, from HeaderPatcher),
    writes frames to `out` in order; `close` returns the frames written."""

    def __init__(self, out: BinaryIO, previous: FrameIndex | None, threads: int = 2):
        self._out = out
        self._previous = previous
        self._prev_fd = os.open(previous.path, os.O_RDONLY | os.O_CLOEXEC) if previous is not None else None
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="frame")
        self._pending: deque[Future] = deque()
        self._chunks: list[bytes] = []
        self._start = 0  # the current segment's first byte in the tar stream
        self._end = 0  # bytes of the tar stream taken so far
        self._cuts: deque[tuple[int, bytes]] = deque()  # member starts not yet passed
        self._last_cut = 0
        self.frames: list[Frame] = []
        self.written = 0
        self.reused = self.reused_bytes = 0

    def member(self, name: bytes, offset: int) -> None:
        self._cuts.append((offset, name))

    def write(self, data) -> None:
        self._chunks.append(data)  # bytes or a memoryview of a chunk read from tar (not copied)
        self._end += len(data)
        while self._cuts and self._cuts[0][0] <= self._end:
            offset, name = self._cuts.popleft()
            self._last_cut = offset
            if offset - self._start >= SEGMENT_MIN and is_cut(name):
                self._segment(offset)
        # inside a large member: every SEGMENT_BIG bytes from its start (or the last cut)
        while self._end - self._start >= SEGMENT_BIG and not self._cuts:
            at = max(self._start, self._last_cut) + SEGMENT_BIG
            if at > self._end:
                break
            self._segment(at)
            self._last_cut = at

    def close(self) -> list[Frame]:
        try:
            if self._end > self._start:
                self._segment(self._end)
            while self._pending:
                self._drain_one()
        finally:
            self.abort()
        return self.frames

    def abort(self) -> None:
        """The pool and the previous archive let go (also after `close`: once only)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._prev_fd is not None:
            os.close(self._prev_fd)
            self._prev_fd = None

    def _segment(self, at: int) -> None:
        """The bytes [start, at) become one frame (hashed and compressed in the pool)."""
        data = memoryview(b"".join(self._chunks))
        size = at - self._start
        segment, rest = data[:size], data[size:]
        self._chunks = [rest] if len(rest) else []
        self._start = at
        while len(self._pending) >= IN_FLIGHT:
            self._drain_one()
        self._pending.append(self._pool.submit(self._frame, segment))

    def _frame(self, segment: memoryview) -> tuple[str, bytes, str, bool]:
        key = hashlib.sha256(segment).hexdigest()
        found = self._previous.frames.get(key) if self._previous is not None else None
        if found is not None and self._prev_fd is not None:
            data = os.pread(self._prev_fd, found.length, found.offset)
            if len(data) == found.length and hashlib.sha256(data).hexdigest() == found.sha256:
                return key, data, found.sha256, True
        data = zstandard.ZstdCompressor(level=LEVEL).compress(segment)
        return key, data, hashlib.sha256(data).hexdigest(), False

    def _drain_one(self) -> None:
        key, data, sha, reused = self._pending.popleft().result()
        self._out.write(data)
        self.frames.append(Frame(key, self.written, len(data), sha))
        self.written += len(data)
        if reused:
            self.reused += 1
            self.reused_bytes += len(data)
