"""Running the sidecar's real CLI (through runner.py) as a child process: its environment,
its JSON log lines, its wall time and peak RSS (wait4), and a follower for a long-running
daemon's log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).resolve().with_name("runner.py")
# The CLI's compiled modules, outside the checkout: the image installs the sidecar compiled
# (pip writes the .pyc files), so a bench run must not compile every module on every start
# (PYTHONDONTWRITEBYTECODE=1 in the caller's environment did that: about 0.3 s per CLI run).
PYCACHE = Path(tempfile.gettempdir()) / f"backup-sidecar-bench-pycache-{os.getuid()}"


@dataclass(frozen=True)
class Run:
    """One finished CLI run."""

    argv: tuple[str, ...]
    code: int
    wall: float  # seconds, process start to exit
    max_rss: int  # bytes: the process's peak resident set (and any child it waited for)
    records: tuple[dict, ...]  # the JSON log lines
    stdout: str
    stderr: str = field(repr=False)

    def record(self, message: str, **match) -> dict:
        """The last log record with this message (and these fields); an error if none."""
        for rec in reversed(self.records):
            if rec.get("message") == message and all(rec.get(k) == v for k, v in match.items()):
                return rec
        raise BenchError(f"`{' '.join(self.argv)}` logged no {message!r}{f' with {match}' if match else ''}:\n"
                         f"{self.stderr[-2000:]}")

    def readers_used(self) -> set[str]:
        return {r["bench_reader"] for r in self.records if "bench_reader" in r}


class BenchError(RuntimeError):
    pass


def environment(backup_dir: Path, project: str, **extra: str) -> dict[str, str]:
    """The sidecar's settings for a bench run: this checkout's code (compiled once, as in the
    image: PYCACHE), JSON logs, UTC."""
    path = os.environ.get("PYTHONPATH")
    inherited = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {
        "PYTHONPYCACHEPREFIX": str(PYCACHE), **inherited, "PYTHONPATH": f"{REPO}{os.pathsep + path if path else ''}",
        "BACKUP_DIR": str(backup_dir), "BACKUP_PROJECT": project, "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO", "TZ": "UTC", "METRICS_PORT": "0", **extra,
    }


def command(args: list[str], reader: str | None = None) -> list[str]:
    return [sys.executable, str(RUNNER), *(["--reader", reader] if reader else []), *args]


def run(args: list[str], env: dict[str, str], reader: str | None = None, check: bool = True,
        logs: Path | None = None) -> Run:
    """Run the CLI to its end; its output goes through files (not pipes) so that wait4
    can reap it and report its peak RSS."""
    argv = command(args, reader)
    logs = logs or Path(env["BACKUP_DIR"]).parent
    out_path, err_path = logs / "cli.out", logs / "cli.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C: the child got SIGINT too; let it put its containers back
            proc.wait()
            raise
        wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = out_path.read_text(errors="replace"), err_path.read_text(errors="replace")
    if os.environ.get("BENCH_KEEP_LOGS"):  # every run's log, one after the other (for phase breakdowns)
        with open(os.environ["BENCH_KEEP_LOGS"], "a") as kept:
            kept.write(f"# {' '.join(args)}\n{stderr}")
    # ru_maxrss is in KiB on Linux
    result = Run(tuple(args), proc.returncode, wall, usage.ru_maxrss * 1024, tuple(parse_log(stderr)), stdout, stderr)
    if check and proc.returncode != 0:
        raise BenchError(f"`{' '.join(args)}` exited {proc.returncode}:\n{stderr[-3000:]}\n{stdout[-1000:]}")
    return result


def parse_log(text: str) -> list[dict]:
    records = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
    return records


class LogFollower:
    """Reads a growing log file's JSON records as they arrive."""

    def __init__(self, path: Path):
        self.path = path
        self._offset = 0
        self._partial = ""
        self.records: list[dict] = []

    def poll(self) -> list[dict]:
        with open(self.path, encoding="utf-8", errors="replace") as f:
            f.seek(self._offset)
            text = f.read()
            self._offset = f.tell()
        text, self._partial = self._partial + text, ""
        if text and not text.endswith("\n"):
            text, _, self._partial = text.rpartition("\n")
        new = parse_log(text)
        self.records.extend(new)
        return new

    def wait_for(self, predicate, timeout: float, interval: float = 0.02, proc: subprocess.Popen | None = None,
                 start: int = 0):
        """The first record from the `start`th on for which `predicate` holds; polled until `timeout`."""
        deadline = time.monotonic() + timeout
        seen = start
        while True:
            self.poll()
            for rec in self.records[seen:]:
                if predicate(rec):
                    return rec
            seen = len(self.records)
            if proc is not None and proc.poll() is not None:
                raise BenchError(f"the daemon exited with {proc.returncode}; log {self.path}")
            if time.monotonic() > deadline:
                raise BenchError(f"waited {timeout:g} s in vain; log {self.path}")
            time.sleep(interval)
