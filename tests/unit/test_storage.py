"""storage.py: archives on the backup volume, the journal, per-target locks."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import stat
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from sidecar.tarball.archive import read_checksum, write_checksum
from sidecar.core.errors import ArchiveError, BackupBusy, NotFound
from sidecar.core.naming import parse_name
from sidecar.core.schedule import Frequency
from sidecar.store import storage
from sidecar.store.storage import BackupStore, Journal, JournalEntry, StoredArchive

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path) -> BackupStore:
    s = BackupStore(tmp_path / "backups")
    s.prepare()
    return s


def put(store: BackupStore, relpath: str, data: bytes = b"x") -> Path:
    path = store.path(relpath)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_prepare_creates_private_state_folders(tmp_path):
    s = BackupStore(tmp_path / "new" / "backups")
    s.prepare()
    s.prepare()  # idempotent
    for folder in (s.state_dir, s.state_dir / "locks"):
        assert folder.is_dir()
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700


# --- archives ------------------------------------------------------------------------

ARCHIVES = [
    "daily/app_data_2026-03-28_daily.tar.zst",
    "daily/app_data_2026-03-29_daily.tar.zst",
    "daily/app_data_2026-03-29T150000_daily.tar.zst",
    "daily/app_data_2026-03-29T150000-2_daily.tar.zst",
    "hourly/app_logs_2026-03-29T100000_hourly.tar.gz",
    "weekly/my_app_data_2026-03-22_weekly.tar",
    "monthly/app_data_2026-03-01_monthly.tar.zst",
]
NOT_ARCHIVES = [
    "daily/app_data_2026-03-30_daily.tar.zst.partial",
    "daily/app_data_2026-03-29_daily.tar.zst.sha256",
    "daily/notes.txt",
    "daily/app_data_2026-02-30_daily.tar.zst",
    "app_data_2026-03-31_daily.tar.zst",  # not in a frequency folder
    "yearly/app_data_2026-01-01_daily.tar.zst",
    ".sidecar/app_data_2026-03-31_daily.tar.zst",
]


@pytest.fixture
def filled(store) -> BackupStore:
    for i, rel in enumerate(ARCHIVES + NOT_ARCHIVES):
        put(store, rel, b"z" * (i + 1))
    (store.root / "daily" / "app_data_2026-04-01_daily.tar.zst").mkdir()  # a folder, not an archive
    os.symlink("/etc/hostname", store.root / "daily" / "app_data_2026-04-02_daily.tar.zst")
    return store


def test_archives_lists_only_finished_archives_sorted_by_time(filled):
    found = filled.archives()
    assert [str(a.path.relative_to(filled.root)) for a in found] == [
        "monthly/app_data_2026-03-01_monthly.tar.zst",
        "weekly/my_app_data_2026-03-22_weekly.tar",
        "daily/app_data_2026-03-28_daily.tar.zst",
        "daily/app_data_2026-03-29_daily.tar.zst",
        "hourly/app_logs_2026-03-29T100000_hourly.tar.gz",
        "daily/app_data_2026-03-29T150000_daily.tar.zst",
        "daily/app_data_2026-03-29T150000-2_daily.tar.zst",
    ]
    by_rel = {str(a.path.relative_to(filled.root)): a for a in found}
    for i, rel in enumerate(ARCHIVES):
        assert by_rel[rel].size == i + 1
        assert by_rel[rel].name.relpath == rel


@pytest.mark.parametrize("backup_name, expected", [
    ("app", 6),
    ("my_app", 1),
    ("my", 0),
    ("nobody", 0),
])
def test_archives_of_one_service(filled, backup_name, expected):
    found = filled.archives(backup_name)
    assert len(found) == expected
    assert all(a.name.backup_name == backup_name for a in found)


def test_archives_of_an_empty_store(store, tmp_path):
    assert store.archives() == []
    assert BackupStore(tmp_path / "does-not-exist").archives() == []


@pytest.mark.parametrize("backup_name, volume_name, expected", [
    ("app", "data", "daily/app_data_2026-03-29T150000-2_daily.tar.zst"),
    ("app", "logs", "hourly/app_logs_2026-03-29T100000_hourly.tar.gz"),
    ("my_app", "data", "weekly/my_app_data_2026-03-22_weekly.tar"),
    ("app", "nope", None),
    ("nobody", "data", None),
])
def test_latest(filled, backup_name, volume_name, expected):
    latest = filled.latest(backup_name, volume_name)
    assert (str(latest.path.relative_to(filled.root)) if latest else None) == expected


def test_checksum_path(filled):
    archive = filled.latest("app", "logs")
    assert archive.checksum_path.name == "app_logs_2026-03-29T100000_hourly.tar.gz.sha256"
    assert not archive.has_checksum
    archive.checksum_path.write_text("x")
    assert archive.has_checksum


@pytest.mark.parametrize("existing, asked, expected", [
    ("daily/a_b_2026-01-01_daily.tar", "daily/a_b_2026-01-01_daily.tar", True),
    ("daily/a_b_2026-01-01_daily.tar.partial", "daily/a_b_2026-01-01_daily.tar", True),
    ("daily/a_b_2026-01-01_daily.tar.sha256", "daily/a_b_2026-01-01_daily.tar", True),
    ("daily/a_b_2026-01-01_daily.tar.gz", "daily/a_b_2026-01-01_daily.tar", False),
    ("weekly/a_b_2026-01-01_daily.tar", "daily/a_b_2026-01-01_daily.tar", False),
    ("daily/a_b_2026-01-01_daily.tar", "daily/a_b_2026-01-02_daily.tar", False),
])
def test_taken(store, existing, asked, expected):
    put(store, existing)
    assert store.taken(asked) is expected


def test_clean_partials(filled):
    partial = filled.root / "daily" / "app_data_2026-03-30_daily.tar.zst.partial"
    more = [put(filled, "hourly/a_b_2026-01-01T000000_hourly.tar.partial"),
            put(filled, "weekly/a_b_2026-01-01_weekly.tar.zst.sha256.partial")]
    outside = put(filled, "elsewhere/a.partial")
    before = {p for p in filled.root.rglob("*") if p.is_file() and ".sidecar" not in p.parts}
    removed = filled.clean_partials()
    assert sorted(removed) == sorted([partial, *more])
    after = {p for p in filled.root.rglob("*") if p.is_file() and ".sidecar" not in p.parts}
    assert after == before - set(removed)
    assert outside.exists()
    assert filled.clean_partials() == []


def test_clean_partials_keeps_those_of_a_backup_in_progress(filled):
    filled.prepare()
    busy = filled.root / "daily" / "app_data_2026-03-30_daily.tar.zst.partial"
    idle = put(filled, "hourly/a_b_2026-01-01T000000_hourly.tar.partial")
    with filled.target_lock("app"):
        assert filled.clean_partials() == [idle]
    assert busy.exists()
    assert filled.clean_partials() == [busy]


@pytest.fixture
def in_other_dir(tmp_path, monkeypatch):
    """Relative references must not be found through the current directory by accident."""
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)


@pytest.mark.parametrize("ref", [
    "app_data_2026-03-29_daily.tar.zst",
    "daily/app_data_2026-03-29_daily.tar.zst",
    "{root}/daily/app_data_2026-03-29_daily.tar.zst",
])
def test_resolve(filled, in_other_dir, ref):
    expected = filled.root / "daily" / "app_data_2026-03-29_daily.tar.zst"
    assert filled.resolve(ref.format(root=filled.root)) == expected


@pytest.mark.parametrize("ref", [
    "app_data_2026-03-27_daily.tar.zst",
    "daily/app_data_2026-03-27_daily.tar.zst",
    "/nonexistent/app_data_2026-03-29_daily.tar.zst",
    "daily",
    "{root}/daily",
    "",
])
def test_resolve_not_found(filled, in_other_dir, ref):
    ref = ref.format(root=filled.root)
    with pytest.raises(NotFound) as info:
        filled.resolve(ref)
    assert repr(ref) in str(info.value) and str(filled.root) in str(info.value)


def test_resolve_an_archive_outside_the_store(filled, tmp_path, in_other_dir):
    other = tmp_path / "copy.tar.zst"
    other.write_bytes(b"x")
    assert filled.resolve(str(other)) == other


def test_heartbeat(store):
    assert store.heartbeat_age() is None
    store.touch_heartbeat()
    age = store.heartbeat_age()
    assert age is not None and 0 <= age < 60


# --- journal -------------------------------------------------------------------------

def entry(n: int, action: str = "stopped") -> JournalEntry:
    return JournalEntry(f"id{n}", f"shop-s{n}-1", action, f"s{n}", 1_700_000_000.0 + n)


def test_journal_starts_empty(tmp_path):
    assert Journal(tmp_path / "state" / "journal.json").entries() == []


def test_journal_add_remove_and_persistence(tmp_path):
    path = tmp_path / "state" / "journal.json"
    journal = Journal(path)
    journal.add(entry(1))
    journal.add(entry(2, "paused"))
    assert Journal(path).entries() == [entry(1), entry(2, "paused")]

    replaced = JournalEntry("id1", "shop-s1-1", "paused", "s1", 1_800_000_000.0)
    journal.add(replaced)  # one entry per container: the newest wins
    assert Journal(path).entries() == [entry(2, "paused"), replaced]

    Journal(path).remove("id2")
    assert journal.entries() == [replaced]
    journal.remove("unknown")
    assert journal.entries() == [replaced]
    journal.remove("id1")
    assert Journal(path).entries() == []
    assert not path.with_name("journal.json.tmp").exists()


def test_journal_file_is_private(tmp_path):
    path = tmp_path / "journal.json"
    old = os.umask(0)
    try:
        Journal(path).add(entry(1))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def _journal_many(path: Path, first: int, count: int) -> None:
    journal = Journal(path)
    for n in range(first, first + count):
        journal.add(entry(n))


def test_journal_loses_no_entry_to_a_second_process(tmp_path):
    """The daemon and a `compose exec ... backup` add entries at the same time: before
    JsonState, 400 added concurrently by two processes left 203."""
    path = tmp_path / "state" / "journal.json"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_journal_many, args=(path, n * 200, 200)) for n in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    assert sorted(e.container_id for e in Journal(path).entries()) == sorted(f"id{n}" for n in range(400))


def test_unreadable_journal_is_moved_aside_not_overwritten(tmp_path, caplog):
    path = tmp_path / "journal.json"
    path.write_text('{"interrupted": [')
    with caplog.at_level("ERROR"):
        Journal(path).add(entry(1))
    assert Journal(path).entries() == [entry(1)]
    [aside] = tmp_path.glob("journal.json.unreadable-*")
    assert aside.read_text() == '{"interrupted": ['
    assert any("journal unreadable" in r.getMessage() for r in caplog.records)


def test_remove_from_a_missing_journal_writes_nothing(tmp_path):
    path = tmp_path / "journal.json"
    Journal(path).remove("id1")
    assert not path.exists()


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2"])
def test_unreadable_journal_is_treated_as_empty(tmp_path, content):
    path = tmp_path / "journal.json"
    path.write_text(content)
    journal = Journal(path)
    assert journal.entries() == []
    journal.add(entry(3))
    assert Journal(path).entries() == [entry(3)]


@pytest.mark.parametrize("content", [
    "[]",
    "null",
    '{"interrupted": [{"container_id": "x"}]}',
    '{"interrupted": [{"container_id": "x", "container_name": "n", "action": "stopped", "target": "t", '
    '"since": 1, "added_later": 2}]}',
], ids=["list", "null", "missing-fields", "extra-field"])
def test_journal_of_another_shape_is_treated_as_unreadable(tmp_path, content):
    path = tmp_path / "journal.json"
    path.write_text(content)
    assert Journal(path).entries() == []


# --- target locks ----------------------------------------------------------------------

def test_second_lock_in_the_same_process_is_busy(store):
    with store.target_lock("db"):
        with pytest.raises(BackupBusy, match="db: a backup or restore of this target is already running"):
            with store.target_lock("db"):
                pass
        with store.target_lock("web"):  # other targets are independent
            pass
    with store.target_lock("db"):  # released after
        pass


def test_lock_is_released_when_the_body_fails(store):
    with pytest.raises(RuntimeError):
        with store.target_lock("db"):
            raise RuntimeError("boom")
    with store.target_lock("db"):
        pass


HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from sidecar.core.errors import BackupBusy
    from sidecar.store.storage import BackupStore
    store = BackupStore(Path(sys.argv[1]))
    try:
        with store.target_lock(sys.argv[2]):
            print("locked", flush=True)
            sys.stdin.readline()  # hold the lock until the parent says so
    except BackupBusy:
        print("busy", flush=True)
""")


