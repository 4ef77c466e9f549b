"""Fixtures for tests against the real Docker engine that scripts/test starts."""

from __future__ import annotations

import os

import docker
import docker.errors
import pytest

from .support import BUSYBOX, SIDECAR_IMAGE, Lab


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
def registry(tmp_path_factory):
    from .registry import Registry

    reg = Registry(tmp_path_factory.mktemp("registry"))
    try:
        reg.start()
    except RuntimeError as exc:
        if os.environ.get("SIDECAR_TESTBED") == "1" or os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    yield reg
    reg.stop()
