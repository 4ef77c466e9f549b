"""Real SFTP and WebDAV servers for tests: `rclone serve sftp|webdav` over a local folder on
a free 127.0.0.1 port, with a user and password; stopped and started again on the same
port (an outage), stopped for good in teardown."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from .support import free_port


class RcloneServer:
    def __init__(self, kind: str, root: Path, user: str, password: str, log: Path):
        self.kind = kind  # "sftp" or "webdav"
        self.root = root
        self.user = user
        self.password = password
        self.log = log
        self.port = free_port()
        self._proc: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def available() -> bool:
        return shutil.which("rclone") is not None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self._proc = subprocess.Popen(
                ["rclone", "serve", self.kind, str(self.root), "--addr", f"127.0.0.1:{self.port}",
                 "--user", self.user, "--pass", self.password], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"rclone serve {self.kind} did not start: {self.log.read_text()[-2000:]}")
                time.sleep(0.1)

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)
        self._proc = None

    def files(self, under: str = "") -> dict[str, bytes]:
        """Every file below `under` of the served folder, by path relative to it."""
        base = self.root / under if under else self.root
        return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}
