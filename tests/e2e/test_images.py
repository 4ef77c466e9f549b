"""Image export: images that cannot be pulled again are exported once, and load back."""

from __future__ import annotations

import uuid

from .support import wait_for


def test_local_image_is_exported_pushed_one_is_not_and_export_loads_back(lab, docker_client, registry):
    marker = uuid.uuid4().hex[:12]
    local_tag = f"{lab.project}-local:v1"
    local_id = lab.build_image(local_tag, marker)
    pushed_tag = f"{registry.address}/{lab.project}-pushed:v1"
    lab.build_image(pushed_tag, "pushed-" + marker)
    for line in docker_client.api.push(pushed_tag, stream=True, decode=True):
        assert "error" not in line, line
    assert docker_client.images.get(pushed_tag).attrs["RepoDigests"], "the push gave no repository digest"

    vol = lab.volume("data")
    lab.workload("local", {"backup.enable": "true", "backup.strategy": "hot"}, {vol: "/data"}, image=local_tag)
    lab.workload("pushed", {"backup.enable": "true", "backup.strategy": "hot"}, {vol: "/data"}, image=pushed_tag)
    lab.workload("forced", {"backup.enable": "true", "backup.strategy": "hot", "backup.image": "always"},
                 {vol: "/data"}, image=pushed_tag)
    lab.workload("never", {"backup.enable": "true", "backup.strategy": "hot", "backup.image": "never"},
                 {vol: "/data"}, image=local_tag)

    done = lab.cli("backup", "--all")
    assert done.returncode == 0, done.stderr
    exports = [p.name for p in lab.archives(folder="images")]
    assert len(exports) == 2, exports
    assert any(n.startswith(f"{lab.project}-local_v1_") for n in exports)
    assert any(n.startswith(f"127.0.0.1-{registry.port}-{lab.project}-pushed_v1_") for n in exports)
    for path in lab.archives(folder="images"):
        assert path.with_name(path.name + ".sha256").exists()
        assert oct(path.stat().st_mode & 0o777) == "0o600"

    # An unchanged image is not exported again.
    again = lab.cli("backup", "--all")
    assert again.returncode == 0, again.stderr
    assert len(lab.archives(folder="images")) == 2

    # The host loses the image; restore-image brings it back, tagged, and it runs.
    [local_export] = [p for p in lab.archives(folder="images") if p.name.startswith(f"{lab.project}-local")]
    for c in docker_client.containers.list(all=True, filters={"ancestor": local_id}):
        c.remove(force=True)
    docker_client.api.remove_image(local_tag, force=True)
    assert not docker_client.images.list(name=f"{lab.project}-local")
    loaded = lab.cli("restore-image", str(local_export))
    assert loaded.returncode == 0, loaded.stderr
    assert local_tag in loaded.stdout
    wait_for(lambda: docker_client.images.list(name=f"{lab.project}-local"), timeout=30, what="the loaded image")
    out = docker_client.containers.run(local_tag, ["cat", "/marker"], remove=True, network_mode="none")
    assert out.decode().strip() == marker


def test_restore_image_refuses_a_corrupted_export(lab):
    lab.build_image(f"{lab.project}-x:1", "x")
    vol = lab.volume("data")
    lab.workload("x", {"backup.enable": "true", "backup.strategy": "hot"}, {vol: "/data"}, image=f"{lab.project}-x:1")
    assert lab.cli("backup", "x").returncode == 0
    [export] = lab.archives(folder="images")
    no_worker = lab.cli("restore-image", export.name, BACKUP_WORKER_IMAGE="none")  # issue 19: read by a worker only
    assert no_worker.returncode == 1 and "BACKUP_WORKER_IMAGE" in no_worker.stderr, no_worker.stderr
    data = bytearray(export.read_bytes())
    data[len(data) // 2] ^= 1
    export.write_bytes(bytes(data))
    refused = lab.cli("restore-image", export.name)
    assert refused.returncode != 0 and "SHA-256" in refused.stderr
