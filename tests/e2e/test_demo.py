"""The README's first command: `./scripts/demo` then `./scripts/demo --clean`, run as a user
runs them (root on this machine, the sidecar as its image's uid 10001 with the socket's
group), in a fresh backup folder. A change that breaks the front door fails here.

The demo builds backup-sidecar:demo (the layer cache shares every layer with the tree's test
image, so the build is a matter of seconds after scripts/test's) and names its app, volume and
one-off sidecars after DEMO_NAME: a name of this test's own, so it meets no other run's."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import uuid

import docker.errors

from .support import REPO

DEMO = REPO / "scripts" / "demo"


def _demo(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(DEMO), *args], cwd=REPO, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=1500)


def _gone(client, name: str, kind: str) -> bool:
    try:
        (client.containers if kind == "container" else client.volumes).get(name)
    except docker.errors.NotFound:
        return True
    return False


def test_the_demo_backs_up_wipes_restores_and_cleans_up(docker_client, tmp_path):
    name = "bsd" + uuid.uuid4().hex[:10]
    backups = tmp_path / "demo-backups"  # fresh: the demo creates it and gives it to the sidecar's user
    env = {"DEMO_BACKUP_DIR": str(backups), "DEMO_NAME": name}
    try:
        done = _demo(env=env)
        out = done.stdout
        assert done.returncode == 0, out[-4000:] + done.stderr[-4000:]
        assert "Traceback" not in out + done.stderr

        # What it showed is what it ran: the socket's group and the folder's owner included.
        gid = os.stat("/var/run/docker.sock").st_gid
        shown = f"$ docker run --rm --name {name}-cli --group-add {gid} -v /var/run/docker.sock:/var/run/docker.sock " \
                f"-v {backups}:/backups backup-sidecar:demo"
        for command in (f"backup {name}-app", f"list {name}-app",
                        f"restore {name}-app --volume {name}-data --archive latest --force"):
            assert f"{shown} {command}\n" in out, out
        assert f"$ install -d -o 10001 -g 10001 -m 0700 {backups}\n" in out, out

        # The restored files' checksums were verified in the volume.
        for member in ("hello.txt", "notes/todo.txt", "random.bin"):
            assert re.search(rf"^\s+{re.escape(member)}: OK$", out, re.M), out
        assert "FAILED" not in out

        # The archive and its checksum are in the folder, owned by the sidecar's user, and agree.
        archives = sorted((backups / "daily").glob(f"{name}-app_{name}-data_*_daily.tar.zst"))
        assert len(archives) == 1, sorted(p.name for p in backups.rglob("*"))
        archive = archives[0]
        digest, _, member = archive.with_name(archive.name + ".sha256").read_text().strip().partition("  ")
        assert member == archive.name and digest == hashlib.sha256(archive.read_bytes()).hexdigest()
        assert (backups.stat().st_uid, archive.stat().st_uid) == (10001, 10001)
    finally:
        cleaned = _demo("--clean", env=env)
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert _gone(docker_client, f"{name}-app", "container") and _gone(docker_client, f"{name}-data", "volume")
    assert archive.exists()  # --clean keeps the archives
