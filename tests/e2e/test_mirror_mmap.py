"""A stop backup through the staging mirror of an app writing through a shared mmap, on the
real engine (issue 20): the app's last write at its stop goes to a page that has been
dirty and writable since it started (tmpfs never writes a page back), so no time of the
file moves after the first pass. The archive must hold the bytes the app left at its stop,
which the app itself reports when it starts again."""

from __future__ import annotations

import hashlib
import re
import tarfile
import time

import pytest
import zstandard

from .app_images import ensure_app_image
from .support import stderr_records

STOP = {"backup.enable": "true", "backup.strategy": "stop"}


@pytest.fixture(scope="module")
def writer_image(docker_client):
    try:
        return ensure_app_image(docker_client, "mmap-writer")
    except RuntimeError as exc:
        pytest.fail(str(exc))


def _logged(container, pattern: str, count: int, deadline: float = 60.0) -> list[re.Match]:
    """The first `count` matches of `pattern` in the container's log, polled until there."""
    end = time.monotonic() + deadline
    while True:
        found = list(re.finditer(pattern, container.logs().decode()))
        if len(found) >= count or time.monotonic() > end:
            assert len(found) >= count, container.logs().decode()[-2000:]
            return found
        time.sleep(0.1)


def _member(archive, name: str) -> bytes:
    with open(archive, "rb") as raw, tarfile.open(fileobj=zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True),
                                                  mode="r|") as tar:
        for m in tar:
            if m.name == name:
                return tar.extractfile(m).read()
    raise AssertionError(f"{name} not in {archive}")


def test_the_last_write_through_a_dirty_mmap_page_is_in_the_archive(lab, worker_image, writer_image):
    volume = f"{lab.project}_mapped"
    lab._volumes.append(volume)  # removed in teardown
    lab.client.volumes.create(volume, driver="local", driver_opts={"type": "tmpfs", "device": "tmpfs",
                                                                   "o": "size=16m"},
                              labels={"com.docker.compose.project": lab.project})
    app = lab.container(writer_image, name=f"{lab.project}-app", network_mode="none",
                        labels={**STOP, "com.docker.compose.project": lab.project,
                                "com.docker.compose.service": "app"},
                        volumes={volume: {"bind": "/data", "mode": "rw"}})
    [mapped] = _logged(app, r"mapped (\d+\.\d+)", 1)
    # Past the old 2 s racy margin: the page's only fault (its mtime) is older than that.
    while time.time() < float(mapped.group(1)) + 3:
        time.sleep(0.1)

    done = lab.cli("backup", "app", BACKUP_WORKER_IMAGE=worker_image)
    assert done.returncode == 0, done.stderr
    records = stderr_records(done.stderr)
    assert any(str(r.get("message", "")).startswith("staging mirror caught up") for r in records), done.stderr

    _, again = _logged(app, r"found (\w+)", 2)  # what the app found when it started again
    [archive] = lab.archives()
    data = _member(archive, "./map.db")
    assert data[:8] == b"stopped ", data[:64]
    assert hashlib.sha256(data).hexdigest() == again.group(1)
