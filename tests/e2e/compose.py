"""Debian's docker-compose (Compose 1.29) driving a small stack for the end-to-end tests:
a compose file written by the test, `up -d`, `down -v` in teardown."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from .support import BUSYBOX, IDLE


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

    def write(self, services: dict[str, dict], volumes: tuple[str, ...] = ()) -> None:
        doc = {"version": "3.7", "services": services, "volumes": {v: {} for v in volumes}}
        self.file.write_text(json.dumps(doc, indent=2))  # JSON is YAML: no YAML library needed

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run([self.binary, "-p", self.project, "-f", str(self.file), *args], cwd=self.folder,
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} failed: {done.stderr}")
        return done

    def down(self) -> None:
        if self.file.exists():
            subprocess.run([self.binary, "-p", self.project, "-f", str(self.file), "down", "-v", "-t", "1"],
                           cwd=self.folder, capture_output=True, timeout=120)