def other_process(store: BackupStore, name: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(store.root), name], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)


def test_lock_held_here_is_busy_in_another_process(store):
    with store.target_lock("db"):
        proc = other_process(store, "db")
        out, _ = proc.communicate("\n", timeout=30)
        assert out == "busy\n"
    proc = other_process(store, "db")
    out, _ = proc.communicate("\n", timeout=30)
    assert out == "locked\n"


def test_lock_held_by_another_process_is_busy_here(store):
    proc = other_process(store, "db")
    try:
        assert proc.stdout.readline() == "locked\n"
        with pytest.raises(BackupBusy):
            with store.target_lock("db"):
                pass
        with store.target_lock("web"):
            pass
    finally:
        proc.communicate("\n", timeout=30)
    assert proc.returncode == 0
    with store.target_lock("db"):  # free once the other process let go
        pass


# --- rotation: archive_at, link, delete ------------------------------------------------

def written(store: BackupStore, relpath: str, data: bytes = b"archive data", mode: int = 0o640) -> StoredArchive:
    """An archive with its checksum, as ArchiveWriter leaves it."""
    path = put(store, relpath, data)
    os.chmod(path, mode)
    write_checksum(path, hashlib.sha256(data).hexdigest(), mode)
    return store.archive_at(path)


def test_archive_at(store):
    archive = written(store, "daily/app_data_2026-03-02_daily.tar.zst", b"12345")
    assert archive.name == parse_name("app_data_2026-03-02_daily.tar.zst")
    assert archive.size == 5 and archive.path == store.root / "daily" / "app_data_2026-03-02_daily.tar.zst"


