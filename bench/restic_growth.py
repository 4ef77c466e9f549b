#!/usr/bin/env python3
"""BACKUP_FORMAT=restic against archives (issue 21): N runs of the sidecar's real CLI on a
volume whose files change by a share between runs, then the repository's size against one
compressed archive of the final volume (`tar -cf - . | zstd -3 -T0`, the archive format's
size per run), and each incremental run's seconds against the first's. One run, one
machine: ratios, not absolute seconds.

    .venv/bin/python bench/restic_growth.py [--size-mb 256] [--runs 30] [--change 0.01] [--json out.json]

The data: half random (incompressible), half text, in files of 1 MiB, written through the
Docker volume's folder on the host (root needed); every run rewrites `--change` of the
files with new content. Rotation is a dry run so every snapshot stays. Needs a Docker
engine, the busybox test image and the sidecar image (./scripts/test builds both; the
image tag is SIDECAR_TEST_IMAGE), restic, tar and zstd. Everything it creates is removed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import docker

REPO = Path(__file__).resolve().parents[1]
BUSYBOX = "backup-sidecar-test/busybox:latest"
MIB = 1 << 20


def _fill(folder: Path, count: int, rng: random.Random, names: list[str] | None = None) -> None:
    words = [f"word{n}" for n in range(2000)]
    for i, name in enumerate(names or [f"f{n:05d}.bin" for n in range(count)]):
        n = int(name[1:6])
        if n % 2 == 0:
            data = rng.randbytes(MIB)
        else:
            data = (" ".join(rng.choice(words) for _ in range(200_000)).encode())[:MIB]
        (folder / name).write_bytes(data)


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--change", type=float, default=0.01)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    image = os.environ.get("SIDECAR_TEST_IMAGE", "backup-sidecar:test")
    client = docker.from_env()
    run_id = uuid.uuid4().hex[:8]
    project = f"benchrestic{run_id}"
    rng = random.Random(21)
    with tempfile.TemporaryDirectory(prefix="bench-restic-") as scratch:
        scratch = Path(scratch)
        backups = scratch / "backups"
        backups.mkdir()
        secret = scratch / "pw"
        secret.write_text("bench-password\n")
        volume = client.volumes.create(f"{project}_data", labels={"com.docker.compose.project": project,
                                                                  "com.docker.compose.volume": "data"})
        container = None
        try:
            folder = Path(volume.attrs["Mountpoint"])
            files = args.size_mb
            _fill(folder, files, rng)
            container = client.containers.create(
                BUSYBOX, ["sh", "-c", "sleep 100000"], name=f"{project}-app", network_mode="none",
                labels={"backup.enable": "true", "backup.strategy": "stop", "com.docker.compose.project": project,
                        "com.docker.compose.service": "app"},
                volumes={volume.name: {"bind": "/data", "mode": "rw"}})
            container.start()
            env = {**os.environ, "BACKUP_DIR": str(backups), "BACKUP_PROJECT": project, "TZ": "UTC",
                   "BACKUP_FORMAT": "restic", "RESTIC_PASSWORD_FILE": str(secret), "BACKUP_WORKER_IMAGE": image,
                   "BACKUP_PRUNE_DRY_RUN": "true", "LOG_FORMAT": "json", "LOG_LEVEL": "INFO", "METRICS_PORT": "0"}
            runs = []
            for n in range(args.runs):
                if n:
                    changed = rng.sample(sorted(p.name for p in folder.iterdir()), max(1, int(files * args.change)))
                    _fill(folder, 0, rng, changed)
                started = time.monotonic()
                done = subprocess.run([sys.executable, "-m", "sidecar", "backup", "app"], cwd=REPO, env=env,
                                      capture_output=True, text=True)
                seconds = time.monotonic() - started
                if done.returncode != 0:
                    print(done.stderr[-3000:], file=sys.stderr)
                    return 1
                record = next(json.loads(line) for line in done.stderr.splitlines()
                              if "volume read by restic" in line)
                finished = next(json.loads(line) for line in done.stderr.splitlines() if '"backup finished"' in line)
                runs.append({"seconds": round(seconds, 2), "downtime": finished.get("downtime_seconds"),
                             "added_bytes": record["added_bytes"],
                             "read_bytes": record["bytes"]})
                print(f"run {n + 1}: {seconds:.1f} s, added {record['added_bytes'] / MIB:.1f} MiB", flush=True)
            repository = _du(backups / "restic")
            started = time.monotonic()
            archive = int(subprocess.run(f"tar -C {folder} -cf - . | zstd -3 -T0 -q | wc -c", shell=True,
                                         check=True, capture_output=True, text=True).stdout)
            tar_seconds = time.monotonic() - started
        finally:
            if container is not None:
                container.remove(force=True)
            volume.remove(force=True)
    incremental = sorted(r["seconds"] for r in runs[1:])
    result = {
        "conditions": {"size_mb": args.size_mb, "runs": args.runs, "change": args.change,
                       "machine": "shared, loaded (other test suites running); 2 cores"},
        "repository_bytes": repository, "one_archive_bytes": archive,
        "repository_vs_one_archive": round(repository / archive, 3),
        "archive_format_vs_one_archive": args.runs,  # every run writes a full archive
        "first_run_seconds": runs[0]["seconds"],
        "median_incremental_seconds": incremental[len(incremental) // 2] if incremental else None,
        "incremental_vs_first": round(incremental[len(incremental) // 2] / runs[0]["seconds"], 3) if incremental
        else None,
        "tar_zstd_seconds": round(tar_seconds, 2),
        "median_incremental_stop_window_seconds": sorted(r["downtime"] or 0 for r in runs[1:])[len(runs[1:]) // 2]
        if runs[1:] else None,
        "median_added_bytes": sorted(r["added_bytes"] for r in runs[1:])[len(runs[1:]) // 2] if runs[1:] else None,
        "changed_bytes_per_run": max(1, int(files * args.change)) * MIB,
        "runs": runs,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
