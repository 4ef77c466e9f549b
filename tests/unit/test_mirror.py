"""The staging mirror: change detection (sidecar/mirror/diff.py, pure) and a mirror pass
(sidecar/mirror/worker.py) run in this process on folders of this host."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
from pathlib import Path

import pytest

from sidecar.mirror import diff as mirrordiff
from sidecar.mirror.diff import Room, Seen, dumps, loads, unchanged
from sidecar.mirror.worker import DIRTY, INFO, MANIFEST, TREE, MirrorJob, run_mirror

BASE = Seen(dev=1, ino=10, mode=0o100644, size=5, mtime_ns=1_000, ctime_ns=2_000)


@pytest.mark.parametrize("before, now, same", [
    (None, BASE, False),
    (BASE, BASE, True),
    (Seen(1, 10, 0o100644, 5, 1_000, 2_000, racy=True), BASE, False),  # seen too soon after a change
    (BASE, Seen(1, 10, 0o100644, 5, 1_000, 3_000), False),  # same size and mtime, rewritten: ctime moved
    (BASE, Seen(1, 11, 0o100644, 5, 1_000, 2_000), False),  # another inode (replaced, renamed over)
    (BASE, Seen(2, 10, 0o100644, 5, 1_000, 2_000), False),  # the volume re-created
    (BASE, Seen(1, 10, 0o100600, 5, 1_000, 2_000), False),
    (BASE, Seen(1, 10, 0o100644, 6, 1_000, 2_000), False),
    (BASE, Seen(1, 10, 0o100644, 5, 1_001, 2_000), False),
    (BASE, Seen(1, 10, 0o100644, 5, 1_000, 2_000, racy=True), True),  # only the record's racy flag counts
])
def test_unchanged_needs_every_field_equal_and_a_record_that_is_not_racy(before, now, same):
    assert unchanged(before, now) is same


def test_an_entry_changed_within_the_margin_is_racy():
    class St:
        st_dev, st_ino, st_mode, st_size, st_mtime_ns = 1, 2, 0o100644, 3, 4
        st_ctime_ns = 10_000_000_000

    assert Seen.of(St, St.st_ctime_ns + mirrordiff.RACY_MARGIN_NS - 1).racy
    assert not Seen.of(St, St.st_ctime_ns + mirrordiff.RACY_MARGIN_NS + 1).racy


def test_the_manifest_round_trips_undecodable_names_and_refuses_what_it_cannot_trust():
    name = os.fsdecode(b"caf\xe9/\xff")
    entries = {".": BASE, name: Seen(1, 11, 0o120777, 1, 5, 6, racy=True),
               "null": Seen(1, 12, 0o020666, 0, 5, 6, mirror=(7, 0, 5, 8), rdev=os.makedev(1, 3))}
    assert loads(dumps(entries)) == entries
    assert loads("not json") == {} and loads('{"version": 99, "entries": {}}') == {}
    assert loads('{"version": 1, "entries": {"a": [1, 2]}}') == {}


@pytest.mark.parametrize("free, enough", [(10_000 + 4_000 + 2_000, True), (10_000 + 4_000 + 1_999, False)])
def test_room_for_the_copy_the_archive_and_a_margin(free, enough):
    assert Room(to_copy=4_000, volume=10_000, free=free, total=100_000).enough is enough


# --- a mirror pass on this host -------------------------------------------------------------

def _xattrs(path: Path) -> dict[str, bytes]:
    try:
        return {n: os.getxattr(path, n, follow_symlinks=False) for n in os.listxattr(path, follow_symlinks=False)}
    except OSError:
        return {}


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything a tar member keeps, per path; hard links as the first path of their inode."""
    rows, first = {}, {}
    paths = [root]
    for folder, dirs, files in os.walk(root):
        paths += [Path(folder) / name for name in dirs + files]
    for path in sorted(paths, key=lambda p: os.fsencode(p)):
        rel = os.path.relpath(path, root)
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            link = first.setdefault(st.st_ino, rel) if st.st_nlink > 1 else None
            body = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            link, body = None, os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
        rows[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns,
                     st.st_size, body, link, _xattrs(path))
    return rows


