"""Prometheus metrics: one registry (replaceable in tests), every series the alerts and
the dashboard use, and the HTTP endpoint serving /metrics and /healthz.

Series exist from discovery on: a target that never succeeded shows a last-success of 0,
so "never backed up" alerts work. Last success and attempt survive a restart: they are
kept in `.sidecar/metrics.json` on the backup volume, with the archives' own times as a
fallback, so a restart neither hides a stale backup nor raises a false alarm.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from . import __version__
from .model import CopyState
from .fsutil import write_json_atomic

logger = logging.getLogger(__name__)

RESULTS = ("success", "failure", "skipped")
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400)


@dataclass(frozen=True)
class TargetView:
    """What the metrics need to know of a discovered target."""

    name: str
    volumes: tuple[str, ...]
    next_run: float  # epoch seconds
    expected_interval: float  # seconds


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, state_path: Path | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        self.state_path = state_path
        self._lock = threading.Lock()
        self._known: dict[str, tuple[str, ...]] = {}  # target -> volumes with series
        r = self.registry
        self.last_success = Gauge("backup_sidecar_last_success_timestamp_seconds",
                                  "When the last successful backup of the volume finished (0: never).",
                                  ["target", "volume"], registry=r)
        self.last_attempt = Gauge("backup_sidecar_last_attempt_timestamp_seconds",
                                  "When the last backup attempt of the volume finished (0: never).",
                                  ["target", "volume"], registry=r)
        self.last_status = Gauge("backup_sidecar_last_status",
                                 "1 when the last backup of the volume succeeded, 0 when it failed.",
                                 ["target", "volume"], registry=r)
        self.runs = Counter("backup_sidecar_runs", "Backup runs by result.", ["target", "result"], registry=r)
        self.duration = Histogram("backup_sidecar_duration_seconds", "How long backups of the target took.",
                                  ["target"], buckets=DURATION_BUCKETS, registry=r)
        self.downtime = Gauge("backup_sidecar_downtime_seconds",
                              "How long the target was stopped or paused by its last backup (0 for hot).",
                              ["target"], registry=r)
        self.archive_size = Gauge("backup_sidecar_archive_size_bytes", "Size of the volume's last archive.",
                                  ["target", "volume"], registry=r)
        self.next_run = Gauge("backup_sidecar_next_run_timestamp_seconds", "When the target is backed up next.",
                              ["target"], registry=r)
        self.expected_interval = Gauge("backup_sidecar_expected_interval_seconds",
                                       "Longest planned gap between two backups of the target (from its schedule).",
                                       ["target"], registry=r)
        self.targets = Gauge("backup_sidecar_targets", "Containers discovered as backup targets.", registry=r)
        self.config_errors = Gauge("backup_sidecar_target_config_errors",
                                   "Labelled containers skipped because of bad labels.", registry=r)
        self.up = Gauge("backup_sidecar_up", "1 while the sidecar's scheduler runs.", registry=r)
        self.build_info = Gauge("backup_sidecar_build_info", "Version of the sidecar (value 1).", ["version"],
                                registry=r)
        self.offsite_last_success = Gauge(
            "backup_sidecar_offsite_last_success_timestamp_seconds",
            "When the newest backup of the volume with a verified off-site copy was made (0: none).",
            ["target", "volume", "destination"], registry=r)
        self.copies = Gauge("backup_sidecar_copies",
                            "Places holding the latest backup of every volume of the target (local, S3).",
                            ["target"], registry=r)
        self.build_info.labels(__version__).set(1)

    # --- discovery ------------------------------------------------------------------
    def discovered(self, targets: Iterable[TargetView], config_errors: int) -> None:
        """Create every series of the current targets (0 until known), drop those of
        targets that are gone."""
        targets = list(targets)
        with self._lock:
            saved = self._load()
            current = {t.name: t.volumes for t in targets}
            for name, volumes in list(self._known.items()):
                for volume in volumes:
                    if name not in current or volume not in current[name]:
                        for gauge in (self.last_success, self.last_attempt, self.last_status, self.archive_size):
                            _remove(gauge, name, volume)
                        _remove(self.offsite_last_success, name, volume, "s3")
                if name not in current:
                    for gauge in (self.downtime, self.next_run, self.expected_interval, self.copies, self.duration):
                        _remove(gauge, name)
                    for result in RESULTS:
                        _remove(self.runs, name, result)
            for target in targets:
                for result in RESULTS:
                    self.runs.labels(target.name, result)
                self.duration.labels(target.name)
                self.downtime.labels(target.name)
                self.copies.labels(target.name)
                self.next_run.labels(target.name).set(target.next_run)
                self.expected_interval.labels(target.name).set(target.expected_interval)
                for volume in target.volumes:
                    state = saved.get(f"{target.name}/{volume}", {})
                    if (target.name, volume) not in self._pairs():
                        self.last_success.labels(target.name, volume).set(state.get("success", 0))
                        self.last_attempt.labels(target.name, volume).set(state.get("attempt", 0))
                        if "status" in state:
                            self.last_status.labels(target.name, volume).set(state["status"])
                        if "size" in state:
                            self.archive_size.labels(target.name, volume).set(state["size"])
            self._known = dict(current)
            self.targets.set(len(targets))
            self.config_errors.set(config_errors)

    def scheduled(self, target: str, next_run: float) -> None:
        self.next_run.labels(target).set(next_run)

    def _pairs(self) -> set[tuple[str, str]]:
        return {(t, v) for t, vols in self._known.items() for v in vols}

    # --- outcomes -----------------------------------------------------------------------
    def observe(self, outcome) -> None:
        """Record a backup outcome (BackupOutcome)."""
        now = time.time()
        self.runs.labels(outcome.target, outcome.result).inc()
        if outcome.result == "skipped":
            return
        self.duration.labels(outcome.target).observe(outcome.seconds)
        self.downtime.labels(outcome.target).set(outcome.downtime)
        sizes = {_volume_of(a.path.name): a.size for a in outcome.archives}
        with self._lock:
            saved = self._load()
            for volume in outcome.volumes:
                key = f"{outcome.target}/{volume}"
                entry = saved.setdefault(key, {})
                self.last_attempt.labels(outcome.target, volume).set(now)
                entry["attempt"] = now
                self.last_status.labels(outcome.target, volume).set(1 if outcome.ok else 0)
                entry["status"] = 1 if outcome.ok else 0
                # An archive written before a later step (post-command) failed is still a
                # good backup of the volume.
                if volume in sizes:
                    self.last_success.labels(outcome.target, volume).set(now)
                    self.archive_size.labels(outcome.target, volume).set(sizes[volume])
                    entry["success"], entry["size"] = now, sizes[volume]
            self._save(saved)

    def copy_state(self, states: dict[tuple[str, str], CopyState]) -> None:
        """Off-site timestamps (one series per destination) and copy counts, from the
        backup volume and the copy indexes."""
        per_target: dict[str, int] = {}
        for (target, volume), state in states.items():
            for destination, stamp in state.offsite.items():
                self.offsite_last_success.labels(target, volume, destination).set(stamp or 0)
            per_target[target] = min(per_target.get(target, 99), state.copies)
        for target, copies in per_target.items():
            self.copies.labels(target).set(copies)

    def recover(self, newest_archive_times: dict[tuple[str, str], float]) -> None:
        """After a restart without a metrics state file: last success from the archives'
        own times (so a restart never reports "never backed up" for a backed-up target)."""
        with self._lock:
            saved = self._load()
            changed = False
            for (target, volume), stamp in newest_archive_times.items():
                entry = saved.setdefault(f"{target}/{volume}", {})
                if entry.get("success", 0) < stamp:
                    entry["success"] = stamp
                    entry.setdefault("attempt", stamp)
                    entry.setdefault("status", 1)
                    changed = True
            if changed:
                self._save(saved)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # --- state on the backup volume --------------------------------------------------
    def _load(self) -> dict:
        if self.state_path is None:
            return getattr(self, "_memory", {})
        try:
            return json.loads(self.state_path.read_text()).get("volumes", {})
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError) as exc:
            logger.error("metrics state unreadable; starting from the archives",
                         extra={"path": str(self.state_path), "error": str(exc)})
            return {}

    def _save(self, data: dict) -> None:
        if self.state_path is None:
            self._memory = data
            return
        write_json_atomic(self.state_path, {"volumes": data})


def _remove(metric, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass


def _volume_of(filename: str) -> str:
    from .naming import parse_name

    name = parse_name(filename)
    return name.type_name if name is not None else ""


# --- the endpoint ---------------------------------------------------------------------------

class MetricsServer:
    """Serves /metrics and /healthz (200 while `healthy()` is true, else 503)."""

    def __init__(self, metrics: Metrics, address: str, port: int, healthy: Callable[[], tuple[bool, str]]):
        metrics_ref, healthy_ref = metrics, healthy

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, metrics_ref.render(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok, reason = healthy_ref()
                    self._send(200 if ok else 503, (reason + "\n").encode(), "text/plain; charset=utf-8")
                else:
                    self._send(404, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # scrapes every 15 s would flood the log
                pass

        self.httpd = ThreadingHTTPServer((address, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)

    def start(self) -> "MetricsServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
