"""One file back on the real engine through the real CLI: `list NAME --files` shows the
archive's members, `restore NAME --path` puts one file back into the volume through the
extract worker (the rest of the volume as it is now, the container running again), and
`--into` writes one into a folder on the backup volume through the same worker (refused,
writing nothing, where no worker may run; the listing too, which a worker reads)."""

from __future__ import annotations

import hashlib


def test_list_then_one_file_into_the_volume_and_one_into_a_folder(lab, worker_image):
    volume = lab.volume("data")
    lab.populate(volume, "mkdir -p conf && echo original > conf/app.ini && echo other > other.txt"
                         " && head -c 200000 /dev/urandom > big.bin")
    container = lab.workload("app", {"backup.enable": "true", "backup.strategy": "stop", "backup.mirror": "false"},
                             {volume: "/data"})
    env = {"BACKUP_WORKER_IMAGE": worker_image}
    assert lab.cli("backup", "app").returncode == 0  # read through the engine's API: the quick way here

    listing = lab.cli("list", "app", "--files", "--path", "conf", **env)  # read by a worker: the sidecar parses none
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["MODE", "SIZE", "MTIME", "PATH"]
    assert [line.split()[-1] for line in lines[1:-1]] == ["conf", "conf/app.ini"]
    assert lines[-1].endswith(": 2 of 5 entries (filtered)")

    lab.populate(volume, "echo broken > conf/app.ini && echo newer > other.txt && echo added > new.txt")
    done = lab.cli("restore", "app", "--volume", "data", "--path", "conf/app.ini", **env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("restored conf/app.ini from ") and "into volume data of " in done.stdout
    assert lab.run_oneshot("cat conf/app.ini other.txt new.txt", {volume: "/data"}) == "original\nnewer\nadded\n"
    container.reload()
    assert container.status == "running"

    refused = lab.cli("restore", "app", "--volume", "data", "--path", "big.bin", "--into", "restored/app",
                      BACKUP_WORKER_IMAGE="none")
    assert refused.returncode == 1 and "BACKUP_WORKER_IMAGE" in refused.stderr, refused.stderr
    assert not any((lab.backup_dir / "restored" / "app").iterdir())  # the sidecar wrote nothing itself
    unread = lab.cli("list", "app", "--files", BACKUP_WORKER_IMAGE="none")
    assert unread.returncode == 1 and "BACKUP_WORKER_IMAGE" in unread.stderr, unread.stderr

    into = lab.cli("restore", "app", "--volume", "data", "--path", "big.bin", "--into", "restored/app", **env)
    assert into.returncode == 0, into.stderr
    restored = (lab.backup_dir / "restored" / "app" / "big.bin").read_bytes()
    in_volume = lab.run_oneshot("sha256sum big.bin", {volume: "/data"}).split()[0]
    assert hashlib.sha256(restored).hexdigest() == in_volume
    assert sorted(p.name for p in (lab.backup_dir / "restored" / "app").iterdir()) == ["big.bin"]
