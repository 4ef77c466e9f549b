"""`python -m sidecar.worker.extract` without Docker: its JSON lines (`started` only before
the first write), exit codes, the checksum the sidecar verified, the keys file, and the
staged restore (`--staged`: verify, then `room`, `go` or `quit` from the sidecar)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import queue
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pyrage
import pytest

from sidecar.tarball import extract
from sidecar.tarball.extract import EXIT_FAILED, EXIT_OK, EXIT_REFUSED
from sidecar.core.keys import DecryptionKeys
from sidecar.core.model import WORKER_PARENT_ENV, Compression
from sidecar.worker import extract as worker

from .test_extract import END, directory, file, symlink, write

REPO = Path(__file__).resolve().parents[2]


def _run(capsys, *argv, commands: tuple[str, ...] = ()) -> tuple[int, list[dict]]:
    lines: queue.Queue[str] = queue.Queue()
    for line in commands:
        lines.put(line)
    code = worker.main([str(a) for a in argv], lines)
    return code, [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.fixture
def into(tmp_path):
    folder = tmp_path / "volume"
    folder.mkdir()
    return folder


def test_a_restore_says_started_then_its_result(tmp_path, into, capsys):
    raw = file(b"a.txt", b"alpha") + END
    path = write(tmp_path, raw)
    code, events = _run(capsys, "--archive", path, "--into", into, "--sha256", hashlib.sha256(raw).hexdigest())
    assert code == EXIT_OK
    assert [e["event"] for e in events] == ["started", "result"]
    assert events[-1]["members"] == 1 and (into / "a.txt").read_bytes() == b"alpha"


def test_a_listing_worker_says_each_member_then_the_summary_and_writes_nothing(tmp_path, into, capsys):
    raw = directory(b"sub") + file(b"sub/a.db", b"alpha", 0o640) + symlink(b"link", b"sub/a.db") + END
    path = write(tmp_path, raw)
    code, events = _run(capsys, "--archive", path, "--into", into, "--list")
    assert code == EXIT_OK and [e["event"] for e in events] == ["member"] * 3 + ["result"]
    assert [(e["name"], e["kind"], e["mode"], e["realsize"], e["linkname"]) for e in events[:3]] == [
        ("sub", "dir", 0o755, 0, ""), ("sub/a.db", "file", 0o640, 5, ""), ("link", "symlink", 0o777, 0, "sub/a.db")]
    done = events[-1]
    assert done["members"] == 3 and done["sha256"] == hashlib.sha256(raw).hexdigest()
    assert done["protocol"] == worker.PROTOCOL and done["expanded"] > 0
    assert list(into.iterdir()) == []
    # --only as a dump's restore: anything but a matching regular file is refused, by the same policy.
    code, events = _run(capsys, "--archive", path, "--into", into, "--list", "--only=sub/*.db")
    assert code == EXIT_REFUSED and events[-1]["kind"] == "UnsafeArchive"


def test_a_checksum_file_other_than_what_the_sidecar_verified_is_refused_before_any_write(tmp_path, into, capsys):
    path = write(tmp_path, file(b"a.txt", b"alpha") + END)
    code, events = _run(capsys, "--archive", path, "--into", into, "--sha256", "0" * 64)
    assert code == EXIT_REFUSED
    assert [e["event"] for e in events] == ["error"] and events[0]["refused"]
    assert list(into.iterdir()) == []


def test_a_refused_member_is_an_error_after_started(tmp_path, into, capsys):
    path = write(tmp_path, symlink(b"d", b"/") + file(b"d/ESCAPED", b"x") + END)
    code, events = _run(capsys, "--archive", path, "--into", into)
    assert code == EXIT_REFUSED
    assert [e["event"] for e in events] == ["started", "error"] and "absolute path" in events[-1]["message"]
    assert list(into.iterdir()) == []


def test_an_unreadable_keys_file_is_a_failure(tmp_path, into, capsys):
    path = write(tmp_path, file(b"a.txt", b"alpha") + END)
    keys = tmp_path / "k.keys"
    keys.write_text("not json")
    code, events = _run(capsys, "--archive", path, "--into", into, "--keys-file", keys)
    assert code == EXIT_FAILED and events[-1]["event"] == "error" and not events[-1]["refused"]


def test_keys_round_trip_through_a_0600_file(tmp_path):
    identity = pyrage.x25519.Identity.generate()
    path = tmp_path / "k.keys"
    worker.write_keys(path, DecryptionKeys((identity,), "pass"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    back = worker.read_keys(path)
    assert [str(i) for i in back.identities] == [str(identity)] and back.passphrase == "pass"
    with pytest.raises(FileExistsError):  # created new, never written over
        worker.write_keys(path, DecryptionKeys(passphrase="other"))


# --- --staged: one worker for a volume's whole restore (sidecar/readers/unpack.py, StagedRestore) ------

def test_a_staged_worker_verifies_then_checks_the_room_then_writes_on_go(tmp_path, into, capsys):
    raw = directory(b"d/") + file(b"d/a.txt", b"alpha" * 1000) + END
    path = write(tmp_path, raw)
    code, events = _run(capsys, "--archive", path, "--into", into, "--staged", commands=("room", "go"))
    assert code == EXIT_OK
    assert [e["event"] for e in events] == ["verified", "room", "started", "result"]
    verified, room = events[0], events[1]
    assert verified["protocol"] == worker.PROTOCOL and verified["members"] == 2
    assert verified["sha256"] == hashlib.sha256(raw).hexdigest() and verified["expanded"] >= 5000
    assert room["fits"] and room["needed"] == verified["expanded"] and room["free"] >= room["needed"]
    assert (into / "d" / "a.txt").read_bytes() == b"alpha" * 1000


def test_a_staged_worker_told_to_quit_writes_nothing(tmp_path, into, capsys):
    path = write(tmp_path, file(b"a.txt", b"alpha") + END, compression=Compression.ZSTD)
    code, events = _run(capsys, "--archive", path, "--into", into, "--staged", commands=("room", "quit"))
    assert code == worker.EXIT_QUIT and [e["event"] for e in events] == ["verified", "room"]
    assert list(into.iterdir()) == []


def test_a_staged_worker_says_when_the_archive_does_not_fit(tmp_path, into, capsys, monkeypatch):
    monkeypatch.setattr(worker, "room", lambda into, needed, replacing: needed - 1)
    path = write(tmp_path, file(b"a.txt", b"alpha") + END)
    code, events = _run(capsys, "--archive", path, "--into", into, "--staged", commands=("room", "quit"))
    assert events[1]["event"] == "room" and not events[1]["fits"] and list(into.iterdir()) == []


def test_a_staged_worker_refuses_before_it_waits_and_names_the_refusal(tmp_path, into, capsys):
    path = write(tmp_path, symlink(b"d", b"/") + file(b"d/ESCAPED", b"x") + END)
    code, events = _run(capsys, "--archive", path, "--into", into, "--staged", commands=("go",))
    assert code == EXIT_REFUSED and [e["event"] for e in events] == ["error"]
    assert events[0]["kind"] == "UnsafeArchive" and "absolute path" in events[0]["message"]
    assert list(into.iterdir()) == []


def test_a_staged_worker_needs_the_checksum_file(tmp_path, into, capsys):
    path = write(tmp_path, file(b"a.txt", b"alpha") + END)
    path.with_name(path.name + ".sha256").unlink()
    code, events = _run(capsys, "--archive", path, "--into", into, "--staged", commands=("go",))
    assert code == EXIT_REFUSED and ".sha256 beside it" in events[0]["message"] and list(into.iterdir()) == []


class _SwapOnGo(queue.Queue):
    """The sidecar's go, with the archive file changed in place between the two reads."""

    def __init__(self, path: Path, other: bytes):
        super().__init__()
        self.path, self.other = path, other
        self.put("go")

    def get(self, *args, **kwargs):
        self.path.write_bytes(self.other)
        return super().get(*args, **kwargs)