def _has_user_xattrs(path: Path) -> bool:
    try:
        os.setxattr(path, "user.probe", b"1")
        os.removexattr(path, "user.probe")
        return True
    except OSError as exc:
        assert exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM)
        return False


@pytest.fixture
def source(tmp_path) -> Path:
    root = tmp_path / "volume"
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "a.txt").write_text("alpha")
    (root / "same.txt").write_text("12345")
    (root / "gone.txt").write_text("bye")
    (root / "old-name.txt").write_text("renamed")
    (root / "sub" / "deep" / "b.bin").write_bytes(os.urandom(100_000))
    os.link(root / "a.txt", root / "sub" / "a-link.txt")
    os.symlink("a.txt", root / "link")
    with open(root / "sparse.bin", "wb") as f:
        f.truncate(50 << 20)
        f.seek(10 << 20)
        f.write(b"data")
    os.mkfifo(root / "fifo")
    os.chmod(root / "sub", 0o2750)
    if os.geteuid() == 0:
        os.chown(root / "a.txt", 1000, 1001)
    if _has_user_xattrs(root / "a.txt"):
        os.setxattr(root / "a.txt", "user.note", b"hello")
    os.utime(root / "sub" / "deep", ns=(0, 946_684_799_000_000_000))
    return root


@pytest.fixture
def trusting(monkeypatch):
    """No entry is racy: the pass trusts what it recorded a moment ago, as it trusts a
    record older than the margin (the ctime catches the rewrites below)."""
    monkeypatch.setattr(mirrordiff, "RACY_MARGIN_NS", -10**18)


def _pass(source: Path, mirror: Path, lines: list | None = None):
    outcome = run_mirror(MirrorJob(source, mirror), (lines if lines is not None else []).append)
    assert outcome is not None, lines
    assert snapshot(mirror / TREE) == snapshot(source)
    return outcome


def _rewrite_same_size_same_mtime(path: Path, data: bytes) -> None:
    """Write `data` (as long as the old contents) and set the mtime back; again until the
    ctime moved (a write in the same tick of the kernel's coarse clock keeps the ctime,
    which is what the racy margin is for)."""
    before = os.lstat(path)
    assert len(data) == before.st_size
    while True:
        path.write_bytes(data)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        if os.lstat(path).st_ctime_ns != before.st_ctime_ns:
            return


def test_a_pass_copies_everything_then_only_what_changed(source, tmp_path, trusting):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    first = _pass(source, mirror)
    assert first.copied == first.entries  # the tree's root made, every entry copied
    assert (mirror / TREE / "sparse.bin").stat().st_blocks * 512 < 1 << 20  # holes stay holes
    kept = os.lstat(mirror / TREE / "sub" / "deep" / "b.bin").st_ino

    _rewrite_same_size_same_mtime(source / "same.txt", b"54321")
    (source / "gone.txt").unlink()
    (source / "old-name.txt").rename(source / "sub" / "new-name.txt")
    os.chmod(source / "sub", 0o700)
    if os.geteuid() == 0:
        os.chown(source / "same.txt", 1234, 1234)
    (source / "link").unlink()
    os.symlink("sub", source / "link")
    os.link(source / "sub" / "deep" / "b.bin", source / "b-link.bin")
    (source / "empty").rmdir()
    (source / "empty").write_text("now a file")
    (source / "new-empty").mkdir()
    second = _pass(source, mirror)
    assert (mirror / TREE / "same.txt").read_bytes() == b"54321"
    assert not (mirror / TREE / "gone.txt").exists() and not (mirror / TREE / "old-name.txt").exists()
    # b.bin got a link: its ctime moved, so it is copied again, and both paths share an inode.
    assert os.lstat(mirror / TREE / "b-link.bin").st_ino == os.lstat(mirror / TREE / "sub" / "deep" / "b.bin").st_ino
    assert second.copied < first.copied and second.removed >= 2

    third = _pass(source, mirror)
    assert third.copied == 0 and third.copied_bytes == 0 and third.removed == 0
    assert os.lstat(mirror / TREE / "sub" / "deep" / "b.bin").st_ino != kept  # (relinked in the second)
    info = (mirror / INFO).read_text()
    assert '"bytes"' in info and not (mirror / DIRTY).exists() and (mirror / MANIFEST).exists()


