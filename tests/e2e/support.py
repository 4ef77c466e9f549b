"""Helpers for end-to-end tests against the real Docker engine: a Lab that records every
container and volume it creates (removed in teardown, ignoring what is already gone),
runs the sidecar's real CLI as a host process, and reads volumes back for comparison."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from pathlib import Path

import docker
import docker.errors
import zstandard

REPO = Path(__file__).resolve().parents[2]
BUSYBOX = os.environ.get("SIDECAR_TEST_BUSYBOX", "backup-sidecar-test/busybox:latest")
SIDECAR_IMAGE = os.environ.get("SIDECAR_TEST_IMAGE", "backup-sidecar:test")
# The image worker containers run from when the sidecar runs as a host process (built from
# the tree by the worker_image fixture).
WORKER_IMAGE = os.environ.get("SIDECAR_TEST_WORKER_IMAGE", SIDECAR_IMAGE)

# Idles until SIGTERM, then exits at once (so `stop` takes milliseconds, not the timeout).
IDLE = 'trap "exit 0" TERM; while :; do sleep 1 & wait $!; done'

# One line per entry of the current folder: name|type|mode|uid|gid|mtime|links|content
# (sha256 for files, target for symlinks). busybox stat does not follow symlinks.
MANIFEST_SCRIPT = r"""
cd "$1" || exit 1
find . | while IFS= read -r f; do
  t=$(stat -c '%F' "$f")
  m=$(stat -c '%a|%u|%g|%Y|%h' "$f")
  case "$t" in
    regular*) c=$(sha256sum "$f" | cut -d' ' -f1) ;;
    symbolic*) c=$(readlink "$f") ;;
    *) c= ;;
  esac
  printf '%s|%s|%s|%s\n' "$f" "$t" "$m" "$c"
done
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def containers_now(client, all: bool = False, filters: dict | None = None) -> list:
    """The containers that match, each inspected, leaving out one removed between the list and
    its inspection (docker-py's containers.list inspects each listed container and fails with
    NotFound when the engine removed it in between: a swarm task, a worker ending)."""
    found = []
    for sparse in client.containers.list(all=all, filters=filters or {}, sparse=True):
        try:
            found.append(client.containers.get(sparse.id))
        except docker.errors.NotFound:
            continue
    return found


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def parse_manifest(text: str) -> dict[str, tuple[str, ...]]:
    rows = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, rest = line.split("|", 1)
        rows[name] = tuple(rest.split("|"))
    return rows


def host_manifest(root: Path) -> dict[str, tuple[str, ...]]:
    """The same manifest as MANIFEST_SCRIPT, computed on the host for an extracted tree."""
    import hashlib

    rows = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in ["", *dirnames, *filenames] if dirpath == str(root) else [*dirnames, *filenames]:
            path = Path(dirpath) / name if name else Path(dirpath)
            rel = "." if path == root else "./" + str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                kind, content = "symbolic link", os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                kind, content = "directory", ""
            else:
                kind = "regular empty file" if st.st_size == 0 else "regular file"
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            mode = oct(st.st_mode & 0o7777)[2:]
            rows[rel] = (kind, mode, str(st.st_uid), str(st.st_gid), str(int(st.st_mtime)), str(st.st_nlink), content)
    return rows


def extract_archive(archive: Path, dest: Path) -> None:
    """Unpack a .tar.zst/.tar.gz/.tar on the host, keeping owners, modes, times and links."""
    dest.mkdir(parents=True, exist_ok=True)
    with open(archive, "rb") as raw:
        if archive.name.endswith(".tar.zst"):
            stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
            mode = "r|"
        elif archive.name.endswith(".tar.gz"):
            stream, mode = raw, "r|gz"
        else:
            stream, mode = raw, "r|"
        # Python's tarfile leaves symlink times at "now"; GNU tar sets them. Do what GNU tar
        # does, and set folder times last (extracting into a folder touches it).
        timed = []
        with tarfile.open(fileobj=stream, mode=mode) as tar:
            for member in tar:
                tar.extract(member, dest, numeric_owner=True, filter="fully_trusted")
                if member.issym() or member.isdir():
                    timed.append(member)
        for member in reversed(timed):
            os.utime(dest / member.name, (member.mtime, member.mtime), follow_symlinks=False)


