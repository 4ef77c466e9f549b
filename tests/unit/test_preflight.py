"""The checks every command makes first (sidecar/docker/preflight.py): the Docker socket, BACKUP_DIR,
and the one-line wording of a backup folder that is full, read-only or someone else's.

The tests run as root, whom permissions do not stop: what another user meets is checked in a
child process that runs as `nobody` (the CLI's own preflight, end to end)."""

from __future__ import annotations

import errno
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import pytest

from sidecar import cli
from sidecar.docker import preflight
from sidecar.docker.preflight import Access, PreflightError, check_backup_dir, check_docker_socket

NOBODY = 65534


@pytest.fixture
def unix_socket():
    with tempfile.TemporaryDirectory(prefix="pf-") as folder:
        path = Path(folder) / "docker.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(str(path))
            yield path


@pytest.fixture(params=[True, False], ids=["in-container", "on-host"])
def where(request, monkeypatch):
    monkeypatch.setattr(preflight, "in_container", lambda: request.param)
    return request.param


def _fails(call, *args) -> str:
    with pytest.raises(PreflightError) as caught:
        call(*args)
    message = str(caught.value)
    assert "\n" not in message and caught.value.exit_code == 64
    return message


@pytest.mark.parametrize(("host", "path", "setting"), [
    (None, "/var/run/docker.sock", "DOCKER_HOST unset (default unix:///var/run/docker.sock)"),
    ("unix:///run/user/1000/docker.sock", "/run/user/1000/docker.sock", "DOCKER_HOST=unix:///run/user/1000/docker.sock"),
    ("tcp://proxy:2375", None, "DOCKER_HOST=tcp://proxy:2375"),
    ("ssh://me@host", None, "DOCKER_HOST=ssh://me@host"),
])
def test_socket_path(host, path, setting):
    assert preflight.socket_path(host) == (path, setting)


@pytest.mark.parametrize("host", ["docker.sock", "tcp://", "npipe:////./pipe/docker_engine"])
def test_an_unsupported_docker_host_is_named(host):
    message = _fails(check_docker_socket, host)
    assert message.startswith(f"DOCKER_HOST={host} is not supported; expected unix://")


def test_a_missing_socket_says_how_to_mount_it(tmp_path, where):
    message = _fails(check_docker_socket, f"unix://{tmp_path}/docker.sock")
    assert message.startswith(f"DOCKER_HOST=unix://{tmp_path}/docker.sock: {tmp_path}/docker.sock does not exist")
    assert ("-v /var/run/docker.sock:/var/run/docker.sock" in message) is where


def test_a_file_that_is_no_socket(tmp_path):
    (tmp_path / "docker.sock").write_text("")
    message = _fails(check_docker_socket, f"unix://{tmp_path}/docker.sock")
    assert "is not a socket; expected the Docker engine's socket" in message


def test_a_socket_this_process_may_use_passes(unix_socket):
    check_docker_socket(f"unix://{unix_socket}")
    check_docker_socket("tcp://127.0.0.1:2375")  # remote: connecting tells


def test_a_refused_socket_names_its_group_and_the_fix(unix_socket, where):
    os.chown(unix_socket, 0, 4242)
    st = os.stat(unix_socket)
    message = preflight.socket_refused("DOCKER_HOST unset", str(unix_socket), st)
    assert "may not use it (owner 0:4242" in message
    if where:
        assert "group_add: [\"4242\"]" in message and "--group-add 4242" in message
    else:
        assert "usermod -aG 4242" in message
    assert preflight.GUIDE in message


def test_a_missing_backup_dir_is_created_for_writing_and_left_alone_for_reading(tmp_path):
    check_backup_dir(tmp_path / "a", Access.READ)
    assert not (tmp_path / "a").exists()
    check_backup_dir(tmp_path / "a" / "b", Access.WRITE)
    assert (tmp_path / "a" / "b").is_dir()
    assert oct((tmp_path / "a" / "b").stat().st_mode & 0o777) == "0o700"
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the write probe is gone


def test_a_backup_dir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    assert _fails(check_backup_dir, tmp_path / "f", Access.READ) == (
        f"BACKUP_DIR={tmp_path}/f is not a directory; expected a directory (mount a volume or host folder there)")


@pytest.mark.parametrize(("code", "said"), [
    (errno.EROFS, "is on a read-only filesystem"),
    (errno.ENOSPC, "is full"),
    (errno.EDQUOT, "is over its quota"),
])
def test_a_backup_dir_that_refuses_the_write_probe(tmp_path, monkeypatch, code, said):
    real_open = os.open

    def refusing(path, *args, **kwargs):
        if preflight.PROBE_PREFIX in str(path):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(preflight.os, "open", refusing)
    message = _fails(check_backup_dir, tmp_path, Access.WRITE)
    assert message.startswith(f"BACKUP_DIR={tmp_path} {said} (writing {tmp_path}/{preflight.PROBE_PREFIX}")
    check_backup_dir(tmp_path, Access.READ)  # reading commands still work


