"""Least privilege, end to end: the sidecar's image as its non-root user, with a read-only
root filesystem, no capabilities and no Docker socket, talking to the engine only through
the shipped allow-list proxy (socket-proxy/haproxy.cfg, run by Debian's HAProxy). The whole
flow runs through it: discovery from the event stream, stop, pause and hot backups read by
worker containers, a hook, an image export, a volume restore and an image restore. The
proxy logs every request: none may have been refused, and each must be one of the
endpoints docs/reference/docker-api.md lists."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from .conftest import tool_unavailable
from .support import REPO, extract_archive, free_port, stderr_records, wait_for

CONFIG = REPO / "socket-proxy" / "haproxy.cfg"
ROW = re.compile(r"^\| (`[A-Z]+`(?:, `[A-Z]+`)*) \| `(/[^`]*)` \|", re.M)


class SocketProxy:
    """HAProxy with the shipped configuration on 127.0.0.1:PORT in front of the engine's socket."""

    def __init__(self, binary: str, folder: Path):
        self.binary, self.port, self.log_path = binary, free_port(), folder / "haproxy.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "PROXY_BIND": f"127.0.0.1:{self.port}", "DOCKER_SOCKET": "/var/run/docker.sock"}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([self.binary, "-db", "-f", str(CONFIG)], env=env, stdout=log,
                                         stderr=subprocess.STDOUT)
        wait_for(lambda: "GET /_ping 200" in self._ping(), timeout=30, what="the socket proxy to answer")

    def _ping(self) -> str:
        if self.proc.poll() is not None:
            raise AssertionError(f"haproxy exited: {self.log_path.read_text()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_ping", timeout=5).read()
        except OSError:
            pass
        return self.log_path.read_text()

    def requests(self) -> list[tuple[str, str, int, str]]:
        """(method, path, status, verdict) of each request logged (verdict "DENIED": refused here)."""
        rows = []
        for line in self.log_path.read_text().splitlines():
            fields = line.split()
            if len(fields) == 5 and fields[3].isdigit():
                rows.append((fields[1], fields[2], int(fields[3]), fields[4]))
        return rows

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def socket_proxy(tmp_path):
    binary = shutil.which("haproxy")
    if binary is None:
        tool_unavailable("haproxy is not installed (apt-get install haproxy)")
    proxy = SocketProxy(binary, tmp_path)
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.stop()


def documented_endpoints() -> list[tuple[set[str], re.Pattern]]:
    """The table of Docker API calls (docs/reference/docker-api.md): (methods, path pattern with an
    optional version prefix)."""
    section = (REPO / "docs" / "reference" / "docker-api.md").read_text()
    rows = []
    for methods, path in ROW.findall(section):
        regex = re.escape(path).replace(r"\{name\}", ".+").replace(r"\{id\}", "[^/]+")
        rows.append(({m.strip("` ") for m in methods.split(",")}, re.compile(rf"^(/v[0-9.]+)?{regex}$")))
    assert len(rows) >= 15, section
    return rows


