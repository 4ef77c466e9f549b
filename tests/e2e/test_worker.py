"""The worker reader on the real engine: volumes archived by a short-lived worker container
from the sidecar's image, equal member by member to the engine-API reader's archives,
restored by today's restore; the fallback; the launcher's cleanup (no container and no
anonymous volume left, timeout, abort, leftovers removed at start-up)."""

from __future__ import annotations

import hashlib
import re
import tarfile

import docker.errors
import pytest
import zstandard

from sidecar.docker.engine import WORKER_LABEL, Engine
from sidecar.core.errors import BackupAborted
from sidecar.core.model import WorkerMount, WorkerSpec
from sidecar.readers.worker import STORE_LABEL, TARGET_LABEL, store_mount

from .support import extract_archive, host_manifest, log_records, stderr_records, wait_for
from .test_roundtrip import VARIED_TREE

# More than the round-trip tree: sparse files, hard links in other folders, a deep empty
# folder, names with tabs and backslashes (the manifest is line-based: no newlines).
EXTRA_TREE = r"""
dd if=/dev/urandom of=sparse.bin bs=4096 count=2 seek=5000 2>/dev/null
truncate -s 100M holes-only.bin
mkdir -p a/b/c/d/e/empty other
ln big.bin other/big-link.bin
printf 'tab' > "$(printf 'tab\there')"
printf 'bs' > 'back\slash'
printf 'log' > other/debug.log
mkdir cache && printf 'c' > cache/x && ln cache/x kept-link
touch -d '1999-12-31 23:59:59' a/b
"""


def _set_xattrs(lab, volume, image) -> bool:
    """user.* xattrs on two files through a container of the sidecar's image; False where
    the filesystem refuses them."""
    script = ("import os\n"
              "try:\n"
              "    os.setxattr('/data/secret.txt', 'user.note', b'hello')\n"
              "    os.setxattr('/data/nested', 'user.dir', b'x' * 300)\n"
              "    print('ok')\n"
              "except OSError as e:\n"
              "    print('no', e)\n")
    out = lab.client.containers.run(image, ["-c", script], entrypoint=["python"], user="0", remove=True,
                                    volumes={volume: {"bind": "/data", "mode": "rw"}}, network_mode="none")
    return out.decode().startswith("ok")


