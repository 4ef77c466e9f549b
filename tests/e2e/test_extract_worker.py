"""The checked extractor inside a container, as a worker runs it: `python -m sidecar.tarball.extract`
from the sidecar image with the target volume mounted read-write and the backup folder
read-only. This tree's package is mounted over the image's (PYTHONPATH), so the test runs
the code under test without an image of its own."""

from __future__ import annotations

import hashlib
import tarfile

import docker
import pytest

from sidecar.tarball.extract import EXIT_REFUSED, worker_command

from .support import REPO, tar_bytes
from .test_roundtrip import VARIED_TREE


def _run_worker(lab, image: str, volume: str, archive: str) -> tuple[int, str, list]:
    """Exit code, output, and what changed in the worker's own filesystem (outside its mounts)."""
    command = worker_command(f"/backups/{archive}", "/target")
    container = lab.client.containers.create(
        image, entrypoint=command[:1], command=command[1:], user="0", network_mode="none",
        environment={"PYTHONPATH": "/opt/tree"},
        volumes={volume: {"bind": "/target", "mode": "rw"},
                 str(lab.backup_dir): {"bind": "/backups", "mode": "ro"},
                 str(REPO / "sidecar"): {"bind": "/opt/tree/sidecar", "mode": "ro"}})
    try:
        container.start()
        code = container.wait(timeout=300)["StatusCode"]
        mounts = {"/target", "/backups", "/opt", "/opt/tree", "/opt/tree/sidecar"}  # the mount points themselves
        changed = [c["Path"] for c in container.diff() or [] if c["Path"] not in mounts]
        return code, container.logs().decode("utf-8", "replace"), changed
    finally:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass


def test_the_worker_restores_a_varied_tree_byte_for_byte(lab, sidecar_image):
    source = lab.volume("appdata")
    lab.populate(source, VARIED_TREE)
    original = lab.manifest(source)
    lab.workload("app", {"backup.enable": "true", "backup.strategy": "hot"}, {source: "/data"})
    assert lab.cli("backup", "app").returncode == 0
    [archive] = lab.archives()

    target = lab.volume("restored")
    code, logs, changed = _run_worker(lab, sidecar_image, target, f"daily/{archive.name}")
    assert code == 0, logs
    assert changed == []
    assert '"members"' in logs
    assert lab.manifest(target) == original


@pytest.mark.parametrize("link", ["/", "../../.."])
def test_the_worker_refuses_an_escape_and_writes_nothing_through_it(lab, sidecar_image, link):
    members = []
    for name, kind, data, target in [("./ok.txt", tarfile.REGTYPE, b"ok", ""), ("./d", tarfile.SYMTYPE, None, link),
                                     ("./d/etc/ESCAPED", tarfile.REGTYPE, b"pwned", "")]:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.size = kind, target, len(data or b"")
        members.append((info, data))
    raw = tar_bytes(members)
    folder = lab.backup_dir / "daily"
    folder.mkdir(exist_ok=True)
    path = folder / "app_data_2026-01-01_daily.tar"
    path.write_bytes(raw)
    (folder / f"{path.name}.sha256").write_text(f"{hashlib.sha256(raw).hexdigest()}  {path.name}\n")

    target = lab.volume("restored")
    code, logs, changed = _run_worker(lab, sidecar_image, target, f"daily/{path.name}")
    assert code == EXIT_REFUSED, logs
    assert changed == []  # nothing written anywhere in the worker outside the target
    assert "refused" in logs and "'d'" in logs
    assert set(lab.manifest(target)) <= {".", "./ok.txt"}