def test_an_archive_changed_between_the_verify_and_the_write_is_refused(tmp_path, into, capsys):
    path = write(tmp_path, file(b"a.txt", b"alpha") + END)
    code = worker.main(["--archive", str(path), "--into", str(into), "--staged"],
                       _SwapOnGo(path, file(b"a.txt", b"omega") + END))
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == EXIT_REFUSED and events[-1]["event"] == "error" and "SHA-256 is" in events[-1]["message"]


def test_the_sidecars_lines_reach_a_staged_worker_on_its_stdin(tmp_path, into):
    """The real process, its stdin as the attach is (WORKER_PARENT_ENV): room, then go."""
    path = write(tmp_path, file(b"a.txt", b"alpha") + END, compression=Compression.ZSTD)
    proc = subprocess.Popen([sys.executable, "-m", "sidecar.worker.extract", "--archive", str(path), "--into",
                             str(into), "--staged"], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, WORKER_PARENT_ENV: "stdin"})
    try:
        assert json.loads(proc.stdout.readline())["event"] == "verified"
        assert list(into.iterdir()) == []  # verified, waiting: nothing written
        proc.stdin.write("room\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["event"] == "room"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == EXIT_OK
        assert [json.loads(line)["event"] for line in proc.stdout] == ["started", "result"]
        assert (into / "a.txt").read_bytes() == b"alpha"
    finally:
        proc.stdin.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- --one-pass: the archive read once into a staging folder, swapped in (issue 19's speed) ----------

@pytest.fixture
def old_volume(into):
    (into / "old.txt").write_text("old bytes")
    (into / ".dot").write_text("old dot")
    return into


def _passes(monkeypatch) -> list[int]:
    """Counts the reads of the archive (sidecar.tarball.extract._Pass: one per decompression)."""
    from sidecar.tarball import extract as checked
    count, real = [], checked._Pass.__init__

    def counting(self, *args, **kwargs):
        count.append(1)
        real(self, *args, **kwargs)

    monkeypatch.setattr(checked._Pass, "__init__", counting)
    return count


def test_a_one_pass_worker_reads_the_archive_once_and_swaps_it_in(tmp_path, old_volume, capsys, monkeypatch):
    raw = directory(b"d/") + file(b"d/a.txt", b"alpha" * 1000) + file(b"b.txt", b"beta") + END
    path = write(tmp_path, raw, compression=Compression.ZSTD)
    passes = _passes(monkeypatch)
    code, events = _run(capsys, "--archive", path, "--into", old_volume, "--one-pass", "--replacing",
                        commands=("go", "swap"))
    assert code == EXIT_OK and len(passes) == 1  # today's staged worker reads it twice (verify, then write)
    assert [e["event"] for e in events] == ["ready", "started", "staged", "result"]
    assert events[0]["protocol"] == worker.PROTOCOL and events[-1]["members"] == 3
    assert sorted(os.listdir(old_volume)) == ["b.txt", "d"]  # the old entries and the staging folder gone
    assert (old_volume / "d" / "a.txt").read_bytes() == b"alpha" * 1000


def test_a_one_pass_refusal_late_in_the_archive_leaves_the_old_volume_as_it_was(tmp_path, old_volume, capsys):
    files = b"".join(file(b"f%d.txt" % i, b"new" * 400) for i in range(30))
    path = write(tmp_path, files + symlink(b"d", b"/") + file(b"d/ESCAPED", b"x") + END)
    os.utime(old_volume, ns=(10**18, 10**18))
    code, events = _run(capsys, "--archive", path, "--into", old_volume, "--one-pass", "--replacing",
                        commands=("go", "swap"))
    assert os.stat(old_volume).st_mtime_ns == 10**18  # the root's times too
    assert code == EXIT_REFUSED and [e["event"] for e in events] == ["ready", "started", "error"]
    assert events[-1]["kind"] == "UnsafeArchive"
    assert sorted(os.listdir(old_volume)) == [".dot", "old.txt"] and (old_volume / "old.txt").read_text() == "old bytes"


def test_a_one_pass_worker_told_to_quit_after_staging_leaves_the_volume_as_it_was(tmp_path, old_volume, capsys):
    path = write(tmp_path, file(b"a.txt", b"alpha") + END)
    code, events = _run(capsys, "--archive", path, "--into", old_volume, "--one-pass", commands=("go", "quit"))
    assert code == worker.EXIT_QUIT and [e["event"] for e in events] == ["ready", "started", "staged"]
    assert sorted(os.listdir(old_volume)) == [".dot", "old.txt"]


def test_a_volume_that_cannot_hold_both_trees_falls_back_to_two_passes(tmp_path, old_volume, capsys, monkeypatch):
    """The budget (what the two-pass path's room check allows) is crossed while staging: the
    staging folder goes, the worker verifies, checks the room, empties the volume and writes."""
    monkeypatch.setattr(worker, "room", lambda into, needed, replacing: needed)  # nothing free beyond what is asked
    monkeypatch.setattr(worker, "usage", lambda into, leave=(): 0)
    raw = file(b"a.txt", b"alpha" * 1000) + END
    path = write(tmp_path, raw)
    code, events = _run(capsys, "--archive", path, "--into", old_volume, "--one-pass", "--replacing",
                        commands=("go", "room", "go"))
    assert code == EXIT_OK
    assert [e["event"] for e in events] == ["ready", "started", "fallback", "verified", "room", "started", "result"]
    assert "cannot hold the old and the new contents" in events[2]["reason"]
    assert os.listdir(old_volume) == ["a.txt"] and (old_volume / "a.txt").read_bytes() == b"alpha" * 1000


def test_enospc_while_staging_falls_back_and_a_refusal_then_still_leaves_the_volume(tmp_path, old_volume, capsys,
                                                                                       monkeypatch):
    real = worker.extract

    def full(archive, into, *args, **kwargs):
        if into.name.startswith(worker.staging.STAGING_PREFIX):
            (into / "partial").write_text("half")
            raise OSError(28, "No space left on device")
        return real(archive, into, *args, **kwargs)

    monkeypatch.setattr(worker, "extract", full)
    path = write(tmp_path, file(b"a.txt", b"alpha") + symlink(b"d", b"/") + END)
    code, events = _run(capsys, "--archive", path, "--into", old_volume, "--one-pass", "--replacing",
                        commands=("go", "room", "go"))
    assert code == EXIT_REFUSED and [e["event"] for e in events] == ["ready", "started", "fallback", "error"]
    assert "No space left" in events[2]["reason"]
    assert sorted(os.listdir(old_volume)) == [".dot", "old.txt"]  # refused by the verify: never emptied


def test_a_one_pass_worker_whose_sidecar_is_gone_removes_its_staging_folder(tmp_path, old_volume, capsys,
                                                                            monkeypatch):
    """watch_parent runs ON_ORPHAN before it ends the worker: killed while staging, the volume
    is as it was (no hidden folder left for the app, or the next backup, to find)."""
    from sidecar import worker as package
    real, seen = worker.extract, []

    def orphaned(archive, into, *args, **kwargs):
        summary = real(archive, into, *args, **kwargs)
        seen.append(sorted(os.listdir(old_volume)))
        for cleanup in list(package.ON_ORPHAN):  # what the watching thread does
            cleanup()
        seen.append(sorted(os.listdir(old_volume)))
        return summary

    monkeypatch.setattr(worker, "extract", orphaned)
    os.utime(old_volume, ns=(10**18, 10**18))
    path = write(tmp_path, file(b"a.txt", b"alpha") + END)
    code, _ = _run(capsys, "--archive", path, "--into", old_volume, "--one-pass", commands=("go", "quit"))
    assert code == worker.EXIT_QUIT and len(seen[0]) == 3 and seen[1] == [".dot", "old.txt"]
    assert os.stat(old_volume).st_mtime_ns == 10**18 and package.ON_ORPHAN == []


def test_a_swap_that_fails_before_moving_anything_leaves_no_staging_folder(tmp_path, old_volume, capsys,
                                                                          monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(worker.staging.os, "rename", refuse)
    path = write(tmp_path, file(b"a.txt", b"alpha") + END)
    code, events = _run(capsys, "--archive", path, "--into", old_volume, "--one-pass", commands=("go", "swap"))
    assert code == EXIT_FAILED and events[-1]["event"] == "error" and "not permitted" in events[-1]["message"]
    assert sorted(os.listdir(old_volume)) == [".dot", "old.txt"]


# --- --stream: a preset's dump or an image export, checked, then its bytes on the data channel

def _stream(capsys, tmp_path, path, kind: str, commands=("go",)) -> tuple[int, list[dict], bytes]:
    """The worker's --stream KIND in process: its records (stdout here: main's data_fd is a file)
    and the bytes it sent."""
    out = tmp_path / f"sent-{kind}"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    lines: queue.Queue[str] = queue.Queue()
    for line in commands:
        lines.put(line)
    try:
        code = worker.main(["--archive", str(path), "--into", str(tmp_path), "--stream", kind], lines, data_fd=fd)
    finally:
        os.close(fd)
    return code, [json.loads(line) for line in capsys.readouterr().out.splitlines()], out.read_bytes()


DUMP = file(b"db.sql.000000", b"SELECT 1;") + file(b"db.sql.000001", b"\nSELECT 2;\n") + END


def test_a_streaming_worker_checks_the_dump_then_sends_its_bytes_only_on_go(tmp_path, capsys):
    path = write(tmp_path, DUMP, "app_postgres+dump_2026-01-01_daily.tar", Compression.ZSTD)
    code, events, sent = _stream(capsys, tmp_path, path, "dump")
    assert code == EXIT_OK and sent == b"SELECT 1;\nSELECT 2;\n"
    assert [e["event"] for e in events] == ["verified", "started", "result"]
    verified, done = events[0], events[-1]
    assert verified["file"] == "db.sql" and verified["bytes"] == len(sent) and verified["protocol"] == worker.PROTOCOL
    assert done["bytes"] == len(sent) and done["sha256"] == verified["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    code, events, sent = _stream(capsys, tmp_path, path, "dump", commands=("quit",))
    assert code == worker.EXIT_QUIT and [e["event"] for e in events] == ["verified"] and sent == b""


@pytest.mark.parametrize("raw", [
    file(b"db.sql.000001", b"x") + END,  # not from part 0
    file(b"db.sql.000000", b"a") + file(b"db.sql.000002", b"b") + END,  # a part missing
    file(b"db.sql.000000", b"a") + file(b"other.sql.000001", b"b") + END,  # two files
    file(b"db.sql.000000", b"a") + symlink(b"db.sql.000001", b"/etc/shadow") + END,  # not a regular file
    file(b"usr/local/bin/backdoor", b"#!/bin/sh\n", 0o4755) + END,  # issue 19 item 9's member
    directory(b"db.sql.000000") + END,
    END,  # nothing
])
def test_a_crafted_dump_archive_is_refused_before_anything_is_sent(tmp_path, capsys, raw):
    path = write(tmp_path, raw)
    code, events, sent = _stream(capsys, tmp_path, path, "dump")
    assert code == EXIT_REFUSED and events[-1]["event"] == "error" and events[-1]["refused"]
    assert "verified" not in [e["event"] for e in events] and sent == b""


class _ChangesTheFile(queue.Queue):
    """The sidecar's go, after the archive was changed in place (same inode) since the check."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def get(self, block=True, timeout=None):
        data = bytearray(self.path.read_bytes())
        data[600] ^= 0x01  # inside the first part's data: the parser accepts it, the hash does not
        with open(self.path, "r+b") as f:
            f.write(bytes(data))
        return "go"


def test_an_archive_changed_after_its_check_is_refused_with_its_last_piece_held_back(tmp_path, capsys):
    path = write(tmp_path, DUMP)
    out = tmp_path / "sent"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        code = worker.main(["--archive", str(path), "--into", str(tmp_path), "--stream", "dump"],
                           _ChangesTheFile(path), data_fd=fd)
    finally:
        os.close(fd)
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == EXIT_REFUSED and events[-1]["kind"] == "ChecksumMismatch"
    assert len(out.read_bytes()) < len(b"SELECT 1;\nSELECT 2;\n")  # the client never gets the whole dump


def test_streaming_a_dump_tar_sends_files_and_folders_only(tmp_path, capsys):
    inner = directory(b"01BLOCK") + file(b"01BLOCK/meta.json", b"{}") + END
    path = write(tmp_path, file(b"snapshot.tar.000000", inner) + END)
    code, events, sent = _stream(capsys, tmp_path, path, "files")
    assert code == EXIT_OK and events[0]["bytes"] == len(sent)
    with tarfile.open(fileobj=io.BytesIO(sent)) as tar:
        assert [(m.name, m.type) for m in tar] == [("01BLOCK", tarfile.DIRTYPE), ("01BLOCK/meta.json", tarfile.REGTYPE)]
    inner = directory(b"01BLOCK") + symlink(b"01BLOCK/out", b"/etc") + END
    path = write(tmp_path, file(b"snapshot.tar.000000", inner) + END)
    code, events, sent = _stream(capsys, tmp_path, path, "files")
    assert code == EXIT_REFUSED and [e["event"] for e in events] == ["error"] and sent == b""


def test_streaming_an_image_export_sends_the_canonical_tar(tmp_path, capsys):
    raw = directory(b"layer") + file(b"layer/layer.tar", b"x" * 700) + file(b"manifest.json", b"[]") + END
    path = write(tmp_path, raw)
    code, events, sent = _stream(capsys, tmp_path, path, "canonical")
    with extract.open_archive(path) as archive:
        assert code == EXIT_OK and sent == b"".join(extract.canonical_tar(archive))
    assert events[0]["file"] is None and events[0]["bytes"] == len(sent)