def test_a_full_backup_dir_is_found_before_any_write(tmp_path, monkeypatch):
    full = os.statvfs_result((4096, 4096, 100, 0, 0, 100, 0, 0, 0, 255))
    monkeypatch.setattr(preflight.os, "statvfs", lambda _path: full)
    message = _fails(check_backup_dir, tmp_path, Access.WRITE)
    assert message.startswith(f"BACKUP_DIR={tmp_path} is full") and "backup-sidecar prune" in message


def test_store_errors_are_recognised_by_kind_and_place(tmp_path):
    inside = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "daily" / "x.partial"))
    assert preflight.is_store_error(inside, tmp_path)
    assert not preflight.is_store_error(OSError(errno.ENOSPC, "full", "/elsewhere/x"), tmp_path)
    assert not preflight.is_store_error(OSError(errno.ENOENT, "gone", str(tmp_path / "x")), tmp_path)
    assert preflight.is_store_error(OSError(errno.EROFS, "Read-only file system"), tmp_path)  # a write: no name
    assert preflight.describe_store_error(tmp_path, inside) == (
        f"BACKUP_DIR={tmp_path} is full (writing {tmp_path}/daily/x.partial: No space left on device); expected "
        "free space: prune old archives (`backup-sidecar prune`), lower backup.keep, or give the volume more room")


def _as_nobody(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """The CLI's main() in a forked child that runs as nobody, with only `env` (the
    interpreter itself lives in root's home here, out of nobody's reach)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code, err = 99, io.StringIO()
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.environ.clear()
            os.environ.update(env)
            sys.stdout, sys.stderr = io.StringIO(), err
            code = cli.main(args)
        except BaseException:  # noqa: BLE001 - a traceback is what the test looks for
            err.write(traceback.format_exc())
        finally:
            os.write(write_end, json.dumps([code, err.getvalue()]).encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        code, err = json.loads(pipe.read() or "[98, \"no answer\"]")
    os.waitpid(pid, 0)
    return subprocess.CompletedProcess(args, code, "", err)


@pytest.fixture
def shared_tmp():
    """A folder `nobody` may enter (pytest's tmp_path is root's, mode 0700)."""
    with tempfile.TemporaryDirectory(prefix="pf-nobody-") as folder:
        os.chmod(folder, 0o755)
        yield Path(folder)


@pytest.mark.skipif(os.getuid() != 0, reason="runs a child as nobody")
def test_every_command_answers_a_root_owned_backup_dir_in_one_line(shared_tmp, unix_socket):
    os.chmod(unix_socket.parent, 0o755)
    os.chmod(unix_socket, 0o666)
    backups = shared_tmp / "backups"
    (backups / ".sidecar").mkdir(parents=True, mode=0o700)  # root's, as `docker run -v` leaves a host folder
    env = {"BACKUP_DIR": str(backups), "DOCKER_HOST": f"unix://{unix_socket}"}
    for command in (["backup", "app"], ["restore", "app", "--volume", "data"], ["prune"], ["sync"], ["run"]):
        done = _as_nobody(command, env)
        assert done.returncode == 64, (command, done.stderr)
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith(f"backup-sidecar: BACKUP_DIR: {backups} belongs to uid 0 (mode 755) and the "
                                      f"sidecar runs as uid {NOBODY}"), done.stderr
        assert f"chown -R {NOBODY}:{NOBODY} " in done.stderr
    for command in (["list"], ["plan"]):  # reading: the root-owned .sidecar (0700) is what it cannot read
        done = _as_nobody(command, env)
        assert done.returncode == 64 and f"BACKUP_DIR: {backups}/.sidecar belongs to uid 0" in done.stderr, done.stderr


@pytest.mark.skipif(os.getuid() != 0, reason="runs a child as nobody")
def test_every_command_answers_a_refused_socket_in_one_line(shared_tmp, unix_socket):
    os.chmod(unix_socket.parent, 0o755)
    os.chown(unix_socket, 0, 4242)
    os.chmod(unix_socket, 0o660)
    env = {"BACKUP_DIR": str(shared_tmp), "DOCKER_HOST": f"unix://{unix_socket}"}
    for command in (["backup", "app"], ["list"], ["plan"], ["restore-image", "x"], ["prune"], ["sync"]):
        done = _as_nobody(command, env)
        assert done.returncode == 64, (command, done.stderr)
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
        assert f"uid {NOBODY} (groups {NOBODY}) may not use it (owner 0:4242, mode 660)" in done.stderr


@pytest.mark.skipif(os.getuid() != 0, reason="runs a child as nobody")
def test_an_engine_that_does_not_answer_is_a_setting_to_fix(shared_tmp, unix_socket):
    os.chmod(unix_socket.parent, 0o755)
    os.chmod(unix_socket, 0o666)  # bound, never listening: connections are refused
    done = _as_nobody(["plan"], {"BACKUP_DIR": str(shared_tmp), "DOCKER_HOST": f"unix://{unix_socket}"})
    assert done.returncode == 64 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"backup-sidecar: DOCKER_HOST=unix://{unix_socket}: the Docker engine does not "
                                  "answer ("), done.stderr
