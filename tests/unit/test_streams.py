"""streams.py: IterReader, a file over an iterator of byte chunks."""

from __future__ import annotations

import io
import tarfile

import pytest

from sidecar.tarball.streams import IterReader

DATA = bytes(range(256)) * 3  # 768 bytes, every position distinguishable


def split(data: bytes, sizes: list[int]) -> list[bytes]:
    """Cut `data` into chunks of the given sizes, repeating the pattern; 0 makes an empty chunk."""
    chunks, pos, i = [], 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        chunks.append(data[pos:pos + size])
        pos += size
        i += 1
    return chunks


CHUNKINGS = {
    "one-chunk": [len(DATA)],
    "bytes": [1],
    "sevens": [7],
    "tar-blocks": [512],
    "uneven": [1, 100, 3, 511, 2],
    "with-empties": [0, 5, 0, 0, 64, 0],
}
READS = {
    "by-1": [1],
    "by-3": [3],
    "by-512": [512],
    "by-1000": [1000],
    "mixed": [1, 2, 250, 0, 7, 1024],
}


@pytest.mark.parametrize("sizes", CHUNKINGS.values(), ids=CHUNKINGS.keys())
@pytest.mark.parametrize("reads", READS.values(), ids=READS.keys())
def test_reads_across_chunk_boundaries(sizes, reads):
    chunks = split(DATA, sizes)
    assert b"".join(chunks) == DATA
    reader = IterReader(chunks)
    got, pos, i = [], 0, 0
    while pos < len(DATA):
        size = reads[i % len(reads)]
        i += 1
        part = reader.read(size)
        # A read returns exactly what was asked for until the data runs out.
        assert part == DATA[pos:pos + size]
        got.append(part)
        pos += len(part)
    assert b"".join(got) == DATA
    assert reader.read(10) == b""
    assert reader.read() == b""


@pytest.mark.parametrize("sizes", CHUNKINGS.values(), ids=CHUNKINGS.keys())
@pytest.mark.parametrize("first", [0, 1, 5, 511, 768, 900])
def test_read_all_returns_the_rest(sizes, first):
    reader = IterReader(split(DATA, sizes))
    head = reader.read(first)
    assert head == DATA[:first]
    assert reader.read(-1) == DATA[first:]
    assert reader.read(-1) == b""


@pytest.mark.parametrize("chunks", [[], [b""], [b"", b"", b""]], ids=["none", "one-empty", "only-empties"])
@pytest.mark.parametrize("size", [-1, 0, 1, 100])
def test_empty_sources(chunks, size):
    assert IterReader(chunks).read(size) == b""


def test_read_zero_consumes_nothing():
    reader = IterReader([b"abc", b"def"])
    assert reader.read(0) == b""
    assert reader.read(2) == b"ab"
    assert reader.read(0) == b""
    assert reader.read() == b"cdef"


def test_chunks_are_pulled_only_when_needed():
    pulled = []

    def source():
        for i, chunk in enumerate([b"aaaa", b"bbbb", b"cccc"]):
            pulled.append(i)
            yield chunk

    reader = IterReader(source())
    assert pulled == []
    assert reader.read(2) == b"aa"
    assert pulled == [0]
    assert reader.read(2) == b"aa"
    assert pulled == [0]
    assert reader.read(3) == b"bbb"
    assert pulled == [0, 1]


def test_tarfile_stream_mode_reads_through_it():
    buf = io.BytesIO()
    files = {f"dir/file{i}": bytes([i]) * (i * 700) for i in range(6)}
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    got = {}
    with tarfile.open(fileobj=IterReader(split(raw, [333, 0, 1, 4096])), mode="r|") as tar:
        for member in tar:
            got[member.name] = tar.extractfile(member).read()
    assert got == files
