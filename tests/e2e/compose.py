"""Debian's docker-compose (Compose 1.29) driving a small stack for the end-to-end tests:
a compose file written by the test, `up -d`, `down -v` in teardown."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from .support import BUSYBOX, IDLE, REPO


def compose_binary() -> str | None:
    return shutil.which("docker-compose")


class Stack:
    """One Compose project (named like the lab's, so BACKUP_PROJECT matches) in `folder`."""

    def __init__(self, binary: str, project: str, folder: Path):
        self.binary, self.project, self.folder = binary, project, folder
        self.file = folder / "compose.yaml"

    @staticmethod
    def service(labels: dict[str, str], volumes: dict[str, str], image: str = BUSYBOX, **more) -> dict:
        """A busybox service idling until SIGTERM (`$` doubled: Compose interpolates it)."""
        return {"image": image, "command": ["sh", "-c", IDLE.replace("$", "$$")], "network_mode": "none",
                "labels": labels, "volumes": [f"{v}:{d}" for v, d in volumes.items()], **more}

    @staticmethod
    def sidecar(image: str, environment: dict[str, str] | None = None, **more) -> dict:
        """The sidecar as a service of the stack, running THIS tree's code: the image's
        Python and dependencies, the worktree's `sidecar` package mounted first on the path
        (no image build per test run)."""
        env = {"PYTHONPATH": "/tree", "BACKUP_SHUTDOWN_GRACE": "2", **(environment or {})}
        # The image runs as a non-root user: it reaches the socket through the socket's group.
        return {"image": image, "network_mode": "none", "environment": env,
                "group_add": [str(os.stat("/var/run/docker.sock").st_gid)],
                "volumes": ["/var/run/docker.sock:/var/run/docker.sock", f"{REPO / 'sidecar'}:/tree/sidecar:ro"],
                **more}

    def exec(self, service: str, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """`docker-compose exec -T SERVICE ARGV...`; the caller checks the exit code."""
        flags = [arg for k, v in (env or {}).items() for arg in ("-e", f"{k}={v}")]
        return subprocess.run([self.binary, "-p", self.project, "-f", str(self.file), "exec", "-T", *flags, service,
                               *argv], cwd=self.folder, capture_output=True, text=True, timeout=180, check=False)

    def write(self, services: dict[str, dict], volumes: tuple[str, ...] = ()) -> None:
        doc = {"version": "3.7", "services": services, "volumes": {v: {} for v in volumes}}
        self.file.write_text(json.dumps(doc, indent=2))  # JSON is YAML: no YAML library needed

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run([self.binary, "-p", self.project, "-f", str(self.file), *args], cwd=self.folder,
                              capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} failed: {done.stderr}")
        return done

    def down(self) -> None:
        if self.file.exists():
            subprocess.run([self.binary, "-p", self.project, "-f", str(self.file), "down", "-v", "-t", "1"],
                           cwd=self.folder, capture_output=True, timeout=120, check=False)
