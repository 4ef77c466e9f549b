"""A varied tree survives backup -> archive -> restore byte for byte, with its metadata."""

from __future__ import annotations

import hashlib

from .support import extract_archive, host_manifest

VARIED_TREE = r"""
mkdir -p nested/deeper/deepest empty-dir "dir with space" nested/empty-inside
printf 'hello\n' > nested/deeper/deepest/file.txt
printf 'secret' > secret.txt && chmod 600 secret.txt
printf '#!/bin/sh\necho hi\n' > run.sh && chmod 755 run.sh
printf 'owned' > owned.txt && chown 1000:1000 owned.txt
mkdir owned-dir && chown 1000:1001 owned-dir && chmod 2750 owned-dir
printf 'u' > 'ünïcödé файл 文件.txt'
printf 'space' > 'dir with space/file with space.txt'
printf 'odd' > "odd \$name*?[x] 'q' \"dq\".txt"
printf 'dash' > ./-leading-dash
: > empty.bin
dd if=/dev/urandom of=big.bin bs=1M count=50 2>/dev/null
ln nested/deeper/deepest/file.txt hardlink.txt
ln -s nested/deeper/deepest/file.txt symlink.txt
ln -s ../secret.txt nested/up-link
ln -s missing-target dangling
chmod 700 nested
touch -d '2001-02-03 04:05:06' secret.txt
touch -d '2010-05-06 07:08:09' nested/deeper
chmod 0750 /data
"""


def test_varied_tree_round_trips_byte_for_byte(lab, tmp_path):
    volume = lab.volume("appdata")
    lab.populate(volume, VARIED_TREE)
    original = lab.manifest(volume)
    assert len(original) >= 20 and "./big.bin" in original
    assert original["./hardlink.txt"][5] == "2"  # really a hard link

    app = lab.workload("app", {"backup.enable": "true", "backup.strategy": "hot"}, {volume: "/data"})
    done = lab.cli("backup", "app")
    assert done.returncode == 0, done.stderr

    archives = lab.archives()
    assert [a.name.split("_")[:2] for a in archives] == [["app", "appdata"]]
    archive = archives[0]
    assert archive.parent.name == "daily" and archive.name.endswith("_daily.tar.zst")
    assert oct(archive.stat().st_mode & 0o777) == "0o600"
    checksum = archive.with_name(archive.name + ".sha256").read_text()
    assert checksum == f"{hashlib.sha256(archive.read_bytes()).hexdigest()}  {archive.name}\n"

    # Extracted on the host: identical contents and metadata.
    extracted = tmp_path / "extracted"
    extract_archive(archive, extracted)
    assert host_manifest(extracted) == original

    # Restored into the emptied volume: identical again, container running afterwards.
    lab.populate(volume, "rm -rf -- ..?* .[!.]* *")
    assert set(lab.manifest(volume)) == {"."}
    restored = lab.cli("restore", "app", "--volume", "appdata", "--archive", "latest")
    assert restored.returncode == 0, restored.stderr
    assert lab.manifest(volume) == original
    assert lab.state(app) == "running"