@pytest.mark.parametrize("relpath, error", [
    ("daily/notes.txt", ArchiveError),
    ("daily/app_data_2026-03-09_daily.tar.zst", NotFound),
])
def test_archive_at_refuses(store, relpath, error):
    put(store, "daily/notes.txt")
    with pytest.raises(error, match=re.escape(relpath.split("/")[1])):
        store.archive_at(store.path(relpath))


@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_link_shares_the_data_and_writes_a_checksum_for_the_new_name(store, mode):
    old_umask = os.umask(0o077)
    try:
        daily = written(store, "daily/app_data_2026-03-02T150000-2_daily.tar.zst.age", mode=mode)
        weekly = store.link(daily, replace(daily.name, frequency=Frequency.WEEKLY))
    finally:
        os.umask(old_umask)
    assert weekly.path == store.root / "weekly" / "app_data_2026-03-02T150000-2_weekly.tar.zst.age"
    assert weekly.name.frequency is Frequency.WEEKLY and weekly.size == daily.size
    st_daily, st_weekly = daily.path.stat(), weekly.path.stat()
    assert (st_weekly.st_ino, st_weekly.st_dev) == (st_daily.st_ino, st_daily.st_dev)
    assert st_daily.st_nlink == 2
    assert stat.S_IMODE(st_weekly.st_mode) == mode
    assert stat.S_IMODE(weekly.checksum_path.stat().st_mode) == mode
    assert stat.S_IMODE(weekly.path.parent.stat().st_mode) == 0o700
    line = weekly.checksum_path.read_text()
    assert line == f"{hashlib.sha256(b'archive data').hexdigest()}  {weekly.path.name}\n"
    assert read_checksum(weekly.path) == read_checksum(daily.path)
    # sha256sum -c works in the new folder
    assert subprocess.run(["sha256sum", "-c", weekly.checksum_path.name], cwd=weekly.path.parent,
                          capture_output=True).returncode == 0
    assert {a.path for a in store.archives()} == {daily.path, weekly.path}
    assert not list(weekly.path.parent.glob("*.partial"))


