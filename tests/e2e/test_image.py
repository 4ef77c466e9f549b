"""The sidecar as users run it: its built image, talking to the engine through the
mounted socket, writing to a mounted backup folder."""

from __future__ import annotations


import docker.errors

from .support import extract_archive, wait_for

SOCKET = {"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}}


def _sidecar(lab, image, command=None, **env):
    return lab.container(
        image, command=command, name=f"{lab.project}-sidecar", **lab.as_image_user(image),
        environment={"BACKUP_PROJECT": lab.project, "LOG_FORMAT": "json", **env},
        volumes={**SOCKET, str(lab.backup_dir): {"bind": "/backups", "mode": "rw"}},
    )


def test_image_backs_up_on_schedule_restores_and_stops_cleanly(lab, docker_client, sidecar_image):
    volume = lab.volume("data")
    lab.populate(volume, "mkdir sub; echo hello > sub/hello.txt; ln -s sub/hello.txt link")
    app = lab.workload("app", {"backup.enable": "true", "backup.strategy": "stop",
                               "backup.schedule": "* * * * * */3"}, {volume: "/data"})
    original = lab.manifest(volume)

    sidecar = _sidecar(lab, sidecar_image)
    archives = wait_for(lambda: lab.archives("app_data_*"), timeout=60, what="the image's scheduled backup")
    out = lab.tmp / "out"
    extract_archive(archives[0], out)
    assert (out / "sub" / "hello.txt").read_text() == "hello\n"
    assert oct(archives[0].stat().st_mode & 0o777) == "0o600"
    assert lab.state(app) == "running"

    health = wait_for(lambda: sidecar.exec_run(["backup-sidecar", "healthcheck"]).exit_code == 0 or None,
                      timeout=30, what="the healthcheck to pass")
    assert health

    # Restore through the running sidecar: --force empties the volume with a helper
    # container made from the sidecar's own image. The archive is named: the daemon backs
    # up every 3 s, so "latest" may already hold the changes made below.
    lab.populate(volume, "echo changed > sub/hello.txt; echo junk > junk")
    # A scheduled backup may hold the target's lock for a moment (a worker's stop window is
    # longer than the engine API's for a tiny volume): a busy restore is tried again.
    command = ["backup-sidecar", "restore", "app", "--volume", "data", "--force", "--archive", archives[0].name]
    restored = wait_for(lambda: (lambda r: r if b"already running" not in r.output else None)(sidecar.exec_run(command)),
                        timeout=30, interval=0.5, what="the target to be free for the restore")
    assert restored.exit_code == 0, restored.output.decode()
    assert lab.manifest(volume) == original
    wait_for(lambda: lab.state(app) == "running", timeout=30, what="the app to run (a scheduled stop may be on)")
    leftovers = docker_client.containers.list(all=True, filters={"label": "backup-sidecar.helper=true"})
    assert leftovers == []

    sidecar.stop(timeout=30)
    sidecar.reload()
    assert sidecar.attrs["State"]["ExitCode"] == 0
    logs = sidecar.logs().decode()
    assert '"message": "stopped"' in logs
    assert lab.state(app) == "running"


def test_image_one_shot_commands(lab, sidecar_image, docker_client):
    volume = lab.volume("data")
    lab.populate(volume, "echo x > x")
    lab.workload("app", {"backup.enable": "true", "backup.strategy": "pause"}, {volume: "/data"})
    lab.workload("broken", {"backup.enable": "true", "backup.compression": "lzma"}, {volume: "/data"})

    user = lab.as_image_user(sidecar_image)

    def run(*args):
        try:
            out = docker_client.containers.run(
                sidecar_image, list(args), remove=True, stdout=True, stderr=True, **user,
                environment={"BACKUP_PROJECT": lab.project, "LOG_FORMAT": "text"},
                volumes={**SOCKET, str(lab.backup_dir): {"bind": "/backups", "mode": "rw"}})
            return 0, out.decode()
        except docker.errors.ContainerError as err:
            return err.exit_status, (err.stderr or b"").decode()

    code, out = run("plan")
    assert code == 0
    assert "app" in out and "pause" in out
    assert "SKIPPED" in out and "backup.compression='lzma'" in out and "zstd, gzip, none" in out
    code, out = run("backup", "app")
    assert code == 0 and "wrote /backups/daily/app_data_" in out
    code, out = run("list", "--json")
    assert code == 0 and '"checksum": "present"' in out
    code, out = run("backup", "--all")
    assert code == 1  # the broken container is reported, the app is still backed up
    assert len(lab.archives("app_data_*")) == 2