def test_a_pass_left_unfinished_trusts_nothing(source, tmp_path, trusting):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    first = _pass(source, mirror)
    (mirror / DIRTY).touch()
    again = _pass(source, mirror)
    assert again.copied_bytes == first.copied_bytes and again.copied == first.copied - 4  # folders stay


def test_a_mirror_folder_removed_by_hand_is_copied_again(source, tmp_path, trusting):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    _pass(source, mirror)
    shutil.rmtree(mirror / TREE / "sub")
    again = _pass(source, mirror)
    assert again.copied >= 4


def test_a_pass_looks_at_each_kept_copy_once(source, tmp_path, trusting, monkeypatch):
    """A pass that checks the mirror side records what it checked (issue 20: the second
    lstat of every copy was a fifth of a steady pass): one lstat per kept file's copy, and
    an edited copy is still repaired by the next pass."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    _pass(source, mirror)
    _pass(source, mirror)  # records of trusted copies, from here on
    looked: dict[str, int] = {}
    real_lstat = os.lstat

    def counting(path, *args, **kwargs):
        text = os.fsdecode(path)
        if text.startswith(str(mirror / TREE) + "/"):
            looked[text] = looked.get(text, 0) + 1
        return real_lstat(path, *args, **kwargs)

    monkeypatch.setattr(os, "lstat", counting)
    outcome = run_mirror(MirrorJob(source, mirror), [].append)
    monkeypatch.setattr(os, "lstat", real_lstat)
    assert outcome is not None and snapshot(mirror / TREE) == snapshot(source)
    assert outcome.copied == 0
    for name in ("sub/deep/b.bin", "same.txt", "sparse.bin"):  # (folders and hard links: again when recorded)
        assert looked[str(mirror / TREE / name)] == 1, looked

    edited = mirror / TREE / "sub" / "deep" / "b.bin"
    st = os.lstat(edited)
    edited.write_bytes(bytes(st.st_size))  # same size, mtime put back: only the ctime tells
    os.utime(edited, ns=(st.st_atime_ns, st.st_mtime_ns))
    repaired = _pass(source, mirror)
    assert repaired.copied == 1 and edited.read_bytes() == (source / "sub" / "deep" / "b.bin").read_bytes()


def test_recently_changed_entries_are_copied_again(source, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    first = _pass(source, mirror)
    again = _pass(source, mirror)  # everything was written a moment ago: racy, so not trusted
    assert again.copied_bytes == first.copied_bytes


def test_no_room_says_so_and_writes_nothing(source, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    monkeypatch.setattr(mirrordiff, "ROOM_MARGIN", 1.0)  # nothing fits when the whole disk is the margin
    lines = []
    assert run_mirror(MirrorJob(source, mirror), lines.append) is None
    assert lines[-1]["event"] == "no-room" and lines[-1]["needed"] > lines[-1]["free"]
    assert not (mirror / TREE).exists() or not any((mirror / TREE).iterdir())


# --- one worker for the whole backup (mirror --hold, PROTOCOL 9) -------------------------------

def _held(source: Path, mirror: Path, output: Path, words: list[str], capsys) -> tuple[int, list[dict]]:
    import json
    import queue

    from sidecar.worker import cli as worker_cli

    commands: "queue.Queue[str]" = queue.Queue()
    for word in words:
        commands.put(word)
    args = worker_cli._parser().parse_args(["mirror", "--root", str(source), "--mirror", str(mirror), "--hold",
                                            "--no-room-check", "--wait-timeout=5", "--output", str(output)])
    job = MirrorJob(args.root, args.mirror, False, False, args.wait_timeout, 1.0, ())
    code = worker_cli.held(job, args, commands)
    return code, [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_a_held_worker_runs_both_passes_and_archives_the_mirror_on_the_sidecars_words(source, tmp_path, capsys):
    import tarfile

    import zstandard

    output = tmp_path / "archive.tar.zst.partial"
    output.touch()
    code, lines = _held(source, tmp_path / "mirror", output, ["go", "archive"], capsys)
    assert code == 0, lines
    stages = [(r.get("stage"), r["event"]) for r in lines if r["event"] in ("ready", "result")]
    assert stages == [("first", "result"), ("stopped", "ready"), ("stopped", "result"), ("archive", "result")]
    with open(output, "rb") as raw, tarfile.open(fileobj=zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True),
                                                 mode="r|") as tar:
        names = {m.name.removeprefix("./") for m in tar}
    assert {rel for rel in snapshot(source)} <= names | {"."}
    assert lines[-1]["size"] == output.stat().st_size


def test_a_held_workers_stopped_pass_starts_from_the_first_pass_manifest_not_its_file(
        source, tmp_path, capsys, trusting, monkeypatch):
    """Issue 20: reading back the manifest the first pass just wrote was a third of the
    stopped pass (inside the stop window); the stopped pass gets it in memory, and writes
    the same manifest a pass starting from the file writes."""
    from sidecar.mirror import worker as worker_mirror

    real_load, loaded = worker_mirror.load_manifest, []
    monkeypatch.setattr(worker_mirror, "load_manifest", lambda folder: loaded.append(folder) or real_load(folder))
    mirror, output = tmp_path / "mirror", tmp_path / "archive.tar.zst.partial"
    output.touch()
    code, lines = _held(source, mirror, output, ["go", "archive"], capsys)
    assert code == 0, lines
    assert loaded == [mirror]  # the first pass's only
    assert snapshot(mirror / TREE) == snapshot(source)
    written = loads((mirror / MANIFEST).read_text())
    again = run_mirror(MirrorJob(source, mirror, stopped=True), [].append)
    assert again is not None and again.copied == 0
    assert loads((mirror / MANIFEST).read_text()).keys() == written.keys()


@pytest.mark.parametrize("words, stages", [(["abort"], ["first"]), (["go", "abort"], ["first", "stopped"])])
def test_a_held_worker_called_off_ends_without_an_archive(source, tmp_path, capsys, words, stages):
    output = tmp_path / "archive.tar.zst.partial"
    output.touch()
    code, lines = _held(source, tmp_path / "mirror", output, words, capsys)
    assert code == 1 and lines[-1]["event"] == "error" and "called the backup off" in lines[-1]["message"]
    assert [r["stage"] for r in lines if r["event"] == "result"] == stages
    assert output.stat().st_size == 0


# --- an unchanged mirror's archive: the previous one's bytes (sidecar/worker/reuse.py) ---------

def _archive_run(source: Path, mirror: Path, folder: Path, capsys, extra: tuple[str, ...] = ()) -> tuple[dict, Path]:
    """One held backup as the sidecar runs it: a new partial file, both passes, the archive,
    then the partial renamed to the dated name (the same name each run: one day's backups)."""
    import json
    import queue

    from sidecar.worker import cli as worker_cli

    output = folder / "app_data_2026-12-08_daily.tar.zst.partial"
    output.touch(mode=0o600)
    commands: "queue.Queue[str]" = queue.Queue()
    for word in ("go", "archive"):
        commands.put(word)
    args = worker_cli._parser().parse_args(["mirror", "--root", str(source), "--mirror", str(mirror), "--hold",
                                            "--no-room-check", "--wait-timeout=5", "--output", str(output), *extra])
    code = worker_cli.held(MirrorJob(args.root, args.mirror, False, False, args.wait_timeout, 1.0, ()), args, commands)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0, lines
    result = lines[-1]
    assert result["stage"] == "archive" and result["event"] == "result", lines
    final = output.with_name(output.name.removesuffix(".partial"))
    os.replace(output, final)
    return result, final


def _members(archive: Path) -> dict[str, tuple]:
    import tarfile

    import zstandard

    with open(archive, "rb") as raw, tarfile.open(fileobj=zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True),
                                                 mode="r|") as tar:
        return {m.name: (m.type, m.mode, m.size, m.mtime, m.linkname,
                         hashlib.sha256(tar.extractfile(m).read()).hexdigest() if m.isreg() else None) for m in tar}