def _members(path) -> dict[str, tuple]:
    """name -> (type, mode, uid, gid, mtime in s, linkname, content sha) of a .tar.zst."""
    rows = {}
    with open(path, "rb") as raw, tarfile.open(fileobj=zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True),
                                               mode="r|", errors="surrogateescape") as tar:
        for m in tar:
            name = m.name[2:] if m.name.startswith("./") else m.name
            name = "." if name in ("", ".", "./") else name.rstrip("/")
            data = tar.extractfile(m).read() if m.isreg() else b""
            link = m.linkname[2:] if m.linkname.startswith("./") else m.linkname
            rows[name] = (m.type, m.mode & 0o7777, m.uid, m.gid, int(m.mtime), link, hashlib.sha256(data).hexdigest(),
                          {k: v for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")})
    return rows


def _readers_used(records) -> tuple[int, list[str]]:
    worker = sum(1 for r in records if r.get("message") == "volume archived by a worker container")
    fallback = [r.get("reason") for r in records
                if r.get("message") == "reading through the engine's archive API instead of a worker container"]
    return worker, fallback


def test_worker_archive_equals_the_engine_api_archive_and_round_trips(lab, worker_image, tmp_path):
    volume = lab.volume("appdata")
    lab.populate(volume, VARIED_TREE + EXTRA_TREE)
    has_xattrs = _set_xattrs(lab, volume, worker_image)
    original = lab.manifest(volume)
    assert original["./hardlink.txt"][5] == "2" and original["./other/big-link.bin"][5] == "2"
    app = lab.workload("app", {"backup.enable": "true", "backup.strategy": "stop"}, {volume: "/data"})

    by_api = lab.cli("backup", "app")
    assert by_api.returncode == 0, by_api.stderr
    assert _readers_used(stderr_records(by_api.stderr))[0] == 0
    api_archive = lab.archives()[0]
    api_archive.rename(tmp_path / "api.tar.zst")

    by_worker = lab.cli("backup", "app", BACKUP_WORKER_IMAGE=worker_image)
    assert by_worker.returncode == 0, by_worker.stderr
    assert _readers_used(stderr_records(by_worker.stderr)) == (1, [])
    [archive] = lab.archives(folder="daily")
    assert oct(archive.stat().st_mode & 0o777) == "0o600"
    checksum = archive.with_name(archive.name + ".sha256").read_text()
    assert checksum == f"{hashlib.sha256(archive.read_bytes()).hexdigest()}  {archive.name}\n"
    assert not list(lab.backup_dir.rglob("*.partial")) and lab.state(app) == "running"

    # Member by member: the same names, types, modes, owners, times, links and bytes; the
    # worker also keeps user xattrs (the engine's archive API keeps only security.capability).
    api, worker = _members(tmp_path / "api.tar.zst"), _members(archive)
    assert sorted(api) == sorted(worker)
    assert {n: r[:7] for n, r in api.items()} == {n: r[:7] for n, r in worker.items()}
    if has_xattrs:
        assert worker["secret.txt"][7] == {"SCHILY.xattr.user.note": "hello"}
        assert worker["nested"][7] == {"SCHILY.xattr.user.dir": "x" * 300}

    extracted = tmp_path / "extracted"
    extract_archive(archive, extracted)
    assert host_manifest(extracted) == original
    assert (extracted / "holes-only.bin").stat().st_blocks == 0  # stored sparse, unpacked sparse

    # Today's restore reads the worker's archive like any other.
    lab.populate(volume, "rm -rf -- ..?* .[!.]* *")
    restored = lab.cli("restore", "app", "--volume", "appdata", "--archive", "latest")
    assert restored.returncode == 0, restored.stderr
    assert lab.manifest(volume) == original
    if has_xattrs:  # the engine's unpack applies the PAX xattr records
        script = "import os; print(os.getxattr('/data/secret.txt', 'user.note'), len(os.getxattr('/data/nested', 'user.dir')))"
        out = lab.client.containers.run(worker_image, ["-c", script], entrypoint=["python"], user="0", remove=True,
                                        volumes={volume: {"bind": "/data", "mode": "ro"}}, network_mode="none")
        assert out.decode().split() == ["b'hello'", "300"]


def test_bind_mounts_and_volumes_with_driver_options(lab, worker_image, tmp_path):
    folder = tmp_path / "bind-src"
    folder.mkdir()
    (folder / "file.txt").write_text("bound\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "deep.bin").write_bytes(b"\0\1" * 1000)
    tmpfs = f"{lab.project}_tmpfs"
    lab.client.volumes.create(tmpfs, driver_opts={"type": "tmpfs", "device": "tmpfs", "o": "size=64m"})
    lab._volumes.append(tmpfs)
    labels = {"backup.enable": "true", "backup.strategy": "hot", "backup.volumes": "/bound,/fast"}
    app = lab.container(
        "backup-sidecar-test/busybox:latest", name=f"{lab.project}-app", network_mode="none",
        labels={**labels, "com.docker.compose.project": lab.project, "com.docker.compose.service": "app"},
        command=["sh", "-c", "printf 'in tmpfs' > /fast/t.txt; mkdir /fast/d; trap 'exit 0' TERM; "
                                   "while :; do sleep 1 & wait $!; done"],
        volumes={str(folder): {"bind": "/bound", "mode": "rw"}, tmpfs: {"bind": "/fast", "mode": "rw"}})
    assert lab.state(app) == "running"
    done = lab.cli("backup", "app", BACKUP_WORKER_IMAGE=worker_image)
    assert done.returncode == 0, done.stderr
    assert _readers_used(stderr_records(done.stderr)) == (2, [])
    by_name = {a.name.split("_")[1]: a for a in lab.archives()}
    assert set(by_name) == {"bound", "tmpfs"}
    names = set(_members(by_name["bound"]))
    assert names == {".", "file.txt", "sub", "sub/deep.bin"}
    fast = _members(by_name["tmpfs"])
    assert set(fast) == {".", "t.txt", "d"}
    assert fast["t.txt"][6] == hashlib.sha256(b"in tmpfs").hexdigest()


def test_excludes_keep_their_meaning(lab, worker_image, tmp_path):
    volume = lab.volume("appdata")
    lab.populate(volume, VARIED_TREE + EXTRA_TREE)
    labels = {"backup.enable": "true", "backup.strategy": "hot", "backup.exclude": "cache,*.log,nested/deeper,big.bin"}
    lab.workload("app", labels, {volume: "/data"})
    assert lab.cli("backup", "app").returncode == 0
    api_archive = lab.archives()[0]
    api_archive.rename(tmp_path / "api.tar.zst")
    done = lab.cli("backup", "app", BACKUP_WORKER_IMAGE=worker_image)
    assert done.returncode == 0, done.stderr
    assert _readers_used(stderr_records(done.stderr)) == (1, [])
    api, worker = _members(tmp_path / "api.tar.zst"), _members(lab.archives(folder="daily")[0])
    assert not [n for n in worker if n.startswith("cache") or n.endswith(".log") or n.startswith("nested/deeper")]
    # A hard link whose first occurrence is excluded goes too (also inside an excluded folder).
    assert "big.bin" not in worker and "other/big-link.bin" not in worker and "kept-link" not in worker
    assert "nested" in worker and "other" in worker
    assert sorted(api) == sorted(worker)
    assert {n: r[:7] for n, r in api.items()} == {n: r[:7] for n, r in worker.items()}


@pytest.mark.slow  # the actions tier covers encryption in the worker; test_encryption keeps a real round trip
def test_encrypted_by_the_worker_and_no_key_left(lab, worker_image, tmp_path):
    volume = lab.volume("appdata")
    lab.populate(volume, "printf 'secret data' > s.txt")
    lab.workload("app", {"backup.enable": "true", "backup.strategy": "hot"}, {volume: "/data"})
    done = lab.cli("backup", "app", BACKUP_WORKER_IMAGE=worker_image, BACKUP_AGE_PASSPHRASE="correct horse")
    assert done.returncode == 0, done.stderr
    assert _readers_used(stderr_records(done.stderr)) == (1, [])
    assert "correct horse" not in done.stderr
    [archive] = lab.archives(folder="daily")
    assert archive.name.endswith(".tar.zst.age") and archive.read_bytes().startswith(b"age-encryption.org/v1")
    assert list((lab.backup_dir / ".sidecar" / "workers").iterdir()) == []
    lab.populate(volume, "rm -f s.txt")
    restored = lab.cli("restore", "app", "--volume", "appdata", "--archive", "latest",
                       BACKUP_AGE_PASSPHRASE="correct horse")
    assert restored.returncode == 0, restored.stderr
    assert lab.manifest(volume)["./s.txt"][-1] == hashlib.sha256(b"secret data").hexdigest()


# (A host CLI with BACKUP_WORKER_IMAGE unset would take the newest local image labelled by the
# Dockerfile, maybe another work tree's: tests/actions/test_worker_image.py covers that choice.)
@pytest.mark.parametrize("image", [  # the default run keeps the setting's `none`; the slow group the others
    "none", pytest.param("backup-sidecar-test/busybox:latest", marks=pytest.mark.slow),
    pytest.param("no-such/image:1", marks=pytest.mark.slow)])
def test_falls_back_to_the_engine_api_with_the_reason_logged_once(lab, image):
    volume = lab.volume("appdata")
    other = lab.volume("other")
    lab.populate(volume, "printf x > x")
    lab.workload("app", {"backup.enable": "true", "backup.strategy": "hot"}, {volume: "/data", other: "/other"})
    done = lab.cli("backup", "app", BACKUP_WORKER_IMAGE=image)
    assert done.returncode == 0, done.stderr
    worker, reasons = _readers_used(stderr_records(done.stderr))
    assert worker == 0 and len(reasons) == 1  # two volumes, one line
    expected = {"none": "BACKUP_WORKER_IMAGE=none",
                "backup-sidecar-test/busybox:latest": '"python": executable file not found',
                "no-such/image:1": "no worker container from image no-such/image:1"}[image]
    assert expected in reasons[0]
    assert len(lab.archives()) == 2


# --- the launcher ---------------------------------------------------------------------------

def _engine():
    return Engine()


def _anonymous(mounts) -> list[str]:
    return [m["Name"] for m in mounts if m.get("Type") == "volume" and re.fullmatch(r"[0-9a-f]{64}", m["Name"])]


@pytest.mark.parametrize("backup_mounted", [True, False])
def test_worker_is_removed_with_no_volume_left(lab, worker_image, backup_mounted):
    store = lab.volume("store")
    engine = _engine()
    seen = {}

    def on_line(line):
        if line == "ready":
            name = engine.api.containers(filters={"label": WORKER_LABEL + "=test"})[0]["Names"][0].lstrip("/")
            info = engine.api.inspect_container(name)
            seen.update(name=name, mounts=info["Mounts"], config=info["HostConfig"], user=info["Config"]["User"])
        return True

    mounts = (WorkerMount("volume", store, "/backups", read_only=False),) if backup_mounted else ()
    spec = WorkerSpec(worker_image, ("sh", "-c", "echo ready; sleep 1; echo done"), "test", mounts,
                      labels={STORE_LABEL: lab.project})
    before = set(v.name for v in lab.client.volumes.list())
    result = engine.run_worker(spec, on_line)
    assert result.ok and result.tail == ("ready", "done")
    assert seen["config"]["NetworkMode"] == "none" and seen["config"]["ReadonlyRootfs"] is True
    # No user asked for: the image's own (the sidecar's non-root user), never root by default.
    assert seen["config"]["CapDrop"] == ["ALL"] and seen["user"] == lab.client.images.get(worker_image).attrs["Config"]["User"]
    anonymous = _anonymous(seen["mounts"])
    # Mounted at /backups, the backup volume stands in for the image's VOLUME /backups;
    # without it the engine makes an anonymous volume, removed with the worker.
    assert len(anonymous) == (0 if backup_mounted else 1)
    for name in anonymous:
        with pytest.raises(docker.errors.NotFound):
            lab.client.volumes.get(name)
    with pytest.raises(docker.errors.NotFound):
        lab.client.containers.get(seen["name"])
    after = set(v.name for v in lab.client.volumes.list())
    assert not (after - before) & set(anonymous)
    engine.close()


def test_worker_timeout_and_abort_remove_it(lab, worker_image):
    engine = _engine()
    spec = WorkerSpec(worker_image, ("sh", "-c", "echo start; exec sleep 60"), "test", timeout=2)
    result = engine.run_worker(spec)
    assert result.timed_out and not result.ok and result.seconds < 30
    assert engine.list_workers({}) == [] or all(w.name != result.name for w in engine.list_workers({}))

    def abort(line):
        raise BackupAborted("app", "read", "the sidecar is shutting down")

    with pytest.raises(BackupAborted):
        engine.run_worker(WorkerSpec(worker_image, ("sh", "-c", "echo start; exec sleep 60"), "test"), abort)
    assert [w for w in engine.list_workers({}) if w.labels.get(WORKER_LABEL) == "test"] == []
    engine.close()


def test_leftover_workers_are_removed_at_start_up(lab, worker_image):
    key = store_mount(lab.backup_dir, None).key
    labels = {WORKER_LABEL: "archive", STORE_LABEL: key, TARGET_LABEL: "app"}
    left = lab.container(worker_image, entrypoint=["sleep"], command=["300"], labels=labels, network_mode="none")
    mine_busy = lab.container(worker_image, entrypoint=["sleep"], command=["300"],
                              labels={**labels, STORE_LABEL: "someone-else"}, network_mode="none")
    done = lab.cli("backup", "--all")  # recovery runs first; no target here
    assert done.returncode == 0, done.stderr
    with pytest.raises(docker.errors.NotFound):
        lab.client.containers.get(left.id)
    assert lab.client.containers.get(mine_busy.id).status == "running"  # another backup volume's worker
    assert any(r.get("message") == "removed a worker container an interrupted sidecar left"
               for r in stderr_records(done.stderr))


@pytest.mark.slow  # test_worker_parent covers a worker outliving its sidecar in the default run
def test_sigterm_during_a_worker_read_leaves_no_worker(lab, worker_image):
    volume = lab.volume("appdata")
    lab.populate(volume, "dd if=/dev/urandom of=big bs=1M count=400 2>/dev/null")
    app = lab.workload("app", {"backup.enable": "true", "backup.strategy": "stop", "backup.compression": "gzip"},
                       {volume: "/data"})
    proc, log = lab.start_cli("backup", "app", BACKUP_WORKER_IMAGE=worker_image)
    key = store_mount(lab.backup_dir, None).key

    def worker_running():
        return lab.client.containers.list(filters={"label": f"{STORE_LABEL}={key}"}, sparse=True)

    wait_for(lambda: worker_running() or proc.poll() is not None, timeout=60, what="a worker container")
    proc.terminate()
    proc.wait(60)
    wait_for(lambda: not lab.client.containers.list(all=True, filters={"label": f"{STORE_LABEL}={key}"}, sparse=True),
             timeout=30, what="the worker to be removed")
    assert lab.state(app) == "running"
    assert not list(lab.backup_dir.rglob("*.tar.gz*"))
    assert any(r.get("message") == "worker ran past its timeout; killing it" for r in log_records(log)) is False


def test_a_worker_with_on_data_gets_stdout_as_data_and_stderr_as_lines(lab, worker_image):
    """Issue 19's channel for a streaming worker (extract --stream): the attach's frames keep
    stdout (the data, byte for byte) apart from stderr (the records), and the engine keeps no
    log of the data (`logged=False`: the json-file driver would write it to the host's disk)."""
    engine = _engine()
    seen, data = {}, bytearray()

    def on_line(line):
        if line == "ready":
            name = engine.api.containers(filters={"label": WORKER_LABEL + "=test"})[0]["Names"][0].lstrip("/")
            seen.update(config=engine.api.inspect_container(name)["HostConfig"])
        return True

    script = ("echo ready >&2; sleep 1; i=0; while [ $i -lt 3000 ]; do printf '%01023d\\n' $i; i=$((i+1)); done; "
              "echo done >&2")
    spec = WorkerSpec(worker_image, ("sh", "-c", script), "test", labels={STORE_LABEL: lab.project}, logged=False)
    result = engine.run_worker(spec, on_line, on_data=data.extend)
    assert result.ok and result.tail == ("ready", "done")
    assert bytes(data) == b"".join(b"%01023d\n" % i for i in range(3000))
    assert seen["config"]["LogConfig"]["Type"] == "none"
    engine.close()
