"""One file back, without Docker: the --path and --match filters (sidecar/core/members.py), the
checked extractor's member listing and its member filter (sidecar/tarball/extract.py): only the
chosen members are written, every member is still checked."""

from __future__ import annotations

import pytest

from sidecar.tarball import extract
from sidecar.core.errors import ChecksumMismatch, UnsafeArchive
from sidecar.core.members import chosen, matching, member_path, part_of, under

from .test_extract import END, directory, file, symlink, write


@pytest.mark.parametrize("text, path", [("conf/app.ini", "conf/app.ini"), ("/conf/", "conf"), ("./a", "a"),
                                        ("/x/", "x"), (" a/b ", "a/b")])
def test_member_path(text, path):
    assert member_path(text) == path


@pytest.mark.parametrize("text", ["", "/", ".", "./", "../etc", "a/../../b", "a//b", "a\0b"])
def test_member_path_refuses(text):
    with pytest.raises(ValueError, match="accepted"):
        member_path(text)


def test_under_and_matching():
    inside = under("conf")
    assert [n for n in ("conf", "conf/a", "conf/sub/b", "config", "conf.d/x", "x/conf") if inside(n)] == [
        "conf", "conf/a", "conf/sub/b"]
    db = matching("*.db")
    assert db("grafana.db") and db("data/grafana.db") and not db("grafana.db-wal")
    assert matching("data/*")("data/x") and not matching("data/*")("other/x")


RAW = (directory(b"./") + directory(b"./conf/") + file(b"./conf/app.ini", b"[app]\n") + directory(b"./conf/sub/")
       + file(b"./conf/sub/b.txt", b"bee") + file(b"./big.bin", b"x" * 5000) + symlink(b"./link", b"conf/app.ini")
       + END)


NAMES = ["", "a.txt", "sub", "sub/b", "subway", "db.sql.000000", "db.sql.000001", "x.sql.000000", "db.sql.00000"]


@pytest.mark.parametrize("path, dump, root, kept", [
    (None, False, True, NAMES),
    (None, False, False, NAMES[1:]),  # --into: the folder keeps its own owner and mode
    ("sub", False, False, ["sub", "sub/b"]),
    (None, True, False, ["db.sql.000000", "db.sql.000001", "x.sql.000000"]),
    ("db.sql", True, False, ["db.sql.000000", "db.sql.000001"]),
    ("x.sql.000000", True, False, ["x.sql.000000"]),  # a part by its own name
])
def test_chosen_is_what_a_restore_writes(path, dump, root, kept):
    keep = chosen(path, dump, root)
    assert [n for n in NAMES if keep(n)] == kept


def test_part_of():
    assert part_of("./pg.sql.000003") == ("pg.sql", 3) and part_of("pg.sql.3") is None and part_of("a/b.000001") is None


def test_list_members_yields_every_member_in_order(tmp_path):
    path = write(tmp_path, RAW)
    with extract.open_archive(path) as archive:
        found = [(m.name, m.kind.value, m.realsize) for m in extract.list_members(archive)]
    assert found == [("", "dir", 0), ("conf", "dir", 0), ("conf/app.ini", "file", 6), ("conf/sub", "dir", 0),
                     ("conf/sub/b.txt", "file", 3), ("big.bin", "file", 5000), ("link", "symlink", 0)]


def test_list_members_refuses_a_swapped_archive(tmp_path):
    path = write(tmp_path, RAW, checksum_of=RAW + b"other")
    with extract.open_archive(path) as archive, pytest.raises(ChecksumMismatch):
        list(extract.list_members(archive))


def test_only_selected_members_are_written_and_the_rest_stays(tmp_path):
    into = tmp_path / "volume"
    (into / "conf").mkdir(parents=True)
    (into / "conf" / "app.ini").write_text("changed\n")
    (into / "keep.txt").write_text("not in the archive\n")
    path = write(tmp_path, RAW)
    inside = under("conf/sub")
    with extract.open_archive(path) as archive:
        summary = extract.extract(archive, into, select=lambda m: bool(m.name) and inside(m.name))
    assert summary.members == 7  # every member read and checked
    assert (into / "conf" / "sub" / "b.txt").read_bytes() == b"bee"
    assert (into / "conf" / "app.ini").read_text() == "changed\n" and (into / "keep.txt").exists()
    assert not (into / "big.bin").exists() and not (into / "link").exists()


def test_a_missing_parent_is_made_for_a_selected_file(tmp_path):
    into = tmp_path / "empty"
    into.mkdir()
    with extract.open_archive(write(tmp_path, RAW)) as archive:
        extract.extract(archive, into, select=lambda m: m.name == "conf/sub/b.txt")
    assert (into / "conf" / "sub" / "b.txt").read_bytes() == b"bee"
    assert oct((into / "conf").stat().st_mode & 0o777) == oct(0o755)


def test_an_unsafe_member_refuses_the_archive_even_when_not_selected(tmp_path):
    raw = directory(b"./") + file(b"./a.txt", b"a") + file(b"../escape", b"x") + END
    into = tmp_path / "into"
    into.mkdir()
    with extract.open_archive(write(tmp_path, raw)) as archive, pytest.raises(UnsafeArchive):
        extract.extract(archive, into, select=lambda m: m.name == "a.txt")
    assert not (tmp_path / "escape").exists()