def test_an_unchanged_mirrors_archive_is_the_previous_archive_copied_and_checked(source, tmp_path, capsys, trusting):
    """Issue 20: a steady-state backup of an unchanged volume need not compress every byte
    again: the manifest and special.json say the tree is the one the last archive was made
    from, so that archive (hashed again as it is copied) is what a plain read gives."""
    mirror, folder = tmp_path / "mirror", tmp_path / "daily"
    folder.mkdir()
    first, final = _archive_run(source, mirror, folder, capsys)
    assert "reused" not in first
    before = final.read_bytes()
    second, final = _archive_run(source, mirror, folder, capsys)
    assert second["reused"] == final.name and second["sha256"] == first["sha256"]
    assert final.read_bytes() == before
    assert hashlib.sha256(before).hexdigest() == second["sha256"]
    from sidecar.worker.frames import load_index

    index = load_index(mirror)  # the copy's frames are the old ones: recorded for the new file
    assert index is not None and index.path == str(final) and index.ino == final.stat().st_ino


@pytest.mark.parametrize("change", ["content", "mode", "new file", "removed", "damaged archive", "compression",
                                    "passphrase", "archive replaced"])
def test_any_change_of_the_tree_the_options_or_the_old_archive_archives_the_mirror_again(
        source, tmp_path, capsys, trusting, change):
    import json

    mirror, folder = tmp_path / "mirror", tmp_path / "daily"
    folder.mkdir()
    keys = tmp_path / "keys.json"
    extra: tuple[str, ...] = ()
    first, final = _archive_run(source, mirror, folder, capsys)
    if change == "content":
        (source / "same.txt").write_text("54321")
    elif change == "mode":
        os.chmod(source / "same.txt", 0o600)
    elif change == "new file":
        (source / "sub" / "new.txt").write_text("new")
    elif change == "removed":
        (source / "gone.txt").unlink()
    elif change == "damaged archive":  # same size, inode and mtime: only its digest tells
        st = final.stat()
        with open(final, "r+b") as f:
            f.seek(st.st_size // 2)
            byte = f.read(1)
            f.seek(st.st_size // 2)
            f.write(bytes([byte[0] ^ 0xFF]))
        os.utime(final, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif change == "compression":
        extra = ("--compression=gzip",)
    elif change == "passphrase":
        keys.write_text(json.dumps({"recipients": [], "passphrase": "p4ss", "work_factor": 10}))
        extra = (f"--keys-file={keys}",)
    elif change == "archive replaced":
        final.write_bytes(final.read_bytes())  # the same bytes, another file: not the one recorded
    second, final = _archive_run(source, mirror, folder, capsys, extra)
    assert "reused" not in second
    if change in ("compression", "passphrase"):
        return  # another format: its own checks elsewhere
    expected = {("./" + rel if rel != "." else "."): row for rel, row in snapshot(source).items()}
    members = _members(final)
    assert {name.rstrip("/") for name in members} == set(expected)
    for name, (kind, mode, size, mtime, linkname, digest) in members.items():
        path = source / name
        if kind == b"0" or kind == b"\0":
            assert digest == hashlib.sha256(path.read_bytes()).hexdigest(), name
