"""One file back, through the CLI on the fake engine (workers run `python -m
sidecar.worker.extract` as host processes): `list NAME --files` lists an archive's members
without unpacking it, filtered; `restore NAME --path` puts one file or folder back into
the volume (the rest untouched; stopped only as the strategy says), or `--into` a folder
on the backup volume; from a destination too; a dump's file out of a dump archive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar import readers
from sidecar.core.model import ContainerState
from sidecar.readers.worker import WorkerReader

from .conftest import app_labels, tree
from .test_presets import DUMPALL_END, _postgres

pytestmark = pytest.mark.usefixtures("fresh_worker_reader")  # conftest: one WorkerReader per test

IMAGE = "backup-sidecar:fake"




@pytest.fixture
def worker(engine, monkeypatch):
    engine.worker_images.add(IMAGE)
    monkeypatch.setenv("BACKUP_WORKER_IMAGE", IMAGE)


def backed_up(run, engine, data, **labels):
    app = engine.add_container("app-1", app_labels(**labels), {"/data": data})
    assert run("backup", "app") == 0
    engine.calls.clear()
    return app


def test_list_files_shows_members_filtered_without_unpacking(run, engine, env, data, worker, capsys):
    backed_up(run, engine, data)
    capsys.readouterr()
    before = sorted(p for p in Path(env["BACKUP_DIR"]).rglob("*"))
    assert run("list", "app", "--files") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["MODE", "SIZE", "MTIME", "PATH"]
    rows = {line.split()[-1] if "->" not in line else line.split()[-3]: line for line in out[1:-1]}
    assert set(rows) == {".", "a.txt", "sub", "sub/b.bin", "link"}
    assert rows["a.txt"].startswith("-rw") and " 6 B " in rows["a.txt"]
    assert rows["sub"].startswith("drwx") and rows["link"].startswith("l") and rows["link"].endswith("link -> a.txt")
    assert " 16.0 KiB " in rows["sub/b.bin"]
    assert out[-1].endswith("app_data_" + out[-1].split("app_data_")[1].split(":")[0] + ": 5 of 5 entries")
    assert sorted(p for p in Path(env["BACKUP_DIR"]).rglob("*")) == before  # nothing unpacked, nothing left

    assert run("list", "app", "--files", "--path", "/sub/") == 0
    listed = [line.split()[-1] for line in capsys.readouterr().out.splitlines()[1:-1]]
    assert listed == ["sub", "sub/b.bin"]
    assert run("list", "app", "--files", "--match", "*.bin", "--json") == 0
    found = json.loads(capsys.readouterr().out)
    assert found["members"] == 5 and [f["path"] for f in found["files"]] == ["sub/b.bin"]
    assert found["files"][0]["size"] == 256 * 64 and found["files"][0]["mode"] == "-rw-r--r--"

    archive = found["archive"]
    assert run("list", "--files", Path(archive).name) == 0  # a file by its name: no NAME needed
    assert run("list", "--files", archive, "--path", "../etc") == 64


def test_list_files_refuses_a_damaged_archive(run, engine, env, data, worker, capsys):
    backed_up(run, engine, data)
    [archive] = sorted(Path(env["BACKUP_DIR"]).glob("daily/*.tar.zst"))
    raw = bytearray(archive.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    archive.write_bytes(bytes(raw))
    assert run("list", "app", "--files") == 1
    assert "SHA-256" in capsys.readouterr().err


def test_restore_one_file_into_the_volume_leaves_the_rest(run, engine, data, worker, capsys):
    app = backed_up(run, engine, data)
    original = (data / "sub" / "b.bin").read_bytes()
    (data / "sub" / "b.bin").unlink()
    (data / "a.txt").write_text("changed since\n")
    (data / "new.txt").write_text("made after the backup\n")
    capsys.readouterr()
    assert run("restore", "app", "--volume", "data", "--path", "sub/b.bin") == 0
    said = capsys.readouterr().out
    assert said.startswith("restored sub/b.bin from ") and "into volume data of app-1 (/data)" in said
    assert (data / "sub" / "b.bin").read_bytes() == original
    assert (data / "a.txt").read_text() == "changed since\n" and (data / "new.txt").exists()
    assert [c[1] for c in engine.names("stop")] == [app.id] and engine.state(app.id) is ContainerState.RUNNING  # strategy stop
    assert [s for s in engine.workers_run if "--path=sub/b.bin" in s.command]


def test_a_hot_target_is_not_stopped_and_a_folder_comes_back_whole(run, engine, data, worker):
    backed_up(run, engine, data, strategy="hot")
    before = tree(data)
    (data / "sub" / "b.bin").write_bytes(b"overwritten")
    (data / "a.txt").write_text("keep me\n")
    assert run("restore", "app", "--volume", "data", "--path", "sub") == 0
    assert tree(data)["sub/b.bin"] == before["sub/b.bin"]
    assert (data / "a.txt").read_text() == "keep me\n"
    assert engine.names("stop") == [] and engine.names("pause") == []


def test_a_path_the_archive_lacks_stops_nothing(run, engine, data, worker, capsys):
    backed_up(run, engine, data)
    assert run("restore", "app", "--volume", "data", "--path", "nope.txt") == 2
    assert "holds no member under 'nope.txt'" in capsys.readouterr().err
    assert engine.names("stop") == []


def test_into_a_folder_on_the_backup_volume(run, engine, env, data, worker, capsys):
    backed_up(run, engine, data)
    backups = Path(env["BACKUP_DIR"])
    capsys.readouterr()
    assert run("restore", "app", "--volume", "data", "--path", "sub", "--into", "restored/app") == 0
    assert tree(backups / "restored" / "app") == {".": None, "sub": None, "sub/b.bin": tree(data)["sub/b.bin"]}
    assert "into " + str(backups / "restored" / "app") + " (2 entries" in capsys.readouterr().out
    assert engine.names("stop") == []  # the app is not needed
    # Written by the extract worker (the one writer), with the backup volume read-write, into the folder on it.
    # First a listing worker (the sidecar parses no archive): the backup volume read-only, nothing else.
    listing, spec = [s for s in engine.workers_run if s.purpose == "extract"]
    assert "--list" in listing.command and [(m.source, m.read_only) for m in listing.mounts] == [(str(backups), True)]
    assert [(m.source, m.read_only) for m in spec.mounts] == [(str(backups), False)]
    assert spec.command[spec.command.index("--into") + 1].endswith("/restored/app")
    assert "--path=sub" in spec.command and "--leave-root" in spec.command
    # Not twice into the same folder without --force; never outside BACKUP_DIR or into its own folders.
    assert run("restore", "app", "--volume", "data", "--path", "a.txt", "--into", "restored/app") == 1
    assert run("restore", "app", "--volume", "data", "--path", "a.txt", "--into", "restored/app", "--force") == 0
    assert (backups / "restored" / "app" / "a.txt").read_text() == "alpha\n"
    for bad in ("/etc/x", "../outside", "daily/x", ".sidecar", str(backups)):
        assert run("restore", "app", "--volume", "data", "--path", "a.txt", "--into", bad) == 64, bad
    assert "expected a folder under BACKUP_DIR" in capsys.readouterr().err
    assert not (backups.parent / "outside").exists()


def test_without_a_worker_the_volume_path_is_refused_before_anything_stops(run, engine, data, capsys):
    backed_up(run, engine, data)
    assert run("restore", "app", "--volume", "data", "--path", "a.txt") == 1
    said = capsys.readouterr().err
    assert "no worker container can run" in said and "BACKUP_WORKER_IMAGE" in said
    assert engine.names("stop") == []


def test_into_a_folder_without_a_worker_is_refused_writing_nothing(run, engine, env, data, capsys):
    backed_up(run, engine, data)
    backups = Path(env["BACKUP_DIR"])
    capsys.readouterr()
    for more in (("--path", "a.txt"), ()):  # one file, or the whole archive
        assert run("restore", "app", "--volume", "data", *more, "--into", "restored/app") == 1
        said = capsys.readouterr().err
        assert "no worker container can run" in said and "BACKUP_WORKER_IMAGE" in said and "restored/app" in said
        assert not any((backups / "restored" / "app").iterdir())  # the sidecar wrote nothing itself
    assert not [s for s in engine.workers_run if s.purpose == "extract"]


def test_the_whole_archive_into_a_folder_keeps_the_folder_its_own(run, engine, env, data, worker, capsys):
    backed_up(run, engine, data)
    data.chmod(0o751)
    assert run("backup", "app") == 0
    assert run("restore", "app", "--volume", "data", "--into", "restored/all") == 0
    folder = Path(env["BACKUP_DIR"]) / "restored" / "all"
    assert {k: v for k, v in tree(folder).items() if k != "."} == {k: v for k, v in tree(data).items() if k != "."}
    assert folder.stat().st_mode & 0o777 == 0o700  # the root entry (0751) left out: the folder stays ours


def test_from_a_destination(run, engine, env, data, worker, tmp_path, monkeypatch):
    (tmp_path / "copy").mkdir()
    monkeypatch.setenv("BACKUP_DESTINATIONS", str(tmp_path / "copy"))
    backed_up(run, engine, data)
    assert run("sync") == 0
    backups = Path(env["BACKUP_DIR"])
    for path in backups.glob("*ly/*"):
        path.unlink()  # a new host: only the destination holds the archive
    assert run("list", "app", "--files", "--volume", "data", "--from", "local", "--path", "a.txt") == 0
    assert run("restore", "app", "--volume", "data", "--path", "a.txt", "--into", "restored/x", "--from",
               "local") == 0
    assert (backups / "restored" / "x" / "a.txt").read_text() == "alpha\n"


def test_a_dump_archive_lists_and_gives_its_file_into_a_folder(run, engine, env, worker, tmp_path, capsys):
    _postgres(engine, tmp_path, pg_dumpall=f'echo "select 1;"; printf "%s" "{DUMPALL_END}"')
    assert run("backup", "app") == 0
    capsys.readouterr()
    assert run("list", "app", "--files") == 0
    listed = [line.split()[-1] for line in capsys.readouterr().out.splitlines()[1:-1]]
    assert listed == ["pg_dumpall.sql.000000"]  # the dump's parts, as stored
    assert run("restore", "app", "--dump", "latest", "--path", "pg_dumpall.sql", "--into", "restored/db") == 0
    folder = Path(env["BACKUP_DIR"]) / "restored" / "db"
    assert sorted(p.name for p in folder.iterdir()) == ["pg_dumpall.sql"]  # the parts joined back
    assert (folder / "pg_dumpall.sql").read_text() == "select 1;\n" + DUMPALL_END
    assert "restored pg_dumpall.sql from " in capsys.readouterr().out
    assert run("restore", "app", "--dump", "latest", "--path", "pg_dumpall.sql") == 64  # a dump's file goes --into
    assert run("restore", "app", "--dump", "latest", "--path", "other.sql", "--into", "restored/db2") == 2


def test_join_parts_in_order(tmp_path):
    from sidecar.actions.browse import _join_parts
    for n, text in enumerate(["a", "b", "c"]):
        (tmp_path / f"x.sql.{n:06d}").write_text(text)
    assert _join_parts(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["x.sql"] and (tmp_path / "x.sql").read_text() == "abc"


def _refused(*args, **kwargs):
    raise AssertionError("the sidecar parsed the archive")


def test_listing_and_restoring_a_path_parse_no_archive_in_the_sidecar(run, engine, env, data, worker, monkeypatch,
                                                                      capsys):
    """Issue 19: the members are read by a listing worker (`--list`), never by the sidecar's parser."""
    app = backed_up(run, engine, data)
    backups = Path(env["BACKUP_DIR"])
    monkeypatch.setattr("sidecar.tarball.extract._Pass.__init__", _refused)
    capsys.readouterr()
    assert run("list", "app", "--files", "--match", "*.txt", "--json") == 0
    found = json.loads(capsys.readouterr().out)
    assert found["members"] == 5 and [f["path"] for f in found["files"]] == ["a.txt"]
    assert found["files"][0]["mode"] == "-rw-r--r--" and found["files"][0]["size"] == 6
    assert run("restore", "app", "--volume", "data", "--path", "sub", "--into", "restored/app") == 0
    assert tree(backups / "restored" / "app")["sub/b.bin"] == tree(data)["sub/b.bin"]
    before = tree(data)
    (data / "a.txt").write_text("changed\n")
    assert run("restore", "app", "--volume", "data", "--path", "a.txt") == 0
    assert tree(data) == before and engine.state(app.id) is ContainerState.RUNNING
    assert run("restore", "app", "--volume", "data", "--path", "missing.txt") == 2  # decided from the worker's records
    listings = [s for s in engine.workers_run if s.purpose == "extract" and "--list" in s.command]
    assert len(listings) == 4 and all([(m.read_only) for m in s.mounts] == [True] for s in listings)
    assert engine.running_workers() == []


def test_listing_without_a_worker_is_refused_naming_the_setting(run, engine, data, monkeypatch, capsys):
    backed_up(run, engine, data)
    monkeypatch.setattr("sidecar.tarball.extract._Pass.__init__", _refused)
    assert run("list", "app", "--files") == 1
    said = capsys.readouterr().err
    assert "no worker container can run" in said and "BACKUP_WORKER_IMAGE" in said
