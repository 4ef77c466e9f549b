"""A staging mirror's archive as independent zstd frames (sidecar/worker/frames.py): the
decompressed archive is always the tar stream GNU tar makes of the tree now; frames of
unchanged segments are taken from the previous archive, checked, and only what changed is
compressed (issue 20's 1%-changed backup)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import zstandard

from sidecar.core.model import Compression
from sidecar.worker import frames as framesmod
from sidecar.worker.archive import ArchiveJob, run_archive, tar_command

pytestmark = pytest.mark.skipif(shutil.which("tar") is None or shutil.which("zstd") is None,
                                reason="GNU tar and zstd")


@pytest.fixture
def tree(tmp_path) -> Path:
    rng = random.Random(20)
    root = tmp_path / "tree"
    for folder in range(6):
        sub = root / f"dir{folder}"
        sub.mkdir(parents=True)
        for n in range(60):
            (sub / f"file{n:03}.bin").write_bytes(rng.randbytes(rng.randrange(1, 60_000)))
            (sub / f"text{n:03}.txt").write_text(" ".join(str(rng.random()) for _ in range(rng.randrange(10, 2000))))
    (root / "big.bin").write_bytes(rng.randbytes(40 << 20))  # cut inside, every SEGMENT_BIG
    os.symlink("dir0/file000.bin", root / "link")
    return root


def _tar_stream(root: Path) -> bytes:
    return subprocess.run(tar_command(root, False), capture_output=True, check=True).stdout


def _archive(root: Path, mirror: Path, folder: Path):
    """One framed archive into a new partial, then renamed to the dated name (as the sidecar
    publishes it); its index saved as the held worker saves it."""
    output = folder / "app_data_2026-12-08_daily.tar.zst.partial"
    output.touch(mode=0o600)
    outcome = run_archive(ArchiveJob(root, output, Compression.ZSTD, progress_interval=60, frames=mirror), [].append)
    framesmod.save_index(mirror, output, list(outcome.frames))
    final = folder / output.name.removesuffix(".partial")
    os.replace(output, final)
    return outcome, final


def _unzstd(path: Path) -> bytes:
    """By the zstd tool (every frame, as `zstd -d` and `tar --zstd` read it)."""
    return subprocess.run(["zstd", "-d", "-c", "-q", str(path)], capture_output=True, check=True).stdout


@pytest.fixture
def places(tmp_path) -> tuple[Path, Path]:
    mirror, folder = tmp_path / "mirror", tmp_path / "daily"
    mirror.mkdir()
    folder.mkdir()
    return mirror, folder


def test_the_framed_archive_is_the_tar_stream_and_an_unchanged_tree_reuses_every_frame(tree, places):
    mirror, folder = places
    first, final = _archive(tree, mirror, folder)
    assert len(first.frames) > 4 and first.reused == 0
    assert _unzstd(final) == _tar_stream(tree)
    with open(final, "rb") as raw:  # this project's readers: across frames
        assert zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True).read() == _tar_stream(tree)
    first_bytes = final.read_bytes()
    second, final = _archive(tree, mirror, folder)
    assert second.reused == len(second.frames) == len(first.frames)
    assert final.read_bytes() == first_bytes and second.sha256 == first.sha256


def test_a_change_compresses_only_the_frames_it_touches(tree, places):
    mirror, folder = places
    first, _ = _archive(tree, mirror, folder)
    (tree / "dir3" / "text010.txt").write_text("changed " * 1000)  # another size: later offsets move
    (tree / "dir5" / "new.bin").write_bytes(os.urandom(5000))
    with open(tree / "big.bin", "r+b") as f:  # the same size: one of its 16 MiB slices
        f.seek(20 << 20)
        f.write(os.urandom(100))
    second, final = _archive(tree, mirror, folder)
    assert _unzstd(final) == _tar_stream(tree)
    fresh = len(second.frames) - second.reused
    assert 1 <= fresh <= 6, (fresh, len(second.frames))
    assert second.reused >= len(first.frames) - 6


def test_a_damaged_frame_of_the_previous_archive_is_compressed_again(tree, places):
    mirror, folder = places
    first, final = _archive(tree, mirror, folder)
    frame = first.frames[len(first.frames) // 2]
    st = final.stat()
    with open(final, "r+b") as f:
        f.seek(frame.offset + frame.length // 2)
        byte = f.read(1)
        f.seek(frame.offset + frame.length // 2)
        f.write(bytes([byte[0] ^ 0x55]))
    os.utime(final, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, inode and mtime
    second, final = _archive(tree, mirror, folder)
    assert second.reused == len(first.frames) - 1
    assert _unzstd(final) == _tar_stream(tree)


def test_an_index_of_another_file_is_not_used(tree, places):
    mirror, folder = places
    first, final = _archive(tree, mirror, folder)
    final.write_bytes(final.read_bytes())  # the same bytes, another inode: not the file recorded
    assert framesmod.load_index(mirror) is None
    second, final = _archive(tree, mirror, folder)
    assert second.reused == 0 and _unzstd(final) == _tar_stream(tree)


def test_cuts_fall_on_member_starts_chosen_by_name_so_a_change_moves_no_other_cut():
    """The segmenting alone: the same members with one grown in the middle give the same cuts
    after it (offsets shifted by the growth)."""
    def cuts(sizes: list[int]) -> list[tuple[int, bytes]]:
        framer = framesmod.Framer(open(os.devnull, "wb"), None, threads=1)
        made: list[int] = []
        real = framer._segment
        framer._segment = lambda at: (made.append(at), real(at))  # type: ignore[method-assign]
        offset = 0
        names = []
        for n, size in enumerate(sizes):
            name = f"member{n:04}".encode()
            framer.member(name, offset)
            names.append((offset, name))
            framer.write(b"\0" * size)
            offset += size
        framer.close()
        by_offset = dict(names)
        return [(at, by_offset.get(at, b"")) for at in made]

    sizes = [300_000] * 200
    before = cuts(sizes)
    grown = list(sizes)
    grown[50] += 77_777
    after = cuts(grown)
    shift = 77_777
    tail_before = [(at + shift, name) for at, name in before if at > 51 * 300_000 + 2 * framesmod.SEGMENT_MIN]
    tail_after = [c for c in after if c[0] > 51 * 300_000 + shift + 2 * framesmod.SEGMENT_MIN]
    assert tail_before and tail_after == tail_before
    assert all(name and framesmod.is_cut(name) for _, name in before[:-1])