class Watcher:
    """Polls `read()` in a thread and records every value seen, in order (a repeated value
    once); a read that raises records "error"."""

    def __init__(self, read, interval: float = 0.02):
        self.read = read
        self.interval = interval
        self.values: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                value = self.read()
            except Exception:  # noqa: BLE001 - the engine busy or the object gone: recorded, polling goes on
                value = "error"
            if not self.values or self.values[-1] != value:
                self.values.append(value)
            self._stop.wait(self.interval)

    def __enter__(self) -> "Watcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


class StateWatcher(Watcher):
    """Every state a container was seen in, in order."""

    def __init__(self, client: docker.DockerClient, container_id: str, interval: float = 0.02):
        super().__init__(lambda: client.api.inspect_container(container_id)["State"]["Status"], interval)

    @property
    def states(self) -> list[str]:
        return self.values


class Lab:
    def __init__(self, client: docker.DockerClient, tmp_path: Path):
        self.client = client
        self.project = "bst" + uuid.uuid4().hex[:10]
        self.tmp = tmp_path
        self.backup_dir = tmp_path / "backups"
        self.backup_dir.mkdir()
        self._containers: list[str] = []
        self._volumes: list[str] = []
        self._processes: list[subprocess.Popen] = []
        self._images: list[str] = []
        self.metrics_port = free_port()

    # --- docker resources -----------------------------------------------------------
    def volume(self, name: str) -> str:
        full = f"{self.project}_{name}"
        self._volumes.append(full)
        self.client.volumes.create(full, labels={"com.docker.compose.project": self.project,
                                                 "com.docker.compose.volume": name})
        return full

    def populate(self, volume: str, script: str) -> None:
        """Fill a volume with a one-shot busybox container running `script` in /data."""
        self.run_oneshot(script, {volume: "/data"})

    def as_image_user(self, image: str) -> dict:
        """Container options for the sidecar's image running as its own non-root user: the
        backup folder handed to it and the socket's group added, as docs/how-to/security.md
        tells users to."""
        uid, _, gid = (self.client.images.get(image).attrs["Config"]["User"] or "0").partition(":")
        os.chown(self.backup_dir, int(uid), int(gid or uid))
        return {"group_add": [os.stat("/var/run/docker.sock").st_gid]}

    def run_oneshot(self, script: str, volumes: dict[str, str], image: str = BUSYBOX) -> str:
        out = self.client.containers.run(
            # As root and past the image's entrypoint: test tooling writes anywhere in the volume
            # (the sidecar image's entrypoint drops to its own user, 10001).
            image, ["set -e; cd /data 2>/dev/null || true; " + script], entrypoint=["sh", "-c"], user="0",
            volumes={v: {"bind": d, "mode": "rw"} for v, d in volumes.items()},
            remove=True, stdout=True, stderr=True, network_mode="none",
        )
        return out.decode("utf-8", "surrogateescape")

    def manifest(self, volume: str) -> dict[str, tuple[str, ...]]:
        out = self.client.containers.run(
            BUSYBOX, ["sh", "-c", MANIFEST_SCRIPT, "sh", "/data"],
            volumes={volume: {"bind": "/data", "mode": "ro"}}, remove=True, network_mode="none",
        )
        return parse_manifest(out.decode("utf-8", "surrogateescape"))

    def workload(self, service: str, labels: dict[str, str] | None = None,
                 volumes: dict[str, str] | None = None, start: bool = True, image: str = BUSYBOX,
                 compose: bool = True):
        all_labels = dict(labels or {})
        if compose:
            all_labels.update({"com.docker.compose.project": self.project,
                               "com.docker.compose.service": service})
        kwargs = dict(
            name=f"{self.project}-{service}", labels=all_labels, network_mode="none",
            volumes={v: {"bind": d, "mode": "rw"} for v, d in (volumes or {}).items()},
            command=["sh", "-c", IDLE],
        )
        container = self.client.containers.create(image, **kwargs)
        self._containers.append(container.id)
        if start:
            container.start()
        return container

    def container(self, image: str, **kwargs):
        """Create and start any container, removed in teardown."""
        container = self.client.containers.create(image, **kwargs)
        self._containers.append(container.id)
        container.start()
        return container

    def build_image(self, tag: str, marker: str) -> str:
        """A small image built here (FROM the busybox test image) holding /marker; removed in teardown."""
        dockerfile = f"FROM {BUSYBOX}\nRUN echo {marker} > /marker\nLABEL test.marker={marker}\n"
        image, _ = self.client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
        self._images.append(tag)
        return image.id

    def state(self, container) -> str:
        return self.client.api.inspect_container(container.id)["State"]["Status"]

    # --- the sidecar ------------------------------------------------------------------
    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "BACKUP_DIR": str(self.backup_dir),
            "BACKUP_PROJECT": self.project,
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
            "TZ": "UTC",
            "PYTHONUNBUFFERED": "1",
            "METRICS_PORT": str(self.metrics_port),
            "METRICS_ADDR": "127.0.0.1",
            # The CLI on the host would take the newest local image built from the Dockerfile (its
            # label) for worker containers: maybe another work tree's. Tests that want workers name theirs.
            "BACKUP_WORKER_IMAGE": "none",
        })
        env.update(extra)
        return env

    @staticmethod
    def _restores(args: tuple[str, ...], env: dict[str, str]) -> dict[str, str]:
        """A restore is written (an image export read) by a worker only (as the sidecar in its
        container: one from its image)."""
        if args[:1] in (("restore",), ("restore-image",)):
            env.setdefault("BACKUP_WORKER_IMAGE", WORKER_IMAGE)
        return env

    def cli(self, *args: str, timeout: float = 180, **env: str) -> subprocess.CompletedProcess:
        env = self._restores(args, env)
        return subprocess.run([sys.executable, "-m", "sidecar", *args], cwd=REPO, env=self.env(**env),
                              capture_output=True, text=True, timeout=timeout)

    def start_cli(self, *args: str, log_name: str = "sidecar.log", **env: str) -> tuple[subprocess.Popen, Path]:
        env = self._restores(args, env)
        log = self.tmp / log_name
        handle = open(log, "ab")
        proc = subprocess.Popen([sys.executable, "-m", "sidecar", *args], cwd=REPO, env=self.env(**env),
                                stdout=handle, stderr=subprocess.STDOUT)
        handle.close()
        self._processes.append(proc)
        return proc, log

    def archives(self, pattern: str = "*", folder: str | None = None) -> list[Path]:
        """Archives written, one path per file: promoted copies (hard links in weekly/ or
        monthly/) are left out unless their folder is asked for. folder="images" for exports."""
        folders = [folder] if folder else ["hourly", "daily", "weekly", "monthly"]
        found, seen = [], set()
        for name in folders:
            for path in sorted(self.backup_dir.glob(f"{name}/{pattern}")):
                if not path.name.endswith((".tar.zst", ".tar.gz", ".tar", ".age")):
                    continue
                inode = path.stat().st_ino
                if inode not in seen:
                    seen.add(inode)
                    found.append(path)
        return sorted(found)

    # --- teardown -------------------------------------------------------------------------
    def cleanup(self) -> None:
        for proc in self._processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for cid in reversed(self._containers):
            try:
                self.client.api.remove_container(cid, force=True, v=True)
            except docker.errors.NotFound:
                pass
        # Worker containers a killed sidecar left on our volumes (a sidecar removes its own).
        for vol in self._volumes:
            for row in self.client.api.containers(all=True, filters={"label": "backup-sidecar.worker",
                                                                      "volume": vol}):
                try:
                    self.client.api.remove_container(row["Id"], force=True, v=True)
                except docker.errors.NotFound:
                    pass
        for image in self._images:
            try:
                self.client.api.remove_image(image, force=True)
            except docker.errors.NotFound:
                pass
        for vol in self._volumes:
            try:
                self.client.api.remove_volume(vol, force=True)
            except docker.errors.NotFound:
                pass


def without_node(text: str) -> str:
    """Exposition text without the `node` label every series carries (issue 13): for tests
    that match one node's series as text (`backup_sidecar_copies{target="app"} 2.0`)."""
    text = re.sub(r'(?<![\w])node="[^"]*",?', "", text)
    return text.replace(",}", "}").replace("{}", "")


def log_records(path: Path) -> list[dict]:
    return stderr_records(path.read_text(errors="replace"))


def stderr_records(text: str) -> list[dict]:
    """The JSON log records in a process's output, skipping anything else."""
    records = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
    return records


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()
