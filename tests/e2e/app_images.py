"""Images of real servers for the preset tests, built lazily from Debian's packages on the
debootstrap base (tests/images/APP/Dockerfile, TESTBED.md's recipe) and cached: the tag
carries a hash of the recipe, so an unchanged recipe is reused and a changed one rebuilt."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import docker
import docker.errors

from .support import REPO

RECIPES = REPO / "tests" / "images"
BASE = os.environ.get("SIDECAR_TEST_BASE", "backup-sidecar-test/python-base:bookworm")
HOST_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def recipe_tag(app: str) -> str:
    digest = hashlib.sha256()
    for path in sorted((RECIPES / app).iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"backup-sidecar-test/{app}:{digest.hexdigest()[:12]}"


def ensure_base_image() -> None:
    done = subprocess.run(["bash", "-c", ". scripts/testbed.sh && ensure_base_image"], cwd=REPO,
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"building the base image failed:\n{done.stderr[-3000:]}")


def ensure_app_image(client: docker.DockerClient, app: str) -> str:
    """The image of tests/images/APP, built once per recipe (a few minutes the first time)."""
    tag = recipe_tag(app)
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    ensure_base_image()
    with tempfile.TemporaryDirectory(prefix=f"image-{app}-") as tmp:
        context = Path(tmp)
        for path in (RECIPES / app).iterdir():
            shutil.copy(path, context / path.name)
        # apt in the build reaches the host's mirror, through a proxy only the host's CA bundle trusts.
        shutil.copy(HOST_SOURCES, context / "debian.sources")
        shutil.copy(HOST_CA, context / "ca-certificates.crt")
        docker_bin = shutil.which("docker") or "/usr/bin/docker"
        # The host's network: a build needs only the mirror, whatever state the engine's bridge is in.
        done = subprocess.run([docker_bin, "build", "-q", "--network", "host", "--build-arg", f"BASE_IMAGE={BASE}",
                               "-t", tag, "."], cwd=context, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"building {tag} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return tag
