"""The worker reader's pure parts: where the backup volume and the target's volume are
mounted in a worker, and which names the archive worker lists when excludes are set."""

from __future__ import annotations

import io
import os
import socket
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from sidecar.tarball.archive import filter_tar
from sidecar.docker.engine import Engine, _frame_lines, own_ids_in_mountinfo
from sidecar.core.model import ContainerInfo, ContainerState, Mount, WorkerMount
from sidecar.readers.worker import STORE_ROOT, VOLUME_ROOT, store_mount, volume_mounts
from sidecar import worker
from sidecar.worker.archive import listing, tar_command


def _container(*mounts: Mount) -> ContainerInfo:
    return ContainerInfo("c" * 64, "side", "img", "sha256:" + "1" * 64, ContainerState.RUNNING, {}, mounts)


def test_a_host_process_mounts_backup_dir_itself():
    store = store_mount(Path("/srv/backups"), None)
    assert store.mount == WorkerMount("bind", "/srv/backups", STORE_ROOT, read_only=False)
    assert store.inside(Path("/srv/backups/daily/a.tar.zst.partial")) == "/backups/daily/a.tar.zst.partial"


def test_a_container_mounts_the_mount_that_holds_backup_dir():
    own = _container(Mount("bind", "/var/run/docker.sock", "/var/run/docker.sock"),
                     Mount("volume", "outer", "/srv"), Mount("volume", "backups", "/srv/store"))
    store = store_mount(Path("/srv/store/b"), own)
    assert store.mount == WorkerMount("volume", "backups", STORE_ROOT, read_only=False)
    assert store.inside(Path("/srv/store/b/daily/x")) == "/backups/b/daily/x"
    assert store_mount(Path("/srv/store"), own).mount.source == "backups"
    assert store_mount(Path("/srv/other"), own).mount.source == "outer"
    assert store_mount(Path("/backups"), own) is None  # in the container's own layer: no worker can see it
    assert store_mount(Path("/srv/storex"), own).mount.source == "outer"  # a prefix of a name is no parent


def test_store_keys_differ_per_backup_volume_and_stay_the_same():
    a, b = store_mount(Path("/x"), None), store_mount(Path("/y"), None)
    assert a.key != b.key and a.key == store_mount(Path("/x"), None).key and len(a.key) == 16


def test_the_volume_is_read_only_with_nested_mounts_below_it():
    data = Mount("volume", "app_data", "/data")
    container = _container(data, Mount("bind", "/host/cache", "/data/cache"), Mount("volume", "logs", "/datalogs"),
                           Mount("volume", "deep", "/data/a/b"))
    assert volume_mounts(container, data) == (
        WorkerMount("volume", "app_data", VOLUME_ROOT),
        WorkerMount("volume", "deep", VOLUME_ROOT + "/a/b"),
        WorkerMount("bind", "/host/cache", VOLUME_ROOT + "/cache"),
    )


