"""A local Distribution registry (Debian's docker-registry) on a free loopback port, so
a test can push an image and give it a repository digest, as a pulled image has."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from pathlib import Path

from .support import free_port, wait_for

CONFIG = """version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {root}
http:
  addr: 127.0.0.1:{port}
"""


class Registry:
    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Registry":
        binary = shutil.which("docker-registry")
        if binary is None:
            raise RuntimeError("docker-registry is not installed (apt-get install docker-registry; scripts/test does)")
        (self.folder / "data").mkdir(parents=True, exist_ok=True)
        config = self.folder / "config.yml"
        config.write_text(CONFIG.format(root=self.folder / "data", port=self.port))
        log = open(self.folder / "registry.log", "ab")
        self.proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for(self._answers, timeout=30, what=f"the registry on {self.address}")
        return self

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"docker-registry exited: {(self.folder / 'registry.log').read_text()[-500:]}")
        try:
            with urllib.request.urlopen(f"http://{self.address}/v2/", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
