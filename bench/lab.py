"""What the benchmark creates and removes: Docker volumes and containers (all labelled with
the run's id, network none), the mixed data set written into a volume's folder on the host,
background processes and a scratch folder. `Lab.cleanup()` removes all of it, whatever
was reached; it is safe to call twice."""

from __future__ import annotations

import concurrent.futures
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

BUSYBOX = os.environ.get("SIDECAR_TEST_BUSYBOX", "backup-sidecar-test/busybox:latest")
RUN_LABEL = "backup-sidecar-bench"  # value: the run's id; cleanup removes everything with it
# Idles until SIGTERM, then exits at once (a `stop` takes milliseconds, not the stop timeout).
IDLE = 'trap "exit 0" TERM; while :; do sleep 1 & wait $!; done'
SMALL_PER_DIR = 1000


@dataclass(frozen=True)
class DataSet:
    """What `fill` wrote: total bytes, file count, and the small files (for the 1% change)."""

    bytes: int
    files: int
    small: tuple[str, ...]  # relative paths


class Lab:
    def __init__(self, client: docker.DockerClient):
        self.client = client
        self.run_id = uuid.uuid4().hex[:8]
        self.project = f"bench{self.run_id}"
        self.tmp = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
        self.processes: list[subprocess.Popen] = []
        self._labels = {RUN_LABEL: self.run_id, "com.docker.compose.project": self.project}

    # --- Docker -----------------------------------------------------------------
    def volume(self, short: str) -> tuple[str, Path]:
        """A new volume `{project}_{short}`, with its folder on the host."""
        name = f"{self.project}_{short}"
        self.client.volumes.create(name, labels=self._labels)
        return name, Path(self.client.api.inspect_volume(name)["Mountpoint"])

    def container(self, service: str, volume: str | None, labels: dict[str, str] | None = None,
                  start: bool = True, target: bool = True, command: str = IDLE):
        """A busybox container of compose service `service` with `volume` on /data, labelled
        a backup target (unless `target` is false; plus `labels`); created, and started
        unless `start` is false."""
        all_labels = {**self._labels, "com.docker.compose.service": service,
                      **({"backup.enable": "true"} if target else {}), **(labels or {})}
        container = self.client.containers.create(
            BUSYBOX, ["sh", "-c", command], name=f"{self.project}-{service}", labels=all_labels,
            volumes={volume: {"bind": "/data"}} if volume else None, network_mode="none")
        if start:
            container.start()
        return container

    def many(self, count: int, volume: str, labels: dict[str, str] | None = None, prefix: str = "t") -> None:
        """`count` started targets sharing `volume`, created a few at a time."""
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: self.container(f"{prefix}{i:03d}", volume, labels), range(count)))

    # --- processes ----------------------------------------------------------------
    def spawn(self, argv: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(argv, **kwargs)
        self.processes.append(proc)
        return proc

    @staticmethod
    def stop_process(proc: subprocess.Popen, grace: float = 10) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; by its process id only."""
        if proc.poll() is not None:
            return
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        except ProcessLookupError:
            pass

    # --- cleanup ------------------------------------------------------------------
    def cleanup(self) -> None:
        """Remove everything of this run; a step that fails is reported and the rest goes on
        (a cleanup error never hides the error that ended the run)."""
        for proc in self.processes:
            _try(self.stop_process, proc, 5)
        mine = {"label": f"{RUN_LABEL}={self.run_id}"}
        containers = _try(self.client.containers.list, all=True, filters=mine) or []
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda c: _try(_remove_container, c), containers))
        for volume in _try(self.client.volumes.list, filters=mine) or []:
            _try(_remove_volume, volume)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _try(step, *args, **kwargs):
    try:
        return step(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - cleanup goes on; what is left carries the run's label
        print(f"bench: cleanup: {getattr(step, '__name__', step)} failed: {exc}", file=sys.stderr)
        return None


def _remove_volume(volume) -> None:
    try:
        volume.remove(force=True)
    except docker.errors.NotFound:
        pass


def _remove_container(container) -> None:
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass


# --- the data set -------------------------------------------------------------------

def fill(root: Path, total: int, files: int, seed: int = 8) -> DataSet:
    """About `total` bytes under `root`: a third random (incompressible), a third text (about
    4:1 with zstd -3), a third in `files` small files (mostly text, every fourth random)."""
    rng = random.Random(seed)
    third = total // 3
    _write_random(root / "random.bin", third)
    lines = _line_pool(rng)
    _write_text(root / "text.txt", third, lines, rng)
    block = "".join(rng.choices(lines, k=40000)).encode()  # ~2.6 MB to cut small files from
    per = max(1, third // max(files, 1))
    small = []
    for i in range(files):
        rel = f"small/d{i // SMALL_PER_DIR:03d}/f{i:05d}.txt"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        start = rng.randrange(0, max(1, len(block) - per))
        path.write_bytes(os.urandom(per) if i % 4 == 3 else block[start:start + per])
        small.append(rel)
    return DataSet(third * 2 + per * files, files + 2, tuple(small))


def change_one_percent(root: Path, data: DataSet, run: int) -> int:
    """Rewrite 1% of the files (a different slice each run, same sizes); returns how many."""
    count = max(1, data.files // 100)
    chosen = data.small[run % 100::100][:count] or data.small[:count]
    for rel in chosen:
        path = root / rel
        path.write_bytes(os.urandom(path.stat().st_size))
    return len(chosen)


def _write_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left > 0:
            f.write(os.urandom(min(left, 1 << 20)))
            left -= 1 << 20


def _line_pool(rng: random.Random) -> list[str]:
    letters = "etaoinshrdlucmfwypvbgkq"
    words = ["".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(3000)]
    return [f"{n} " + " ".join(rng.choices(words, k=rng.randint(5, 14))) + "\n" for n in range(60000)]


def _write_text(path: Path, size: int, lines: list[str], rng: random.Random) -> None:
    with open(path, "wb") as f:
        written = 0
        while written < size:
            chunk = "".join(rng.choices(lines, k=2000)).encode()[:size - written]
            f.write(chunk)
            written += len(chunk)