def test_link_of_an_archive_without_checksum_links_only_the_archive(store):
    path = put(store, "daily/app_data_2026-03-02_daily.tar.zst")
    daily = store.archive_at(path)
    monthly = store.link(daily, replace(daily.name, frequency=Frequency.MONTHLY))
    assert monthly.path.stat().st_ino == path.stat().st_ino
    assert not monthly.has_checksum


@pytest.mark.parametrize("taken", [
    "weekly/app_data_2026-03-02_weekly.tar.zst",
    "weekly/app_data_2026-03-02_weekly.tar.zst.sha256",
    "weekly/app_data_2026-03-02_weekly.tar.zst.partial",
])
def test_link_never_overwrites(store, taken):
    daily = written(store, "daily/app_data_2026-03-02_daily.tar.zst")
    other = put(store, taken, b"someone else's")
    with pytest.raises(ArchiveError, match="weekly/app_data_2026-03-02_weekly.tar.zst: already exists"):
        store.link(daily, replace(daily.name, frequency=Frequency.WEEKLY))
    assert other.read_bytes() == b"someone else's"
    assert daily.path.stat().st_nlink == 1


def test_link_undoes_itself_when_the_checksum_cannot_be_written(store, monkeypatch):
    daily = written(store, "daily/app_data_2026-03-02_daily.tar.zst")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage, "write_checksum", fail)
    with pytest.raises(ArchiveError, match="No space left on device"):
        store.link(daily, replace(daily.name, frequency=Frequency.WEEKLY))
    assert not (store.root / "weekly" / "app_data_2026-03-02_weekly.tar.zst").exists()
    assert daily.path.stat().st_nlink == 1