def test_tar_reads_a_list_only_with_excludes():
    assert tar_command(Path("/v"), False)[-1] == "."
    listed = tar_command(Path("/v"), True)
    assert "--no-recursion" in listed and "--null" in listed and "--files-from=-" in listed
    assert {"--sparse", "--xattrs", "--numeric-owner", "--format=posix", "--sort=name"} <= set(listed)


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "vol"
    for folder in ("cache/sub", "a/b", "logs", "keep", "data/cache"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name in ("cache/x", "cache/sub/y", "a/b/c.tmp", "a/b/c.txt", "logs/app.log", "keep/app.log.1",
                 "data/cache/z", "top.log", "-dash", "sp ace"):
        (root / name).write_text(name)
    os.link(root / "cache/x", root / "keep/link-to-excluded")  # its first occurrence is excluded
    os.link(root / "a/b/c.txt", root / "z-link")  # first occurrence kept
    os.symlink("cache", root / "cache-link")
    return root


def _listed(root: Path, patterns) -> list[str]:
    return [entry[:-1].decode() for entry in listing(root, patterns)]


@pytest.mark.parametrize("patterns", [("cache",), ("*.log",), ("a/b/*.tmp",), ("/cache/",), ("a",), ("nothing",),
                                      ("cache", "*.log", "keep")])
def test_listing_keeps_the_meaning_of_excludes(tree, patterns):
    """The oracle is today's filter of the engine-API path (archive.filter_tar) over a tar
    of the same tree in the same order (tarfile.add sorts each folder by name)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(tree, arcname=".")
    filtered = io.BytesIO()
    filter_tar([raw.getvalue()], filtered, patterns)
    with tarfile.open(fileobj=io.BytesIO(filtered.getvalue()), mode="r:") as tar:
        expected = [m.name for m in tar]
    assert _listed(tree, patterns) == expected


def test_listing_is_in_tar_order(tree):
    names = _listed(tree, ("nothing",))
    for i, name in enumerate(names[1:], 1):
        parent = name.rsplit("/", 1)[0]
        assert parent in names[:i]  # a folder before its contents
    assert names[1:4] == ["./-dash", "./a", "./a/b"]  # by name, each folder's contents right after it


@pytest.mark.parametrize("url, local", [
    ("http+docker://localhost", True), ("http://127.0.0.1:2375", True), ("https://localhost:2376", True),
    ("http://10.1.2.3:2375", False), ("https://docker.example:2376", False), ("http://localhost.evil:1", False),
])
def test_the_engine_is_local_only_through_a_socket_or_loopback(url, local):
    engine = Engine.__new__(Engine)  # no connection: only the address matters
    engine.api = SimpleNamespace(base_url=url)
    assert engine.is_local is local


def test_own_container_is_found_only_through_its_own_etc_files():
    a, b = "a" * 64, "b" * 64
    inside = (f"70 67 254:0 /var/lib/docker/containers/{a}/hostname /etc/hostname rw - ext4 /dev/vda rw\n"
              f"71 67 254:0 /var/lib/docker/containers/{a}/hosts /etc/hosts rw - ext4 /dev/vda rw\n")
    host = (f"69 67 254:0 /var/lib/docker/containers/{b}/resolv.conf "
            f"/var/lib/docker/overlay2/x/merged/etc/resolv.conf rw - ext4 /dev/vda rw\n"
            f"80 25 0:50 / /var/lib/docker/containers/{b}/mounts/shm rw - tmpfs shm rw\n")
    assert own_ids_in_mountinfo(inside) == [a, a]
    assert own_ids_in_mountinfo(host) == []


def test_the_compressors_pipe_to_the_worker_is_widened(tmp_path, monkeypatch):
    """zstd -T0 writes ahead (PIPE_BYTES) while the worker hashes and writes a chunk,
    instead of waiting in a 64 KiB pipe for each read; the archive is the same."""
    import fcntl

    from sidecar.core.model import Compression
    from sidecar.worker import archive

    (tmp_path / "volume").mkdir()
    (tmp_path / "volume" / "f").write_bytes(os.urandom(1 << 16))
    output = tmp_path / "out.tar.zst"
    output.touch()
    sizes: list[int] = []
    real = archive._widen

    def spy(*pipes):
        real(*pipes)
        sizes.extend(fcntl.fcntl(p.fileno(), 1032) for p in pipes if p is not None)  # F_GETPIPE_SZ

    monkeypatch.setattr(archive, "_widen", spy)
    outcome = archive.run_archive(archive.ArchiveJob(tmp_path / "volume", output, Compression.ZSTD), lambda r: None)
    assert sizes == [archive.PIPE_BYTES] and outcome.size == output.stat().st_size


@pytest.mark.parametrize("line, record", [
    ('{"event": "progress", "tar_bytes": 5}', {"event": "progress", "tar_bytes": 5}),
    ("Traceback (most recent call last):", {}),  # Python's own output: not a record
    ('["a", "list"]', {}),  # JSON, but not a record
    ("", {}),
])
def test_the_sidecar_reads_a_workers_line_as_its_record_or_nothing(line, record):
    assert worker.record_of(line) == record


def _framed(*frames: tuple[int, bytes]) -> bytes:
    """The engine's attach stream (no TTY): each frame an 8-byte header (stream, size) and its bytes."""
    return b"".join(bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data for stream, data in frames)


def test_an_attach_with_on_data_gives_stdout_as_data_and_stderr_as_lines():
    """Issue 19's streaming worker: the data on stdout never mixes with the records on stderr,
    whatever the frames' boundaries; without on_data both streams are lines, as before."""
    frames = _framed((2, b'{"event": "verif'), (1, b"SELECT 1;\n{\"event\": \"x\"}\n"), (2, b'ied"}\n'),
                     (1, b"\0\xff"), (2, b"done"))

    def lines(on_data=None) -> list[str]:
        ours, theirs = socket.socketpair()
        theirs.sendall(frames)
        theirs.close()
        try:
            return list(_frame_lines(ours, on_data))
        finally:
            ours.close()

    data = bytearray()
    assert lines(data.extend) == ['{"event": "verified"}', "done"]
    assert bytes(data) == b'SELECT 1;\n{"event": "x"}\n\0\xff'
    assert lines() == ["SELECT 1;", '{"event": "x"}', '{"event": "verified"}', "\0\ufffd", "done"]