def test_the_whole_flow_through_the_allow_list_proxy(lab, worker_image, socket_proxy):
    image_user = lab.client.images.get(worker_image).attrs["Config"]["User"]
    uid, _, gid = image_user.partition(":")
    assert uid not in ("", "0", "root"), image_user
    os.chown(lab.backup_dir, int(uid), int(gid or uid))

    volumes = {name: lab.volume(name) for name in ("stopdata", "pausedata", "hotdata")}
    for name, volume in volumes.items():
        lab.populate(volume, f"mkdir -p sub; echo {name} > sub/{name}.txt; chown 1234:5678 sub; chmod 0640 sub/*.txt")
    own_image = f"{lab.project}/app:1"
    lab.build_image(own_image, lab.project)  # built here, never pushed: the backup exports it

    sidecar = lab.container(
        worker_image, name=f"{lab.project}-sidecar", network_mode="host", read_only=True,
        tmpfs={"/tmp": "size=16m"}, cap_drop=["ALL"], security_opt=["no-new-privileges"],
        environment={"DOCKER_HOST": f"tcp://127.0.0.1:{socket_proxy.port}", "BACKUP_PROJECT": lab.project,
                     "LOG_FORMAT": "json", "METRICS_PORT": str(lab.metrics_port), "METRICS_ADDR": "127.0.0.1",
                     "BACKUP_SHUTDOWN_GRACE": "2"},
        volumes={str(lab.backup_dir): {"bind": "/backups", "mode": "rw"}},
    )

    def logs() -> list[dict]:
        return stderr_records(sidecar.logs().decode("utf-8", "replace"))

    wait_for(lambda: any(r["message"] == "sidecar running" for r in logs()), timeout=90, what="the sidecar to run")
    # Started after the daemon: found through the event stream.
    lab.workload("stopper", {"backup.enable": "true", "backup.strategy": "stop"}, {volumes["stopdata"]: "/data"},
                 image=own_image)
    lab.workload("pauser", {"backup.enable": "true", "backup.strategy": "pause"}, {volumes["pausedata"]: "/data"})
    lab.workload("hotter", {"backup.enable": "true", "backup.strategy": "hot", "backup.exec.pre": "sync"},
                 {volumes["hotdata"]: "/data"})
    wait_for(lambda: {r.get("target") for r in logs() if r["message"] == "target found"} >=
             {"stopper", "pauser", "hotter"}, timeout=60, what="the daemon to find the three targets")

    def cli(*argv: str):
        done = sidecar.exec_run(["backup-sidecar", *argv], environment={"LOG_LEVEL": "INFO", "LOG_FORMAT": "json"},
                                demux=True)
        out, err = (part.decode("utf-8", "replace") if part else "" for part in done.output)
        return done.exit_code, out, stderr_records(err), err

    code, out, records, err = cli("backup", "--all")
    assert code == 0, err
    by_worker = [r for r in records if r["message"] == "volume archived by a worker container"]
    assert len(by_worker) == 3, err
    assert len(lab.archives()) == 3
    for name in volumes:
        [archive] = lab.archives(f"*_{name}_*")
        extract_archive(archive, lab.tmp / name)
        assert (lab.tmp / name / "sub" / f"{name}.txt").read_text() == f"{name}\n"
        assert (archive.stat().st_uid, oct(archive.stat().st_mode & 0o777)) == (int(uid), "0o600")
    exports = lab.archives(folder="images")
    assert any(p.name.startswith(f"{lab.project}-app_1_") for p in exports), exports

    # A volume restore (the helper empties the volume as root; the data goes back as it was).
    original = lab.manifest(volumes["stopdata"])
    lab.populate(volumes["stopdata"], "echo changed > sub/stopdata.txt; echo junk > junk")
    code, out, records, err = cli("restore", "stopper", "--volume", "stopdata", "--archive", "latest", "--force")
    assert code == 0, err
    assert lab.manifest(volumes["stopdata"]) == original
    # An image restore: the export loads back under its tag.
    lab.client.api.remove_image(own_image, force=True)
    [export] = [p for p in exports if p.name.startswith(f"{lab.project}-app_1_")]
    code, out, records, err = cli("restore-image", f"images/{export.name}")
    assert code == 0, err
    assert own_image in lab.client.images.get(own_image).tags

    sidecar.stop(timeout=30)
    sidecar.reload()
    assert sidecar.attrs["State"]["ExitCode"] == 0, sidecar.logs().decode()[-3000:]
    for container in lab.client.containers.list(all=True, filters={"label": f"com.docker.compose.project={lab.project}"}):
        assert container.status == "running", container.name

    requests = socket_proxy.requests()
    denied = [r for r in requests if r[3] == "DENIED" or r[2] == 403]
    assert not denied, denied
    allowed = documented_endpoints()
    unlisted = sorted({(m, p) for m, p, _s, _v in requests
                       if not any(m in methods and pattern.match(p) for methods, pattern in allowed)})
    assert not unlisted, f"calls docs/reference/docker-api.md does not list: {unlisted}"
    # The flow went through the proxy: events, strategies, hooks, workers, export, load.
    seen = {f"{m} {re.sub(r'^/v[0-9.]+', '', p)}" for m, p, _s, _v in requests}
    print("calls through the proxy:", *sorted({re.sub(r"/[0-9a-f]{64}|/backup-sidecar-worker-\w+", "/{id}", call)
                                               for call in seen}), sep="\n  ")
    for must in (r"GET /events", r"POST /containers/\w+/stop", r"POST /containers/\w+/pause",
                 r"POST /containers/\w+/exec", r"POST /containers/create", r"POST /containers/[\w-]+/attach",
                 r"GET /images/.+/get", r"POST /images/load"):
        assert any(re.fullmatch(must, call) for call in seen), (must, sorted(seen))
