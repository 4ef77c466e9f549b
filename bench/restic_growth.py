#!/usr/bin/env python3
"""BACKUP_FORMAT=restic (issue 21), every figure a ratio to a baseline taken in the same run
on the same data:

  growth        N runs of the sidecar's real CLI (`backup app`, a `stop` target) on a volume
                whose files change by --change between runs; the repository's size / one
                `tar -cf - . | zstd -3 -T0` of the final volume (the archive format's size
                per run: N of them)
  s3            with --s3: bytes the destination's repository (SeaweedFS) grew by per
                incremental run (restic copy) / the bytes changed
  incremental   an incremental run's seconds (the sidecar's "backup finished") / the first's
  stop-window   an incremental run's downtime / `tar -cf - . | zstd -3 -T0` (warm), with its
                breakdown: the stop call, go to snapshot saved, restart; the held worker's
                start before the stop (not in the window); and restic's own phases timed from
                `restic -v backup` run by hand in a container like the worker (open and key
                derivation, lock, parent, index, scan, changed data and save, unlock)
  restore       `restore app --volume data --force` / `restic restore` by hand into a folder
  one-file      `restore ... --path` of one file / the whole restore (seconds), and the same
                by hand (`restic restore --include`: restic reads only the packs of that file)
  rss           the sidecar process's own peak RSS (VmHWM) in `backup` with restic / with the
                archive format (same volume); restic's own, a child's, is in the JSON (max_rss)

    .venv/bin/python bench/restic_growth.py [--size-mb 1024] [--runs 30] [--change 0.01] [--s3] [--json out.json]

`--only restore` (with `--runs 1`: one backup to restore) measures the restore alone, `--restores N` times (the
medians of the sidecar's restore and of restic's by hand, each pair back to back): a quick before/after of a change
to the restore.

The data: half random (incompressible), half text-like (16 symbols), in files of 1 MiB, written through the
Docker volume's folder on the host (root needed); every run rewrites --change of the files.
Rotation is a dry run so every snapshot stays. The app idles until SIGTERM and exits at
once (bench/lab.py IDLE): a `stop` costs the engine's stop, not the stop timeout. No ratio
is printed when more than results.MAX_BUSY_AT_START of the cores were busy in the seconds
before the start (the JSON keeps the figures, with that share). The page cache is warm
(the data was just written; every measure reads it more than once).

Needs: a Docker engine, the busybox test image and the sidecar image (./scripts/test builds
both; SIDECAR_TEST_IMAGE names it), restic, tar, zstd, and for --s3 SeaweedFS's `weed`.
Everything it creates is labelled with the run's id and removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import docker
import proc

sys.path.insert(1, str(proc.REPO))
import results
from lab import Lab

MIB = 1 << 20
PASSWORD = "bench-password"
# `restic -v backup` with each line's seconds since the start (in a container like the worker).
TIMED = ("import subprocess, sys, time\n"
         "t0 = time.monotonic()\n"
         "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)\n"
         "for line in p.stdout:\n"
         "    print(f'{time.monotonic() - t0:.3f} {line.rstrip()}', flush=True)\n"
         "print(f'{time.monotonic() - t0:.3f} exit {p.wait()}', flush=True)\n")
# restic 0.14's -v lines, in order: where each phase of a backup ends.
PHASES = (("start-up", "open repository"), ("open and key derivation", "lock repository"),
          ("lock, parent", "load index files"), ("index load", "start scan on"),
          ("scan start", "start backup on"), ("changed data and save", "snapshot "), ("unlock and exit", "exit "))


# Random bytes mapped onto 16 letters and spaces: text-like (about 2.5x with zstd -3), unique
# per file, and made at C speed (a word list through random.choice took minutes per GB).
TEXT = bytes.maketrans(bytes(range(256)), bytes(b"etaoin shrdlucmw"[b % 16] for b in range(256)))


def fill(folder: Path, names: list[str], rng: random.Random) -> None:
    for name in names:
        data = rng.randbytes(MIB)
        (folder / name).write_bytes(data if int(name[1:6]) % 2 == 0 else data.translate(TEXT))


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tar_zstd(folder: Path) -> tuple[float, int]:
    started = time.monotonic()
    size = int(subprocess.run(f"tar -C '{folder}' -cf - . | zstd -3 -T0 -q | wc -c", shell=True, check=True,
                              capture_output=True, text=True).stdout)
    return time.monotonic() - started, size


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


class Bench:
    def __init__(self, args: argparse.Namespace, lab: Lab):
        self.args, self.lab = args, lab
        self.image = os.environ.get("SIDECAR_TEST_IMAGE", "backup-sidecar:test")
        self.backups = lab.tmp / "backups"
        self.backups.mkdir()
        self.secret = lab.tmp / "pw"
        self.secret.write_text(PASSWORD + "\n")
        self.volume, self.folder = lab.volume("data")
        self.files = args.size_mb
        self.rng = random.Random(21)
        fill(self.folder, [f"f{n:05d}.bin" for n in range(self.files)], self.rng)
        self.container = lab.container("app", self.volume, {"backup.strategy": "stop"})
        self.s3 = None

    def env(self, backup_dir: Path | None = None, **extra: str) -> dict[str, str]:
        return proc.environment(backup_dir or self.backups, self.lab.project, BACKUP_FORMAT="restic",
                                RESTIC_PASSWORD_FILE=str(self.secret), BACKUP_WORKER_IMAGE=self.image,
                                BACKUP_PRUNE_DRY_RUN="true", **extra)

    def start_s3(self) -> dict[str, str]:
        from measures import S3_KEY, S3_REGION, S3_SECRET, SeaweedFS
        folder = self.lab.tmp / "s3"
        folder.mkdir()
        # An identity for the keys: restic signs uploads as streams (aws-chunked), which
        # SeaweedFS accepts only with S3 authentication set up.
        (folder / "s3.json").write_text(json.dumps({"identities": [{"name": "bench", "credentials": [
            {"accessKey": S3_KEY, "secretKey": S3_SECRET}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        self.s3 = SeaweedFS(self.lab, folder, (f"-s3.config={folder / 's3.json'}",))
        self.s3.start()
        self.bucket = f"bench-{self.lab.run_id}"
        self.s3.client().create_bucket(Bucket=self.bucket)
        return {"S3_BUCKET": self.bucket, "S3_ENDPOINT_URL": self.s3.endpoint, "S3_PATH_STYLE": "true",
                "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET, "S3_REGION": S3_REGION}

    def bucket_bytes(self) -> int:
        total = 0
        for page in self.s3.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            total += sum(obj["Size"] for obj in page.get("Contents", ()))
        return total

    def growth(self, extra: dict[str, str]) -> list[dict]:
        runs = []
        changed = max(1, int(self.files * self.args.change))
        for n in range(self.args.runs):
            if n:
                fill(self.folder, self.rng.sample(sorted(p.name for p in self.folder.iterdir()), changed), self.rng)
            run = proc.run(["backup", "app"], self.env(**extra))
            read = run.record("volume read by restic in a worker container")
            self.item = read["volume"]
            finished = run.record("backup finished")
            stopped = run.record("container stopped")
            row = {"seconds": finished["seconds"], "wall": round(run.wall, 2), "downtime": finished["downtime_seconds"],
                   "stop_call": stopped.get("seconds"), "added_bytes": read["added_bytes"], "read_bytes": read["bytes"],
                   "max_rss": run.max_rss, "self_max_rss": _own_rss(run),
                   **{k: v for k, v in read.items() if k.startswith("held_")}}
            if self.s3 is not None:
                row["s3_bytes"] = self.bucket_bytes()
            runs.append(row)
            print(f"run {n + 1}: {row['seconds']:.2f} s, window {row['downtime']:.3f} s, added "
                  f"{row['added_bytes'] / MIB:.1f} MiB", flush=True)
        return runs

    def restic_phases(self) -> dict[str, float]:
        """`restic -v backup` by hand in a container of the sidecar's image with the worker's
        mounts (the same paths, so the parent matches), its lines timed; the app stopped."""
        snapshots = json.loads(self.restic("snapshots", "--json"))
        parent = snapshots[-1]["id"]
        self.container.stop(timeout=10)
        try:
            out = self.lab.client.containers.run(
                self.image, ["python", "-c", TIMED, "restic", "-r", "/bench/backups/restic", "--no-cache",
                             "--password-file", "/bench/pw", "-v", "backup", "/volume", "--host", "bench",
                             "--parent", parent],
                entrypoint=[], user="0", remove=True, network_mode="none", labels={"backup-sidecar-bench": self.lab.run_id},
                volumes={self.volume: {"bind": "/volume", "mode": "ro"},
                         str(self.lab.tmp): {"bind": "/bench", "mode": "rw"}}).decode()
        finally:
            self.container.start()
        marks: dict[str, float] = {}
        for line in out.splitlines():
            at, _, text = line.partition(" ")
            for _phase, start in PHASES:
                if text.startswith(start) and start not in marks:
                    marks[start] = float(at)
        phases, before = {}, 0.0
        for phase, end in PHASES:
            if end in marks:
                phases[phase] = round(marks[end] - before, 3)
                before = marks[end]
        return phases

    def restic(self, *args: str) -> str:
        return subprocess.run(["restic", "-r", str(self.backups / "restic"), "--no-cache", *args], check=True,
                              capture_output=True, text=True, env={**os.environ, "RESTIC_PASSWORD": PASSWORD}).stdout

    def restores(self) -> dict:
        into = self.lab.tmp / "by-hand"
        hands, wholes = [], []
        for _ in range(self.args.restores):
            started = time.monotonic()
            self.restic("restore", "latest", "--target", str(into))
            hands.append(time.monotonic() - started)
            shutil.rmtree(into)
            began = time.time()
            whole = proc.run(["restore", "app", "--volume", self.item, "--force"], self.env())
            wholes.append((whole.wall, restore_breakdown(whole, began)))
        by_hand = median(hands)
        wall, breakdown = sorted(wholes, key=lambda w: w[0])[len(wholes) // 2]
        started = time.monotonic()  # one file: restic reads only the packs that hold its blobs
        self.restic("restore", "latest", "--target", str(into), "--include", "/volume/f00001.bin")
        one_by_hand = time.monotonic() - started
        shutil.rmtree(into)
        one = proc.run(["restore", "app", "--volume", self.item, "--force", "--path", "f00001.bin"], self.env())
        return {"restic_restore_by_hand_seconds": round(by_hand, 2), "restore_seconds": round(wall, 2),
                "restore_breakdown_seconds": breakdown, "restores": self.args.restores,
                "restore_vs_by_hand": ratio(wall, by_hand), "one_file_seconds": round(one.wall, 2),
                "one_file_vs_whole": ratio(one.wall, wall), "one_file_by_hand_seconds": round(one_by_hand, 2),
                "one_file_by_hand_vs_whole_by_hand": ratio(one_by_hand, by_hand)}

    def archive_rss(self, extra: dict[str, str]) -> int:
        """The archive format with the same settings (the S3 destination too: its client is
        part of the sidecar's memory either way)."""
        backups = self.lab.tmp / "archive-backups"
        backups.mkdir()
        env = proc.environment(backups, self.lab.project, BACKUP_WORKER_IMAGE=self.image,
                               **({**extra, "S3_PREFIX": "archives"} if extra else {}))
        run = proc.run(["backup", "app"], env)
        return _own_rss(run)


def restore_breakdown(run: proc.Run, began: float) -> dict[str, float]:
    """Where a whole-volume restore's seconds go, from its log lines' times (ms): the CLI's
    start, the snapshot's choice beside the staged worker's start, up to the stop; the stop;
    the go to restic's end in the worker (the emptying beside the restore), with restic's own
    seconds and the wait for the removal after it as the worker says them; the restart and
    the exit (the rest of the wall time)."""
    def at(message: str) -> float:
        when = datetime.strptime(run.record(message)["time"], "%Y-%m-%d %H:%M:%S,%f")
        return when.replace(tzinfo=timezone.utc).timestamp() - began  # the sidecar logs in TZ=UTC

    stop_sent, stopped = at("stop sent"), at("container stopped")
    done = run.record("restic restore done in the worker container")
    restored = done["seconds"]
    inside = {k: done[k] for k in ("restic_seconds", "removal_wait_seconds") if k in done}  # the worker's says
    return {"start_and_choice": round(stop_sent, 2), "stop": round(stopped - stop_sent, 2),
            "go_to_restored": round(restored, 2), **inside,
            "restart_and_exit": round(run.wall - stopped - restored, 2)}


def _own_rss(run: proc.Run) -> int:
    """The sidecar process's own peak RSS (bench/runner.py says it): restic's are its children's."""
    return next(r["bench_self_max_rss"] for r in run.records if "bench_self_max_rss" in r)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--change", type=float, default=0.01)
    parser.add_argument("--s3", action="store_true", help="copy to a SeaweedFS destination on every run")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", choices=("restore",), help="measure the restore alone (after --runs backups)")
    parser.add_argument("--restores", type=int, default=1, help="whole restores (and by hand) to take the median of")
    args = parser.parse_args()
    quiet = results.quiet_before_start()
    print(quiet.text(), flush=True)
    lab = Lab(docker.from_env())
    try:
        bench = Bench(args, lab)
        extra = bench.start_s3() if args.s3 else {}
        runs = bench.growth(extra)
        restore = bench.restores() if args.only == "restore" else None
        if restore is None:
            repository = du(bench.backups / "restic")
            tars = [tar_zstd(bench.folder) for _ in range(3)]
            tar_seconds, archive = median([t for t, _ in tars]), tars[0][1]
            phases = bench.restic_phases()
            restore = bench.restores()
            archive_rss = bench.archive_rss(extra)
    finally:
        lab.cleanup()
    if args.only == "restore":
        print(json.dumps({"conditions": {"size_mb": args.size_mb, "cores": os.cpu_count(), **quiet.as_json(),
                                         "load_per_core_at_end": round(results.load_per_core(), 2)}, **restore},
                         indent=2))
        return 0
    incremental = runs[1:]
    changed = max(1, int(args.size_mb * args.change)) * MIB
    s3_growth = [b["s3_bytes"] - a["s3_bytes"] for a, b in zip(runs, runs[1:])] if args.s3 else []
    window = median([r["downtime"] for r in incremental]) if incremental else None
    figures = {
        "repository_vs_one_archive": ratio(repository, archive),
        "s3_uploaded_vs_changed": ratio(median(s3_growth), changed) if s3_growth else None,
        "incremental_vs_first": ratio(median([r["seconds"] for r in incremental]), runs[0]["seconds"])
        if incremental else None,
        "stop_window_vs_tar_zstd": ratio(window, tar_seconds),
        "restore_vs_restic_restore": restore["restore_vs_by_hand"],
        "one_file_vs_whole_restore": restore["one_file_vs_whole"],
        "one_file_vs_whole_by_hand": restore["one_file_by_hand_vs_whole_by_hand"],
        "rss_restic_vs_archive": ratio(median([r["self_max_rss"] for r in runs]), archive_rss),
    }
    targets = {"repository_vs_one_archive": 1.5, "s3_uploaded_vs_changed": 2.0, "incremental_vs_first": 0.2,
               "stop_window_vs_tar_zstd": 0.10, "restore_vs_restic_restore": 1.5, "rss_restic_vs_archive": 1.1}
    breakdown = {k: median([r[k] for r in incremental if r.get(k) is not None] or [0.0]) for k in
                 ("stop_call", "held_ready_seconds", "held_go_to_saved_seconds", "held_saved_to_end_seconds")}
    breakdown["restart_and_rest"] = round((window or 0) - breakdown["stop_call"] - breakdown["held_go_to_saved_seconds"], 3)
    result = {
        "conditions": {"size_mb": args.size_mb, "runs": args.runs, "change": args.change, "cores": os.cpu_count(),
                       **quiet.as_json(), "load_per_core_at_end": round(results.load_per_core(), 2),
                       "page_cache": "warm"},
        "repository_bytes": repository, "one_archive_bytes": archive, "tar_zstd_seconds": round(tar_seconds, 2),
        "first_run_seconds": runs[0]["seconds"], "median_window_seconds": window,
        "window_breakdown_seconds": breakdown, "restic_phases_by_hand_seconds": phases,
        "changed_bytes_per_run": changed, "median_s3_bytes_per_run": median(s3_growth) if s3_growth else None,
        "archive_rss_bytes": archive_rss, **restore, "figures": figures, "runs": runs,
    }
    print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "figures")}, indent=2))
    for name, value in figures.items():
        target = targets.get(name)
        verdict = "-" if not quiet.ok or value is None or target is None else ("yes" if value <= target else "NO")
        print(f"{name:28} {value if quiet.ok else '-'!s:>8}  target <= {target}  met: {verdict}")
    if not quiet.ok:
        print("no ratios: other work was running when the bench started (figures in the JSON, not comparable)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
