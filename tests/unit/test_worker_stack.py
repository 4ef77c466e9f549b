"""The stack worker's archive, read back by the checked extractor: bytes, layout, what is left out."""

from __future__ import annotations

import json
import os

import pyrage
import pytest

from sidecar.tarball.extract import restore_into
from sidecar.core.keys import DecryptionKeys, EncryptionConfig
from sidecar.worker.archive import write_keys
from sidecar.worker.stack import Part, StackJob, run_stack


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "proj"
    (root / "conf" / "sub").mkdir(parents=True)
    (root / "dynamic").mkdir()
    (root / "data").mkdir()
    (root / "docker-compose.yml").write_text("services: {}\n")
    (root / ".env").write_text("TAG=1\n")
    (root / "conf" / "app.conf").write_text("listen 80\n")
    (root / "conf" / "sub" / "x.bak").write_text("old\n")
    (root / "conf" / "link").symlink_to("app.conf")
    (root / "conf" / "escape").symlink_to("/etc/passwd")
    (root / "data" / "blob").write_bytes(os.urandom(300_000))
    secret = tmp_path / "elsewhere" / "pw.txt"
    secret.parent.mkdir()
    secret.write_text("s3cret-value\n")
    os.chmod(secret, 0o600)
    return root, secret


def job(tmp_path, root, secret, **more):
    output = tmp_path / "out.tar.zst"
    output.write_bytes(b"")
    parts = (Part(root / "docker-compose.yml", "docker-compose.yml"), Part(root / ".env", ".env", True),
             Part(root / "conf", "conf"), Part(root / "data", "data"), Part(root / "missing.env", "missing.env"),
             Part(root / "absent", "absent", optional=True), Part(secret, "_outside/srv/keys/pw.txt"))
    return StackJob(output, parts, max_bytes=100_000, exclude=("*.bak",), **more)


def test_stack_archive_restores_to_the_project_layout(tmp_path, project):
    root, secret = project
    lines = []
    outcome = run_stack(job(tmp_path, root, secret), lines.append)
    into = tmp_path / "restored"
    into.mkdir()
    restore_into(tmp_path / "out.tar.zst", into, require_checksum=False)
    assert (into / "docker-compose.yml").read_text() == "services: {}\n"
    assert (into / ".env").read_text() == "TAG=1\n"
    assert (into / "conf" / "app.conf").read_text() == "listen 80\n"
    assert os.readlink(into / "conf" / "link") == "app.conf"
    assert (into / "_outside" / "srv" / "keys" / "pw.txt").read_text() == "s3cret-value\n"
    assert (into / "_outside" / "srv" / "keys" / "pw.txt").stat().st_mode & 0o777 == 0o600
    assert not (into / "conf" / "sub" / "x.bak").exists()  # excluded
    assert not (into / "data").exists() and not (into / "conf" / "escape").exists()
    left = {r["part"]: r for r in lines if r["event"] == "left_out"}
    assert left["data"]["reason"] == "too big" and left["data"]["bytes"] == 300_000
    assert left["missing.env"]["reason"] == "missing"
    assert left["conf/escape"]["reason"] == "a symlink to /etc/passwd"
    assert "absent" not in left  # optional: not a word
    assert outcome.size == (tmp_path / "out.tar.zst").stat().st_size
    assert "s3cret" not in json.dumps(lines)


def test_stack_archive_encrypted_with_the_recipients(tmp_path, project):
    root, secret = project
    identity = pyrage.x25519.Identity.generate()
    keys = tmp_path / "keys"
    write_keys(keys, EncryptionConfig(recipients=(str(identity.to_public()),)))
    spec = job(tmp_path, root, secret, keys_file=keys)
    run_stack(spec, lambda _line: None)
    assert not keys.exists()  # read once, removed
    encrypted = tmp_path / "out.tar.zst.age"
    spec.output.rename(encrypted)
    assert b"s3cret" not in encrypted.read_bytes()
    into = tmp_path / "restored"
    into.mkdir()
    restore_into(encrypted, into, DecryptionKeys((identity,), None), require_checksum=False)
    assert (into / "_outside" / "srv" / "keys" / "pw.txt").read_text() == "s3cret-value\n"


@pytest.mark.parametrize("arc", ["../x", "a/../../x", "/", ".."])
def test_a_part_stored_outside_is_refused(arc):
    with pytest.raises(ValueError):
        Part.parse("/x", arc)


def test_parts_pair_up_in_order():
    parts = Part.parse_all(["/s/a", "/s/b"], ["a", "x/b"], ["x/b"])
    assert [(str(p.src), p.arc, p.optional) for p in parts] == [("/s/a", "a", False), ("/s/b", "x/b", True)]
    with pytest.raises(ValueError):
        Part.parse_all(["/s/a"], [], [])
