"""`python -m sidecar.worker.extract` without Docker: its JSON lines (`started` only before
the first write), exit codes, the checksum the sidecar verified, and the keys file."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pyrage
import pytest

from sidecar.tarball.extract import EXIT_FAILED, EXIT_OK, EXIT_REFUSED
from sidecar.core.keys import DecryptionKeys
from sidecar.worker import extract as worker

from .test_extract import END, file, symlink, write


def _run(capsys, *argv) -> tuple[int, list[dict]]:
    code = worker.main([str(a) for a in argv])
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
