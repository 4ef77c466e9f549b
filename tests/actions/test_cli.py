"""The CLI's exit codes, on the fake engine (cli.Engine replaced)."""

from __future__ import annotations

import errno
import logging
import os
import socket
from pathlib import Path

import pytest

from sidecar.docker import preflight
from sidecar.actions import rotate
from sidecar.actions.sync import RemotePrune
from sidecar.core.errors import EngineError
from sidecar.store.storage import BackupStore

from .conftest import app_labels


def test_backup_exit_codes(run, engine, data, capsys):
    engine.add_container("app-1", app_labels(), {"/data": data})
    assert run("backup", "app") == 0
    assert "app: wrote" in capsys.readouterr().out
    engine.fail("read_path", EngineError("gone"), after_bytes=100)
    assert run("backup", "app") == 1
    assert "app: failure:" in capsys.readouterr().err
    assert run("backup", "nope") == 2
    assert run("backup") == 64


def test_backup_all_with_a_skipped_container_fails(run, engine, data, tmp_path, capsys):
    engine.add_container("app-1", app_labels(), {"/data": data})
    engine.add_container("bad-1", {"backup.enable": "true", "backup.strategy": "sideways"},
                         {"/x": tmp_path / "volumes" / "x"})
    assert run("backup", "--all") == 1
    assert "skipped bad-1" in capsys.readouterr().err


@pytest.mark.usefixtures("restore_worker")
def test_restore_exit_codes(run, engine, data, capsys):
    engine.add_container("app-1", app_labels(), {"/data": data})
    assert run("backup", "app") == 0
    assert run("restore", "app", "--volume", "data") == 1  # not empty, no --force
    assert "use --force" in capsys.readouterr().err
    assert run("restore", "app", "--volume", "data", "--force") == 0
    assert run("restore", "app", "--volume", "nope") == 2


def test_prune_fails_when_the_destination_fails_but_rotates_locally(run, engine, data, monkeypatch, capsys):
    engine.add_container("app-1", app_labels(), {"/data": data})
    assert run("backup", "app") == 0
    monkeypatch.setattr(rotate, "run_remote_prune", lambda *a, **kw: (RemotePrune("s3", error="store down"),))
    assert run("prune") == 1
    assert "prune failed: store down" in capsys.readouterr().err


def test_invalid_settings_exit_64(run, monkeypatch):
    monkeypatch.setenv("BACKUP_DIR", "relative")
    assert run("plan") == 64


def test_an_s3_endpoint_password_appears_in_no_output_nor_log(run, engine, data, monkeypatch, capsys, caplog):
    """Issue 11, secrets: every CLI command that touches the store, against an endpoint that
    does not answer, with the password in S3_ENDPOINT_URL; botocore quotes that URL in
    its errors. Then an invalid endpoint URL with a password: the settings error hides it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    for name, value in {"S3_BUCKET": "bucket", "S3_ENDPOINT_URL": f"http://user:secretpw@127.0.0.1:{port}",
                        "S3_ATTEMPTS": "2", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEYID", "AWS_SECRET_ACCESS_KEY": "sekrit",
                        "LOG_LEVEL": "debug", "LOG_FORMAT": "text"}.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.DEBUG, logger="sidecar")
    engine.add_container("app-1", app_labels(), {"/data": data})
    codes = [run("backup", "app"), run("sync"), run("list", "--remote"), run("prune"),
             run("restore", "app", "--volume", "data", "--from", "s3")]
    assert codes[0] == 0 and codes[1] != 0  # the backup is kept; the copy could not be made
    out = capsys.readouterr()
    said = out.out + out.err + "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "127.0.0.1" in said and "secretpw" not in said and "user:" not in said
    monkeypatch.setenv("S3_ENDPOINT_URL", "ftp://user:secretpw@127.0.0.1:9000")
    assert run("sync") == 64
    err = capsys.readouterr().err
    assert "S3_ENDPOINT_URL='ftp://****@127.0.0.1:9000' is invalid" in err and "secretpw" not in err


@pytest.mark.parametrize(("code", "said"), [(errno.ENOSPC, "is full"), (errno.EROFS, "is on a read-only filesystem")])
def test_a_backup_dir_that_fails_once_the_run_started_is_one_line_exit_1(run, engine, data, env, monkeypatch, capsys,
                                                                          code, said):
    """Past the checks (the folder was fine), then full or read-only: one line naming BACKUP_DIR,
    exit 1 as for any failed run (64 says "nothing was done, fix the setting")."""
    engine.add_container("app-1", app_labels(), {"/data": data})

    def failing(store):
        raise OSError(code, os.strerror(code), str(store.state_dir / "locks"))

    monkeypatch.setattr(BackupStore, "prepare", failing)
    assert run("backup", "app") == 1
    err = capsys.readouterr().err
    assert err == (f"backup-sidecar: BACKUP_DIR={env['BACKUP_DIR']} {said} (writing {env['BACKUP_DIR']}/.sidecar/locks: "
                   f"{os.strerror(code)}); {preflight.STORE_ERRORS[code][1]}\n")


def test_one_shot_commands_check_the_backup_dir_first(run, engine, env, tmp_path, capsys):
    Path(env["BACKUP_DIR"]).write_text("")  # a file where the folder should be
    for command in (["backup", "app"], ["list"], ["plan"], ["prune"], ["restore", "app", "--volume", "d"]):
        assert run(*command) == 64, command
        assert capsys.readouterr().err == (f"backup-sidecar: BACKUP_DIR={env['BACKUP_DIR']} is not a directory; "
                                           "expected a directory (mount a volume or host folder there)\n")
    assert engine.calls == []  # nothing reached the engine