def test_delete_removes_archive_and_checksum_and_keeps_other_links(store):
    daily = written(store, "daily/app_data_2026-03-02_daily.tar.zst")
    weekly = store.link(daily, replace(daily.name, frequency=Frequency.WEEKLY))
    neighbour = written(store, "daily/app_data_2026-03-03_daily.tar.zst")
    store.delete(daily)
    assert not daily.path.exists() and not daily.checksum_path.exists()
    assert weekly.path.read_bytes() == b"archive data" and weekly.has_checksum
    assert weekly.path.stat().st_nlink == 1
    assert neighbour.path.exists() and neighbour.has_checksum
    store.delete(daily)  # already gone: nothing to do
    orphan = store.archive_at(put(store, "daily/app_data_2026-03-04_daily.tar.zst"))
    store.delete(orphan)  # no checksum to remove
    assert not orphan.path.exists()


def test_clean_partials_looks_in_images_and_removes_orphan_checksums(filled):
    """A crash between the checksum and the rename leaves NAME.sha256 beside NAME.partial;
    image exports are written the same way in images/."""
    filled.prepare()
    image_partials = [put(filled, "images/app_latest_1a2b3c4d_2026-01-01.tar.zst.partial"),
                      put(filled, "images/app_latest_1a2b3c4d_2026-01-01.tar.zst.sha256.partial"),
                      put(filled, "images/app_latest_1a2b3c4d_2026-01-01.tar.zst.sha256")]
    orphan = put(filled, "daily/app_data_2026-03-31_daily.tar.zst.sha256")
    kept = [put(filled, "images/app_latest_1a2b3c4d_2026-01-02.tar.zst"),
            put(filled, "images/app_latest_1a2b3c4d_2026-01-02.tar.zst.sha256"), put(filled, "images/notes.txt")]
    with filled.target_lock("app"):  # a backup (and its image export) in progress: all left alone
        assert [p for p in filled.clean_partials() if p.parent.name in ("images", "daily")] == []
    removed = filled.clean_partials()
    assert set(image_partials + [orphan]) <= set(removed)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in image_partials + [orphan])
