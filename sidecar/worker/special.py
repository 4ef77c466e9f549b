"""Set-id bits and devices as data: the tar headers of a staging mirror's archive patched
from the mirror's special.json (sidecar/mirror/worker.py).

The mirror keeps no set-id file and no device node on disk: a set-id file's copy has those
bits cleared, a device's copy is an empty regular file. GNU tar archives those copies as
they are; this filter, between tar and the compressor, gives their members the source's
mode (set-id bits included) and, for a device, its type and major/minor numbers, so the
archive of the mirror is the archive of a plain read. Only headers are parsed (ustar
fields, PAX records for the name and size, read by the checked extractor's own field and
record parsers); member data passes through untouched, and
a mirror without such entries is not filtered at all.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import BinaryIO, Callable

from ..core.errors import ArchiveError
from ..tarball.extract import header_number, pax_records

BLOCK = 512
READ_SIZE = 1 << 20
_MAX_OCTAL_7 = 0o7777777  # what a 7-digit ustar field holds


def load_special(path: Path) -> dict[bytes, tuple[int, int]]:
    """The member names (bytes, as tar writes them without `./`) -> (mode, rdev)."""
    rows = json.loads(path.read_text())
    return {os.fsencode(name): (int(mode), int(rdev)) for name, (mode, rdev) in rows.items()}


def _field(value: int, what: str, name: bytes) -> bytes:
    if value > _MAX_OCTAL_7:
        raise ArchiveError(f"{what} {value} of {os.fsdecode(name)!r} does not fit a tar header")
    return b"%07o\0" % value


class HeaderPatcher:
    """Feed it the tar stream in chunks; it returns the same stream with the headers of
    the special members patched. `on_member(name, offset)`: each member's name and where it
    starts in the stream (its PAX header's first byte when it has one), as its header passes."""

    def __init__(self, special: dict[bytes, tuple[int, int]],
                 on_member: Callable[[bytes, int], None] | None = None):
        self.special = special
        self.patched = 0
        self.offset = 0  # bytes returned so far
        self._on_member = on_member
        self._group: int | None = None  # where the current member's PAX header started
        self._head = bytearray()
        self._skip = 0  # bytes of the current member's data (padded) still to pass
        self._collect: bytearray | None = None  # a PAX header's records, while they pass
        self._collect_size = 0
        self._pax: dict[str, bytes] = {}
        self._ended = False

    def feed(self, chunk: bytes) -> list[bytes | memoryview]:
        out: list[bytes | memoryview] = []
        view = memoryview(chunk)
        while view:
            if self._ended:
                out.append(view)
                self.offset += len(view)
                break
            if self._skip:
                part = view[:self._skip]
                out.append(part)
                self.offset += len(part)
                self._skip -= len(part)
                view = view[len(part):]
                if self._collect is not None:
                    self._collect += part
                    if not self._skip:
                        self._pax = pax_records(bytes(self._collect[:self._collect_size]))
                        self._collect = None
                continue
            need = BLOCK - len(self._head)
            self._head += view[:need]
            view = view[need:]
            if len(self._head) == BLOCK:
                out.append(self._header(bytes(self._head)))
                self.offset += BLOCK
                self._head = bytearray()
        return out

    def _header(self, h: bytes) -> bytes:
        if not h.strip(b"\0"):
            self._ended = True  # the end-of-archive blocks: nothing after them is a header
            return h
        kind = h[156:157]
        size = (int(self._pax["size"]) if "size" in self._pax and kind not in (b"x", b"g")
                else header_number(h[124:136], "size"))
        self._skip = -(-size // BLOCK) * BLOCK
        if kind in (b"x", b"g"):
            if self._group is None:
                self._group = self.offset
            if kind == b"x":
                self._collect, self._collect_size = bytearray(), size
            if not self._skip and kind == b"x":
                self._pax, self._collect = {}, None
            return h
        name = self._pax.get("GNU.sparse.name") or self._pax.get("path") or self._ustar_name(h)
        self._pax = {}
        if self._on_member is not None:
            self._on_member(name, self._group if self._group is not None else self.offset)
        self._group = None
        if name.startswith(b"./"):
            name = name[2:]
        wanted = self.special.get(name.rstrip(b"/"))
        return h if wanted is None else self._patch(h, kind, name, *wanted)

    @staticmethod
    def _ustar_name(h: bytes) -> bytes:
        name = h[0:100].split(b"\0", 1)[0]
        prefix = h[345:500].split(b"\0", 1)[0]
        return prefix + b"/" + name if prefix else name

    def _patch(self, h: bytes, kind: bytes, name: bytes, mode: int, rdev: int) -> bytes:
        out = bytearray(h)
        out[100:108] = _field(stat.S_IMODE(mode), "mode", name)
        if kind in (b"0", b"\0", b"7") and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
            out[156:157] = b"3" if stat.S_ISCHR(mode) else b"4"
            out[329:337] = _field(os.major(rdev), "device major", name)
            out[337:345] = _field(os.minor(rdev), "device minor", name)
        out[148:156] = b" " * 8
        out[148:156] = b"%06o\0 " % sum(out)
        self.patched += 1
        return bytes(out)


def patch_stream(source: BinaryIO, sink: BinaryIO, special: dict[bytes, tuple[int, int]]) -> int:
    """Copy `source` to `sink` (a tar stream), special members patched; returns their count.
    Closes `sink` at the end (the compressor reading it then sees the end)."""
    patcher = HeaderPatcher(special)
    try:
        while chunk := source.read(READ_SIZE):
            for part in patcher.feed(chunk):
                sink.write(part)
    finally:
        sink.close()
    return patcher.patched
