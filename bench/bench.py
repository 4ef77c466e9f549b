#!/usr/bin/env python3
"""Backup speed and memory of the sidecar, as ratios against `tar | zstd` on the same data
in the same run (absolute seconds vary too much between shared machines to mean much).

    python bench/bench.py [--random-mb 400] [--text-mb 400] [--files 20000] [--runs 2]

Needs a running Docker engine, the busybox test image (./scripts/test builds both) and the
`zstd` command (apt-get install zstd). Creates one volume and one container, removes them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import docker

REPO = Path(__file__).resolve().parents[1]
BUSYBOX = os.environ.get("SIDECAR_TEST_BUSYBOX", "backup-sidecar-test/busybox:latest")


def fill(client, volume: str, random_mb: int, text_mb: int, files: int) -> None:
    script = (
        f"cd /data && dd if=/dev/urandom of=random.bin bs=1M count={random_mb} 2>/dev/null && "
        # Compressible text: a repeated dictionary-like pattern with varying numbers.
        f"i=0; while [ $i -lt 2000 ]; do echo \"line $i of the benchmark text, some words repeat\"; i=$((i+1)); done > seed.txt && "
        f"n=0; : > text.txt; while [ $(stat -c %s text.txt) -lt $(({text_mb}*1048576)) ]; do cat seed.txt seed.txt seed.txt seed.txt >> text.txt; "
        f"cat text.txt > t2 2>/dev/null; cat t2 >> text.txt; rm t2; n=$((n+1)); done; "
        f"mkdir small && cd small && i=0; while [ $i -lt {files} ]; do echo \"small file $i\" > f$i; i=$((i+1)); done"
    )
    client.containers.run(BUSYBOX, ["sh", "-c", script], volumes={volume: {"bind": "/data"}}, remove=True)


def engine_read_seconds(client, container_id: str) -> float:
    api = client.api
    start = time.monotonic()
    url = api._url("/containers/{0}/archive", container_id)
    response = api._get(url, params={"path": "/data/."}, stream=True, headers={"Accept-Encoding": "identity"})
    for _ in response.iter_content(1 << 20):
        pass
    response.close()
    return time.monotonic() - start


def rss_of(argv: list[str], env=None) -> tuple[float, int]:
    """Like timed() but measures this child alone (wait4 gives its own peak RSS)."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv} failed: {proc.stderr.read().decode()[-500:]}")
    return seconds, usage.ru_maxrss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--random-mb", type=int, default=400)
    parser.add_argument("--text-mb", type=int, default=400)
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    if not shutil.which("zstd"):
        print("bench: the zstd command is missing (apt-get install zstd)", file=sys.stderr)
        return 2

    client = docker.from_env(timeout=600)
    project = "bench" + uuid.uuid4().hex[:8]
    volume = f"{project}_data"
    client.volumes.create(volume, labels={"com.docker.compose.project": project})
    container = None
    tmp = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    try:
        print(f"filling {volume}: {args.random_mb} MB random, ~{args.text_mb} MB text, {args.files} small files ...")
        fill(client, volume, args.random_mb, args.text_mb, args.files)
        source = client.api.inspect_volume(volume)["Mountpoint"]
        size = int(subprocess.run(["du", "-sb", source], capture_output=True, text=True).stdout.split()[0])
        container = client.containers.run(
            BUSYBOX, ["sh", "-c", 'trap "exit 0" TERM; while :; do sleep 1 & wait $!; done'], detach=True,
            name=f"{project}-app", volumes={volume: {"bind": "/data"}},
            labels={"backup.enable": "true", "backup.strategy": "hot",
                    "com.docker.compose.project": project, "com.docker.compose.service": "app"})
        env = {**os.environ, "BACKUP_DIR": str(tmp), "BACKUP_PROJECT": project, "LOG_LEVEL": "WARNING"}

        rows = []
        for run in range(1, args.runs + 1):
            base_s, _ = rss_of(["sh", "-c", f"tar -C {source} -cf - . | zstd -3 -T0 -q > {tmp}/baseline.tar.zst"])
            base_size = (tmp / "baseline.tar.zst").stat().st_size
            (tmp / "baseline.tar.zst").unlink()
            # The floor for any engine-API reader: the engine's own archive stream, read and dropped.
            floor_s = engine_read_seconds(client, container.id)
            side_s, side_rss = rss_of([sys.executable, "-m", "sidecar", "backup", "app"], env=env)
            side_size = sum(a.stat().st_size for a in tmp.glob("*/*.tar.zst"))
            for a in tmp.glob("*/*.tar.zst*"):
                a.unlink()
            rows.append((run, base_s, floor_s, side_s, side_rss, base_size, side_size))

        print(f"\ndata: {size / 1e6:.0f} MB in the volume")
        print("baseline: `tar -cf - . | zstd -3 -T0` on the host; engine floor: the engine's archive stream read and dropped")
        print(f"{'run':>3}  {'baseline s':>10}  {'engine s':>8}  {'sidecar s':>9}  {'/baseline':>9}  {'/engine':>7}  "
              f"{'MB/s':>5}  {'peak RSS MiB':>12}  {'size/baseline':>13}")
        for run, base_s, floor_s, side_s, side_rss, base_size, side_size in rows:
            print(f"{run:>3}  {base_s:>10.2f}  {floor_s:>8.2f}  {side_s:>9.2f}  {side_s / base_s:>9.2f}  "
                  f"{side_s / floor_s:>7.2f}  {size / side_s / 1e6:>5.0f}  {side_rss / 1024:>12.0f}  "
                  f"{side_size / base_size:>13.3f}")
        best = min(rows, key=lambda r: r[3] / r[1])
        print(f"\nbest: sidecar/baseline {best[3] / best[1]:.2f}, sidecar/engine floor {best[3] / best[2]:.2f} "
              f"(goal <= 1.5), peak RSS {best[4] / 1024:.0f} MiB (goal <= 256 MiB whatever the data size)")
    finally:
        if container is not None:
            container.remove(force=True)
        client.api.remove_volume(volume, force=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
