"""Per-node folders on a real S3 store (SeaweedFS), the real CLI and engine (issue 13,
item 3): node "n1" (BACKUP_NODE_PREFIX=true, BACKUP_NODE_NAME=n1) keeps its copies under
`{S3_PREFIX}/n1/`; a second node, "n2" with its own backup volume, lists n1's folder and
restores n1's archive from it with `--node n1`, and its own sync leaves n1's folder alone.
(The real two-node swarm is tests/e2e's swarm tests; this one needs no swarm.)"""

from __future__ import annotations

import hashlib
import json
import pytest

from .test_offsite import objects, s3_env


@pytest.mark.slow  # per-node folders (the Swarm group); the unit and actions tiers cover the prefixes
def test_node_folders_on_s3_and_restore_from_another_nodes_folder(lab, s3_server, s3_bucket, tmp_path):
    n1 = s3_env(s3_server, s3_bucket, S3_PREFIX="fleet", BACKUP_NODE_PREFIX="true", BACKUP_NODE_NAME="n1")
    volume = lab.volume("data")
    lab.populate(volume, "mkdir -p d; echo one > d/f; dd if=/dev/urandom of=r bs=1k count=64 2>/dev/null")
    original = lab.manifest(volume)
    lab.workload("app", {"backup.enable": "true", "backup.strategy": "stop"}, {volume: "/data"})
    done = lab.cli("backup", "app", **n1)
    assert done.returncode == 0, done.stderr

    [archive] = lab.archives()
    keys = objects(s3_server, s3_bucket)
    daily = f"fleet/n1/daily/{archive.name}"
    assert daily in keys and all(k.startswith("fleet/n1/") for k in keys), sorted(keys)
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=daily)
    assert head["Metadata"]["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    own = json.loads(lab.cli("list", "--remote", "--json", **n1).stdout)
    assert {(r["key"], r["node"], r["verified"]) for r in own if r["path"] == f"daily/{archive.name}"} == {
        (daily, "n1", True)}

    # Node n2: its own backup volume, the same store.
    n2 = {**n1, "BACKUP_NODE_NAME": "n2", "BACKUP_DIR": str(tmp_path / "n2-backups")}
    (tmp_path / "n2-backups").mkdir()
    listed = lab.cli("list", "--node", "n1", "--json", **n2)
    assert listed.returncode == 0, listed.stderr
    assert {(r["key"], r["verified"]) for r in json.loads(listed.stdout)
            if r["path"] == f"daily/{archive.name}"} == {(daily, False)}
    assert json.loads(lab.cli("list", "--remote", "--json", **n2).stdout) == []  # n2's own folder: empty

    lab.populate(volume, "rm -rf -- * .[!.]* ..?* || true")
    restored = lab.cli("restore", "app", "--volume", "data", "--from", "s3", "--node", "n1", **n2)
    assert restored.returncode == 0, restored.stderr
    assert lab.manifest(volume) == original
    assert not list((tmp_path / "n2-backups").rglob("*.tar.zst*"))  # the download is gone, nothing became n2's
    missing = lab.cli("restore", "app", "--volume", "data", "--node", "n3", "--force", **n2)
    assert missing.returncode == 2 and "node n3's folder" in missing.stderr

    synced = lab.cli("sync", **n2)
    assert synced.returncode == 0, synced.stderr
    after = objects(s3_server, s3_bucket)
    assert after.keys() == keys.keys() and all(after[k]["ETag"] == keys[k]["ETag"] for k in keys)
