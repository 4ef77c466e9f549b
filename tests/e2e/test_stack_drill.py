"""The disaster drill (docs/how-to/disaster-recovery.md): a Compose project with a `.env`, a
file secret and a bind-mounted config, its data in a volume served by the app; backed up
encrypted to S3; the project's folder, containers and volumes removed and the backup
volume lost with them; the stack folder and the volume brought back from the off-site copy
alone; `docker-compose up -d` there works and the app serves its data."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pyrage
import pytest

from .compose import compose_binary
from .conftest import tool_unavailable
from .s3server import ACCESS_KEY, SECRET_KEY
from .support import BUSYBOX, wait_for

PAGE = "served from the volume: drill 7f3a\n"
SECRET = "token-5be2d1-never-in-a-log"


def _compose_doc() -> dict:
    # The image comes from .env, the page's config from a read-only bind, the start waits
    # for the file secret: `up` works only when all three came back.
    command = ('test -s /run/secrets/token || { echo "no secret"; exit 1; }; '
               'exec httpd -f -p 8080 -h /www -c /conf/httpd.conf')
    return {
        "version": "3.7",
        "services": {"web": {
            "image": "${APP_IMAGE}", "network_mode": "none", "command": ["sh", "-c", command.replace("$", "$$")],
            "labels": {"backup.enable": "true", "backup.strategy": "hot"},
            "volumes": ["www:/www", "./conf:/conf:ro"], "secrets": ["token"],
        }},
        "volumes": {"www": {}},
        "secrets": {"token": {"file": "./secrets/token.txt"}},
    }


def _write_project(folder: Path) -> None:
    (folder / "conf").mkdir(parents=True)
    (folder / "secrets").mkdir()
    (folder / "docker-compose.yml").write_text(json.dumps(_compose_doc(), indent=2))  # JSON is YAML
    (folder / ".env").write_text(f"APP_IMAGE={BUSYBOX}\n")
    (folder / "conf" / "httpd.conf").write_text(".txt:text/plain\n")
    (folder / "secrets" / "token.txt").write_text(SECRET + "\n")


def _compose(binary: str, folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([binary, *args], cwd=folder, capture_output=True, text=True, timeout=180, check=False)


def _served(binary: str, folder: Path) -> str | None:
    done = _compose(binary, folder, "exec", "-T", "web", "wget", "-qO-", "http://127.0.0.1:8080/index.txt")
    return done.stdout if done.returncode == 0 else None


@pytest.mark.slow  # three compose runs, a backup and two restores: over a minute here
def test_the_disaster_drill(lab, s3_server, s3_bucket, worker_image, tmp_path):
    binary = compose_binary()
    if binary is None:
        tool_unavailable("docker-compose is not installed (apt-get install docker-compose)")
    identity = pyrage.x25519.Identity.generate()
    key_file = tmp_path / "age-identity.txt"  # kept apart from the host, as the guide says
    key_file.write_text(f"{identity}\n")
    key_file.chmod(0o644)  # read by the sidecar's user in its container
    env = {"S3_BUCKET": s3_bucket, "S3_ENDPOINT_URL": s3_server.endpoint_url, "S3_PATH_STYLE": "true",
           "S3_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
           "BACKUP_AGE_RECIPIENTS": str(identity.to_public()), "BACKUP_AGE_IDENTITY_FILE": str(key_file),
           "BACKUP_WORKER_IMAGE": worker_image}
    # The folder is named after the project: `docker-compose up -d` there needs no -p.
    old_host, new_host = tmp_path / "srv" / lab.project, tmp_path / "new-host" / lab.project
    folders = [old_host, new_host]
    try:
        _write_project(old_host)
        up = _compose(binary, old_host, "up", "-d")
        assert up.returncode == 0, up.stderr
        lab.run_oneshot(f"printf '{PAGE}' > /data/index.txt", {f"{lab.project}_www": "/data"})
        assert wait_for(lambda: _served(binary, old_host), timeout=30, what="the app to serve") == PAGE

        done = lab.cli("backup", "web", **env)
        assert done.returncode == 0, done.stderr
        assert f"web: wrote the stack of project {lab.project}: " in done.stdout
        keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
        assert any(k.startswith(f"daily/{lab.project}_stack_") and k.endswith("_daily.tar.zst.age") for k in keys), keys
        assert any(k.startswith("daily/web_www_") for k in keys), keys
        assert SECRET not in done.stderr + done.stdout

        # The disaster: containers, volumes, the project's folder and the backup volume, gone.
        down = _compose(binary, old_host, "down", "-v", "-t", "1")
        assert down.returncode == 0, down.stderr
        shutil.rmtree(old_host)
        shutil.rmtree(lab.backup_dir)
        lab.backup_dir.mkdir()  # the new host's empty backup volume

        new_host.mkdir(parents=True)
        # As the guide runs it: the sidecar's image, once, by hand (its own project is gone too).
        out = lab.client.containers.run(
            worker_image, ["restore-stack", lab.project, "--into", str(new_host), "--from", "s3"], remove=True,
            stdout=True, stderr=True, network_mode="host", **lab.as_image_user(worker_image),
            environment={**{k: v for k, v in env.items() if k != "BACKUP_WORKER_IMAGE"},
                         "BACKUP_AGE_IDENTITY_FILE": "/run/keys/age.txt", "LOG_FORMAT": "text"},
            volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
                     str(lab.backup_dir): {"bind": "/backups", "mode": "rw"},
                     str(key_file): {"bind": "/run/keys/age.txt", "mode": "ro"}}).decode()
        assert f"into {new_host} (" in out and "docker compose up -d" in out, out
        assert SECRET not in out
        assert (new_host / "secrets" / "token.txt").read_text() == SECRET + "\n"
        assert (new_host / ".env").read_text() == f"APP_IMAGE={BUSYBOX}\n"
        up = _compose(binary, new_host, "up", "-d")
        assert up.returncode == 0, up.stderr
        done = lab.cli("restore", "web", "--volume", "www", "--from", "s3", **env)
        assert done.returncode == 0, done.stderr
        assert wait_for(lambda: _served(binary, new_host), timeout=30, what="the restored app to serve") == PAGE
        assert SECRET not in done.stderr + done.stdout
    finally:
        for folder in folders:
            if (folder / "docker-compose.yml").exists():
                _compose(binary, folder, "down", "-v", "-t", "1")
