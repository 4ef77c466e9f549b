"""A Docker engine of the test's own: `dockerd` in a network namespace (and optionally a UTS
namespace with its own hostname), with its own data root, exec root and socket.

Shared by the engine fault tests (restart an engine without touching the shared one) and the
two-node Swarm lab (tests/e2e/swarm.py). TESTBED.md, "Several Docker hosts on one machine".
Never start an engine with `--bridge none` in the host's namespace: it deletes the shared
engine's docker0.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import docker

from .support import wait_for

# Where an engine with a hostname of its own has its socket, as that engine sees paths (an
# empty folder on the host: each engine bind-mounts its own folder on it, privately).
SOCKET_DIR = "/run/bst-engine"


def tools_missing() -> str | None:
    """What this machine lacks to run an engine in a namespace, or None."""
    for tool in ("dockerd", "nsenter", "unshare", "ip"):
        if shutil.which(tool) is None:
            return f"needs {tool} (dockerd: docker.io; nsenter/unshare: util-linux; ip: iproute2)"
    return None


class NamespacedEngine:
    """dockerd on a socket of its own, in network namespace `netns` (created here, deleted by
    `remove()`); restartable.

    With `hostname`, also in a UTS and a mount namespace of its own: the engine's `docker info`
    Name (a Swarm node's name) is that hostname, and its socket is at SOCKET_DIR/docker.sock as
    the engine sees paths (the same path on every node, so one service spec can bind-mount
    "the node's socket" on all of them); the host reaches it at `self.sock`."""

    def __init__(self, root: Path, netns: str | None = None, hostname: str | None = None,
                 iptables: bool = False):
        self.root = root
        self.iptables = iptables
        self.root.mkdir(parents=True, exist_ok=True)
        # The exec root holds containerd's sockets: keep its path short (108-byte limit).
        self.exec_root = Path(tempfile.mkdtemp(prefix="bst-e2-"))
        (self.exec_root / "pub").mkdir()
        self.sock = self.exec_root / ("pub/docker.sock" if hostname else "docker.sock")
        self.url = f"unix://{self.sock}"
        self.hostname = hostname
        self.proc: subprocess.Popen | None = None
        self.client: docker.DockerClient | None = None
        # Its own network namespace: an engine started with `--bridge none` deletes the host's
        # docker0 bridge (the shared engine's) in the namespace it runs in.
        self.netns = netns or self.exec_root.name
        subprocess.run(["ip", "netns", "add", self.netns], check=True, capture_output=True)
        self.log = root / "dockerd.log"

    @property
    def netns_path(self) -> str:
        return f"/var/run/netns/{self.netns}"

    def command(self) -> list[str]:
        # `nsenter --net`, not `ip netns exec`: the latter remounts /sys and dockerd then fails
        # with "Devices cgroup isn't mounted". With iptables on, the rules dockerd writes live
        # in this namespace's own tables, never in the shared engine's.
        dockerd = ["dockerd", "--data-root", str(self.root / "data"), "--exec-root", str(self.exec_root / "x"),
                   "--pidfile", str(self.exec_root / "pid"), "--bridge", "none"]
        if not self.iptables:
            dockerd += ["--iptables=false", "--ip-masq=false"]
        enter = ["nsenter", f"--net={self.netns_path}"]
        if self.hostname is None:
            return [*enter, *dockerd, "-H", self.url]
        # In its own mount namespace, the engine's folder `pub` is bind-mounted on SOCKET_DIR:
        # the socket it makes there is the file the host reaches as `self.sock`.
        script = 'hostname "$0" && mount --bind "$1" "$2" && shift 2 && exec "$@"'
        return [*enter, "unshare", "--uts", "--mount", "--propagation", "private", "sh", "-c", script,
                self.hostname, str(self.exec_root / "pub"), SOCKET_DIR, *dockerd, "-H", f"unix://{SOCKET_DIR}/docker.sock"]

    def start(self, timeout: float = 60) -> docker.DockerClient:
        if self.hostname is not None:
            os.makedirs(SOCKET_DIR, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=_terminate_with_parent)
        client = wait_for(lambda: self._client() or self.proc.poll() is not None, timeout=timeout, interval=0.2,
                          what="the engine in its namespace to answer")
        if self.proc.poll() is not None:
            raise RuntimeError(f"the engine in {self.netns} exited:\n" + self.log.read_text()[-2000:])
        self.client = client
        return client

    def _client(self) -> docker.DockerClient | None:
        try:
            client = docker.DockerClient(base_url=self.url, timeout=120)
            client.ping()
            return client
        except Exception:  # noqa: BLE001 - not up yet
            return None

    def docker(self, *args: str, timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """The docker CLI against this engine."""
        done = subprocess.run(["docker", "-H", self.url, *args], capture_output=True, text=True, timeout=timeout,
                              **kwargs)
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} on {self.netns}: {done.stderr.strip()}")
        return done

    def load_image_file(self, path: Path) -> None:
        with open(path, "rb") as tar:
            done = subprocess.run(["docker", "-H", self.url, "load", "-q"], stdin=tar, capture_output=True,
                                  timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"docker load into {self.netns}: {done.stderr.decode(errors='replace')}")

    def stop(self, grace: float = 60) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def remove(self) -> None:
        self.stop()
        # dockerd makes its data root a private mount of its own and may leave it (and its
        # exec root's netns mounts) behind in the host's mount namespace.
        for mount in _mounts_under(self.root / "data", self.exec_root):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
        shutil.rmtree(self.root / "data", ignore_errors=True)
        shutil.rmtree(self.exec_root, ignore_errors=True)
        subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True, check=False)


def _terminate_with_parent() -> None:
    """In the child before exec: SIGTERM it when the test process dies (nsenter, unshare and
    the shell's `exec` keep the same process up to dockerd), so a killed pytest leaves no
    engine running. Linux; best effort elsewhere."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _mounts_under(*folders: Path) -> list[str]:
    """Mount points at or below `folders`, deepest first."""
    with open("/proc/mounts") as table:
        points = [line.split()[1] for line in table]
    prefixes = [str(f) for f in folders]
    return sorted((p for p in points if any(p == f or p.startswith(f + "/") for f in prefixes)), reverse=True)


def save_images(images: list[str], path: Path) -> Path:
    """`docker save` of the shared engine's images into one tar (loaded into each engine)."""
    done = subprocess.run(["docker", "save", "-o", str(path), *images], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"docker save {' '.join(images)}: {done.stderr}")
    return path


def load_everywhere(engines: list[NamespacedEngine], tar: Path) -> None:
    """Load one saved tar into every engine at once (a thread each: the engines unpack in parallel)."""
    errors: list[BaseException] = []

    def load(engine: NamespacedEngine) -> None:
        try:
            engine.load_image_file(tar)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(engine,)) for engine in engines]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(1.0, 900 - (time.monotonic() - started)))
    if errors:
        raise errors[0]
