"""Issue 19's ten defects of the restore boundary, one test (or a table) each, on archives
crafted byte by byte: what `verify` accepts the folder writer writes, and what it refuses is
refused before anything is written (verify runs before a volume is emptied)."""

from __future__ import annotations

import io
import tarfile
import time
import tracemalloc
from pathlib import Path

import pytest
import zstandard

from sidecar.tarball import extract
from sidecar.core.errors import ArchiveError, UnsafeArchive

from .test_extract import END, target, directory, file, hardlink, header, outside, padded, pax, restore, symlink, verify, write


def refused_before_writing(tmp_path: Path, target: Path, raw: bytes, error=ArchiveError, match: str = "") -> None:
    """Refused by verify (the volume untouched) and by the writer, nothing written beside the target."""
    path = write(tmp_path, raw)
    with pytest.raises(error, match=match):
        verify(path)
    with pytest.raises(error, match=match):
        restore(path, target)
    assert outside(target) == []


# --- 1. sparse maps ---------------------------------------------------------------------------

def _sparse_01(name: bytes, regions: bytes, realsize: int, data: bytes, type: bytes = b"0") -> bytes:
    return (pax({b"GNU.sparse.major": b"0", b"GNU.sparse.minor": b"1", b"GNU.sparse.map": regions,
                 b"GNU.sparse.numblocks": b"%d" % (regions.count(b",") // 2 + 1), b"GNU.sparse.size": b"%d" % realsize})
            + header(name, type, len(data)) + padded(data))


@pytest.mark.parametrize("regions, realsize, data", [
    (b"0,10,5,10", 20, b"a" * 20),  # overlapping
    (b"10,5,0,5", 20, b"a" * 10),  # backwards
    (b"0,5,18,5", 20, b"a" * 10),  # beyond the size
    (b"0,5", 20, b"a" * 5),  # short of the size: GNU tar would make it 5 bytes long
    (b"0,1,1,1", 2, b"ab"),  # touching regions: GNU tar writes b"a\0"
    (b"0,0,5,5", 10, b"a" * 5),  # an empty region before the last
], ids=["overlap", "backwards", "beyond", "short", "touching", "empty-inside"])
def test_a_sparse_map_must_be_ordered_without_overlap_and_inside_the_size(tmp_path, target, regions, realsize, data):
    refused_before_writing(tmp_path, target, _sparse_01(b"f", regions, realsize, data) + END, match="sparse member")


def test_an_old_gnu_sparse_map_that_overlaps_is_refused(tmp_path, target):
    area = b"%011o\0%011o\0" % (0, 10) + b"%011o\0%011o\0" % (5, 10)
    raw = header(b"old", b"S", 20, magic=b"ustar  \0", extra={386: area, 483: b"%011o\0" % 20}) + padded(b"a" * 20)
    refused_before_writing(tmp_path, target, raw + END, match="overlaps")


def test_a_file_carries_exactly_its_size_into_the_canonical_stream():
    chunks = extract._exactly(3, iter([b"ab", b"cd"]), "f")
    with pytest.raises(ArchiveError, match="more data than its size"):
        list(chunks)


# --- 2. hard links to symlinks and folders -----------------------------------------------------

@pytest.mark.parametrize("raw, match", [
    (symlink(b"k", b".") + hardlink(b"U", b"k") + symlink(b"z", b"U/..") + END, "the target is a symlink"),
    (directory(b"d/") + hardlink(b"h", b"d") + END, "the target is a dir"),
    (file(b"f", b"x") + hardlink(b"f", b"f") + END, "links to itself"),
], ids=["to-symlink", "to-folder", "to-itself"])
def test_a_hard_link_must_name_an_earlier_regular_file(tmp_path, target, raw, match):
    refused_before_writing(tmp_path, target, raw, UnsafeArchive, match)


def test_the_writer_itself_refuses_a_hard_link_to_a_symlink_in_the_tree(tmp_path, target):
    (target / "s").symlink_to("elsewhere")
    member = extract.Member("h", extract.Kind.HARDLINK, 0o644, 0, 0, "", "", 0, 0, 0, "s")
    with extract.DirectoryWriter(target) as writer, pytest.raises(UnsafeArchive, match="not a regular file"):
        writer.write(member, iter(()))


# --- 3. a folder of an accepted symlink made a symlink later -----------------------------------

@pytest.mark.parametrize("raw", [
    symlink(b"a/a/a/z", b"../../../etc/shadow") + symlink(b"a", b".") + END,
    file(b"a/b/c", b"x") + symlink(b"a/b", b"..") + END,
    file(b"a/b", b"x") + file(b"a", b"replaces a folder with contents") + END,
], ids=["issue", "later-symlink-over-a-folder", "file-over-a-folder"])
def test_a_folder_is_never_replaced_so_nothing_moves_under_a_symlink(tmp_path, target, raw):
    refused_before_writing(tmp_path, target, raw, UnsafeArchive, "replaces a folder")


def test_every_symlink_is_created_after_every_other_member(tmp_path, target):
    raw = symlink(b"s", b"d") + directory(b"d/") + file(b"d/f", b"x") + END
    seen = []
    real = extract.DirectoryWriter._write

    def spy(self, member, data):
        seen.append(member.name)
        return real(self, member, data)

    extract.DirectoryWriter._write = spy
    try:
        restore(write(tmp_path, raw), target)
    finally:
        extract.DirectoryWriter._write = real
    assert seen == ["d", "d/f", "s"] and (target / "s").readlink() == Path("d")


# --- 4. extended attributes on hard links --------------------------------------------------------

def test_a_hard_link_carries_no_extended_attributes():
    policy = extract.Policy()
    policy.accept(extract._Raw(b"f", b"0", 0o755, 0, 0, 0, 0, b"", b"", b""))
    member = policy.accept(extract._Raw(b"h", b"1", 0o755, 0, 0, 0, 0, b"f", b"", b"",
                                        xattrs={"security.capability": b"\x01", "user.x": b"v"}))
    assert member.xattrs == () and policy.stripped == 1


# --- 5. the expanded size --------------------------------------------------------------------------

@pytest.mark.parametrize("raw, match", [
    (_sparse_01(b"f", b"0,1", 10**30, b"a") + END, "number of at most 19 digits"),
    (header(b"f", b"0", extra={124: b"\x80" + b"\xff" * 11}) + END, "size field is out of range"),
    (_sparse_01(b"f", b"0,1,%d,0" % (1 << 51), 1 << 51, b"a") + END, "size out of range"),
    (_sparse_01(b"d/", b"0,1", 1, b"a", type=b"5") + file(b"x", b"y") + END, "has a sparse map"),
], ids=["realsize-10e30", "base256-size", "over-1-PiB", "folder-with-a-sparse-map"])
def test_sizes_are_bounded_and_only_files_have_sparse_maps(tmp_path, target, raw, match):
    refused_before_writing(tmp_path, target, raw, ArchiveError, match)


def test_the_expanded_size_is_known_before_writing(tmp_path):
    raw = _sparse_01(b"big", b"0,1,%d,0" % (1 << 40), 1 << 40, b"a") + directory(b"d/") + file(b"d/f", b"x" * 5000) + END
    summary = verify(write(tmp_path, raw))
    assert summary.expanded == (1 << 40) + 4096 + 8192


# --- 6. bounded work ---------------------------------------------------------------------------

@pytest.mark.parametrize("repeat", [20_000, 40_000])
def test_a_long_pax_path_is_refused_in_linear_time(tmp_path, repeat):
    path = write(tmp_path, pax({b"path": b"a/" * repeat + b"f"}) + file(b"f", b"x") + END)
    started = time.monotonic()
    with pytest.raises(ArchiveError, match="longer than 4096 bytes"):
        verify(path)
    assert time.monotonic() - started < 0.5


def test_many_long_symlink_targets_are_refused_with_bounded_memory(tmp_path):
    out = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(out, closefd=False) as z:
        for i in range(1000):
            z.write(pax({b"linkpath": b"x" * 1_000_000}) + symlink(b"s%d" % i, b"x"))
        z.write(END)
    assert len(out.getvalue()) < 200_000
    path = write(tmp_path, out.getvalue(), name="app_data_2026-01-01_daily.tar.zst")
    tracemalloc.start()
    try:
        with pytest.raises(ArchiveError, match="target longer than 4095"):
            verify(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak


def test_many_deep_names_cost_time_linear_in_their_length(tmp_path):
    deep = b"/".join([b"d"] * 2000)
    raw = b"".join(pax({b"path": deep + b"/f%d" % i}) + file(b"f", b"x") for i in range(200)) + END
    path = write(tmp_path, raw)
    started = time.monotonic()
    assert verify(path).members == 200
    assert time.monotonic() - started < 2


# --- 7. malformed input is a refusal -------------------------------------------------------------

@pytest.mark.parametrize("raw, error, match", [
    (pax({b"size": b"9" * 5000}) + file(b"f", b"") + END, ArchiveError, "at most 19 digits"),
    (pax({b"mtime": b"9" * 5000}) + file(b"f", b"") + END, ArchiveError, "mtime"),
    (pax({b"SCHILY.xattr.user.\xff": b"v"}) + file(b"f", b"") + END, ArchiveError, "not UTF-8"),
    (pax({b"SCHILY.xattr.user.a\0b": b"v"}) + file(b"f", b"") + END, ArchiveError, "malformed extended attribute"),
    (hardlink(b"h", b"missing") + END, UnsafeArchive, "not in the archive before it"),
    (file(b"f", b"x") + file(b"f/g", b"y") + END, UnsafeArchive, "made a file, not a folder"),
    (file(b"f", b"x") + directory(b"f/") + END, UnsafeArchive, "is a folder where the archive made a file"),
], ids=["pax-5000-digits", "mtime-5000-digits", "xattr-name-not-utf8", "xattr-name-nul", "hard-link-to-nothing",
        "path-through-a-file", "folder-over-a-file"])
def test_malformed_input_is_refused_by_verify(tmp_path, target, raw, error, match):
    refused_before_writing(tmp_path, target, raw, error, match)


def test_an_unforeseen_error_in_the_parser_is_a_refusal(tmp_path, monkeypatch):
    def broken(raw):
        raise OverflowError("something the parser did not foresee")

    monkeypatch.setattr(extract.Policy, "accept", lambda self, raw: broken(raw))
    with pytest.raises(ArchiveError, match="damaged archive"):
        verify(write(tmp_path, file(b"f", b"x") + END))


# --- 8. negative fractional times ----------------------------------------------------------------

@pytest.mark.parametrize("ns, text", [(-1_500_000_000, "-1.500000000"), (1_500_000_000, "1.500000000"),
                                      (-1, "-0.000000001")])
def test_pax_times_keep_their_sign_and_fraction(ns, text):
    assert extract.pax_time(ns) == text


def test_a_negative_fractional_mtime_survives_the_canonical_stream(tmp_path):
    path = write(tmp_path, pax({b"mtime": b"-1.5"}) + file(b"f", b"x") + END)
    with extract.open_archive(path) as archive:
        stream = b"".join(extract.canonical_tar(archive))
    with tarfile.open(fileobj=io.BytesIO(stream)) as tar:
        assert tar.getmember("f").mtime == -1.5
    again = write(tmp_path, stream, name="again_data_2026-01-01_daily.tar")
    with extract.open_archive(again) as archive:
        assert b"".join(extract.canonical_tar(archive)) == stream


# --- 9. a preset's dump restores its databases, nothing else; one reader of archives ----------------

DB = ("/var/lib/app/*.db",)


@pytest.mark.parametrize("raw", [
    file(b"var/lib/app/app.db", b"SQLite") + file(b"usr/local/bin/backdoor", b"#!", 0o4755) + END,
    symlink(b"var/lib/app/app.db", b"../../../../etc/shadow") + END,
    file(b"var/lib/app/app.db", b"SQLite") + hardlink(b"var/lib/app/other.db", b"var/lib/app/app.db") + END,
    file(b"var/lib/app/sub/app.db", b"SQLite") + END,
], ids=["backdoor", "symlink", "hard-link", "deeper-than-the-glob"])
def test_a_dump_archive_holding_anything_but_its_databases_is_refused(tmp_path, raw):
    with extract.open_archive(write(tmp_path, raw)) as archive, pytest.raises(UnsafeArchive, match="may restore"):
        extract.verify(archive, only=DB)


def test_a_dump_archive_of_databases_is_accepted_and_listed(tmp_path):
    raw = file(b"var/lib/app/app.db", b"SQLite") + file(b"var/lib/app/b.db", b"SQLite") + END
    seen = []
    with extract.open_archive(write(tmp_path, raw)) as archive:
        extract.verify(archive, only=DB, on_member=lambda m: seen.append(m.name))
    assert seen == ["var/lib/app/app.db", "var/lib/app/b.db"]


@pytest.mark.parametrize("module", ["sidecar/actions/sources/presets/sqlite.py", "sidecar/actions/sources/presets/dump.py",
                                    "sidecar/readers/unpack.py", "sidecar/actions/images.py",
                                    "sidecar/actions/sources/volumes.py"])
def test_no_restore_path_parses_an_archive_with_tarfile_or_hands_it_to_the_engines_unpacker(module):
    source = (Path(__file__).parents[2] / module).read_text()
    assert "tarfile.open" not in source and "put_archive" not in source and "iter_tar" not in source
