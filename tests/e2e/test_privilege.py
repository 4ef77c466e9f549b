"""The image's own privileges: a non-root user without installers, the Docker socket through
its group, and a backup volume written by an older image that ran as root (found, named,
handed over by a root start that then drops to the image's user)."""

from __future__ import annotations

import hashlib
import os

import docker.errors

from sidecar.readers.worker import IMAGE_LABEL, IMAGE_LABEL_VALUE

SOCKET = "/var/run/docker.sock"


def _run(lab, image, command, user=None, **kwargs) -> tuple[int, str]:
    try:
        out = lab.client.containers.run(image, command, user=user, remove=True, stdout=True, stderr=True,
                                        network_mode="none", **kwargs)
        return 0, out.decode()
    except docker.errors.ContainerError as err:
        return err.exit_status, (err.stderr or b"").decode()


def _image_uid(lab, image) -> int:
    uid = lab.client.images.get(image).attrs["Config"]["User"].partition(":")[0]
    assert uid not in ("", "0", "root")
    return int(uid)


def test_the_image_runs_as_a_user_without_installers(lab, worker_image):
    uid = _image_uid(lab, worker_image)
    code, out = _run(lab, worker_image, ["sh", "-c", "id -u; ls -ldn /backups; "
                                         "python -c 'import sidecar.cli' && echo imports; "
                                         "python -c 'import pip' 2>/dev/null || echo no-pip; "
                                         "python -c 'import setuptools' 2>/dev/null || echo no-setuptools; "
                                         "command -v gcc cc >/dev/null || echo no-compiler"])
    assert code == 0, out
    lines = out.split("\n")
    assert lines[0] == str(uid)
    assert lines[1].startswith("drwx------") and f" {uid} {uid} " in lines[1]
    assert lines[2:6] == ["imports", "no-pip", "no-setuptools", "no-compiler"]


def test_the_socket_is_reached_through_its_group(lab, worker_image):
    gid = os.stat(SOCKET).st_gid
    env = {"BACKUP_PROJECT": lab.project}
    volumes = {SOCKET: {"bind": SOCKET, "mode": "rw"}}
    code, err = _run(lab, worker_image, ["run"], environment=env, volumes=volumes)
    assert code == 64
    assert f"group_add: [\"{gid}\"]" in err and "may not use it" in err, err
    code, out = _run(lab, worker_image, ["plan"], environment=env, volumes=volumes, group_add=[gid])
    assert code == 0 and out.startswith(f"scope: Compose project '{lab.project}'"), out
    # One-shot commands check what `run` checks (they skipped the entrypoint's checks before).
    # (The backup folder mounted, so no anonymous volume is left behind; the socket is checked first.)
    mounts = {**volumes, str(lab.backup_dir): {"bind": "/backups", "mode": "rw"}}
    for command in (["backup", "app"], ["list"], ["plan"], ["restore", "app", "--volume", "data"]):
        code, err = _run(lab, worker_image, command, environment=env, volumes=mounts)
        assert code == 64 and err.count("\n") == 1 and "Traceback" not in err, (command, err)
        assert err.startswith("backup-sidecar: DOCKER_HOST unset (default unix:///var/run/docker.sock): uid "), err
        assert f"--group-add {gid}" in err, err


def test_a_host_folder_docker_run_made_as_root_is_named_by_every_command(lab, worker_image):
    """`docker run -v /new/folder:/backups` creates the folder as root's: each command says so
    in one line, with the fix, instead of a traceback (issue 18)."""
    uid = _image_uid(lab, worker_image)
    gid = os.stat(SOCKET).st_gid
    folder = lab.backup_dir / "made-by-docker"  # does not exist: the engine creates it, root's, 0755
    mounts = {str(folder): {"bind": "/backups", "mode": "rw"}, SOCKET: {"bind": SOCKET, "mode": "rw"}}
    env = {"BACKUP_PROJECT": lab.project}
    for command in (["backup", "app"], ["restore", "app", "--volume", "data"], ["prune"], ["sync"]):
        code, err = _run(lab, worker_image, command, environment=env, volumes=mounts, group_add=[gid])
        assert code == 64 and err.count("\n") == 1 and "Traceback" not in err, (command, err)
        assert err.startswith(f"backup-sidecar: BACKUP_DIR: /backups belongs to uid 0 (mode 755) and the sidecar runs "
                              f"as uid {uid}"), err
        assert f"chown -R {uid}:{uid} FOLDER" in err, err
    assert folder.stat().st_uid == 0 and list(folder.iterdir()) == []  # nothing written
    code, out = _run(lab, worker_image, ["list"], environment=env, volumes=mounts, group_add=[gid])
    assert code == 0 and out.startswith("no archives in /backups"), out  # reading needs no more


def test_the_image_carries_the_label_a_host_cli_finds_it_by(lab, worker_image):
    assert lab.client.images.get(worker_image).labels.get(IMAGE_LABEL) == IMAGE_LABEL_VALUE


def test_a_backup_folder_left_by_a_root_image_is_named_and_handed_over(lab, worker_image):
    uid = _image_uid(lab, worker_image)
    daily = lab.backup_dir / "daily"
    daily.mkdir(mode=0o700)
    archive = daily / "app_data_2026-01-01_daily.tar"
    archive.write_bytes(b"\0" * 1024)  # what an image that ran as root left: root's, 0600
    checksum = daily / f"{archive.name}.sha256"
    checksum.write_text(f"{hashlib.sha256(archive.read_bytes()).hexdigest()}  {archive.name}\n")
    for path in (archive, checksum):
        path.chmod(0o600)
    os.chown(lab.backup_dir, uid, uid)  # even with the top folder handed over, its content is not
    mounts = {str(lab.backup_dir): {"bind": "/backups", "mode": "rw"}, SOCKET: {"bind": SOCKET, "mode": "rw"}}
    env = {"BACKUP_PROJECT": lab.project}
    gid = os.stat(SOCKET).st_gid

    code, err = _run(lab, worker_image, ["run"], environment=env, volumes=mounts, group_add=[gid])
    assert code == 64
    assert "/backups/daily belongs to uid 0" in err and f"chown -R {uid}:{uid}" in err, err

    # Started as root: the folder is handed over, then the command runs as the image's user
    # with the socket's group and no capabilities.
    code, out = _run(lab, worker_image, ["sh", "-c", "id -u; id -G; grep CapEff /proc/self/status"], user="0",
                     environment=env, volumes=mounts)
    assert code == 0, out
    said = [line for line in out.split("\n") if line.startswith("backup-sidecar: ")]
    assert said == [f"backup-sidecar: gave 3 entries of BACKUP_DIR=/backups to uid {uid}"], out
    lines = [line for line in out.split("\n") if line not in said]
    assert lines[0] == str(uid) and str(gid) in lines[1].split(), out
    assert lines[2] == "CapEff:\t0000000000000000"
    assert all(p.stat().st_uid == uid for p in (daily, archive, checksum))
    assert oct(archive.stat().st_mode & 0o777) == "0o600"
    code, out = _run(lab, worker_image, ["list"], environment=env, volumes=mounts, group_add=[gid])
    assert code == 0 and "app" in out, out
