"""Prometheus metrics: a collector that builds every series the alerts and the dashboard
use from current state at scrape time, the outcome record it reads, and the HTTP endpoint
serving /metrics (prometheus_client's own handler: gzip, content negotiation) and /healthz.

State read on every scrape:
  - the outcome record `.sidecar/metrics.json` on the backup volume (last success,
    attempt, status and archive size per volume; runs by result, duration observations
    and downtime per target), written by `record_outcome` from ANY process: a backup the
    CLI runs beside the daemon shows on the daemon's next scrape;
  - what the daemon holds: the discovered targets, next runs, copy states, `up`;
  - each staging mirror's size as its last pass measured it (`.sidecar/mirror/...`).
A target that is gone is simply not yielded: no series to remove by hand. Series exist
from discovery on (a target that never succeeded shows a last success of 0, so "never
backed up" alerts work); after a restart without a record, the archives' own times stand
in for the last success (`recover`).

Fleets: every series carries the `node` label (this node's name) when the collector is
given one, added to every family in one place; and a sidecar on a Swarm manager exports
`backup_sidecar_swarm_node_ready` for each node of the swarm, read from the engine at
scrape time through `FleetView` (cached, and never holding a scrape longer than its timeout).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from sidecar import __version__
from sidecar.core.model import CopyState, SwarmNode
from sidecar.core.naming import parse_name
from sidecar.readers.mirror import kept_mirrors, mirror_bytes, mirror_folder
from sidecar.store.state import JsonState

logger = logging.getLogger(__name__)

STATE_FILE = "metrics.json"  # in the backup volume's state folder
RESTIC_STATE_FILE = "restic.json"  # the restic format's figures (actions/formats/restic.py writes it)
RESULTS = ("success", "failure", "skipped", "aborted")
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400)


@dataclass(frozen=True)
class TargetView:
    """What the metrics need to know of a discovered target."""

    name: str
    volumes: tuple[str, ...]
    next_run: float  # epoch seconds
    expected_interval: float  # seconds
    # Its labels allow a consistency risk (consistency.may_be_at_risk): when they no longer
    # do (a preset, pause, backup.hot-ok=true), the last run's risk is shown no longer.
    risk_possible: bool = True
    pings: tuple[str, ...] = ()  # kinds of its ping URLs: their failure counters exist from discovery on


# --- the outcome record -------------------------------------------------------------------

class OutcomeRecord:
    """`.sidecar/metrics.json`: {"volumes": {"TARGET/VOLUME": {success, attempt, status,
    size}}, "targets": {TARGET: {runs: {RESULT: n}, duration: {buckets: {LE: n}, sum, count},
    downtime, risk: {app, preset} (only while its last run was at risk)}}}. In memory when
    there is no path (tests)."""

    def __init__(self, path: Path | None):
        self._file = JsonState(path, "metrics state") if path is not None else None
        self._memory: dict[str, Any] = {}
        self._lock = threading.Lock()

    def read(self) -> dict[str, Any]:
        if self._file is None:
            with self._lock:
                return _copy(self._memory)
        return self._file.read()

    def record(self, outcome: Any, now: float | None = None) -> None:
        """Add one backup outcome (a BackupOutcome; its result a str or an Enum of them).
        A record that cannot be written is logged: metrics never fail a backup."""
        try:
            with self._changing() as doc:
                when = time.time() if now is None else now
                _add_outcome(doc, outcome, when)
                stack = getattr(outcome, "stack", None)  # its project's stack archive: target {project}, volume stack
                if stack is not None:
                    _add_outcome(doc, stack.as_outcome(outcome.container, outcome.finished_at), when)
        except OSError as exc:
            logger.error("metrics state not saved", extra={"target": outcome.target, "error": str(exc)})

    def ping_failed(self, target: str, kind: str) -> None:
        """Count one heartbeat ping of `target` that failed; never raises for the file."""
        try:
            with self._changing() as doc:
                pings = _section(_section(_section(doc, "targets"), target), "ping_failures")
                pings[kind] = pings.get(kind, 0) + 1
        except OSError as exc:
            logger.error("metrics state not saved", extra={"target": target, "error": str(exc)})

    def recover(self, newest_archive_times: Mapping[tuple[str, str], float]) -> None:
        """Last success from the archives' own times where the record has none as recent
        (a restart without a record must never report "never backed up")."""
        with self._changing() as doc:
            volumes = _section(doc, "volumes")
            for (target, volume), stamp in newest_archive_times.items():
                entry = _section(volumes, f"{target}/{volume}")
                if entry.get("success", 0) < stamp:
                    entry["success"] = stamp
                    entry.setdefault("attempt", stamp)
                    entry.setdefault("status", 1)

    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict[str, Any]]:
        if self._file is not None:
            with self._file.update() as doc:
                yield doc
        else:
            with self._lock:
                yield self._memory


def record_outcome(state_dir: Path, outcome: Any) -> None:
    """Record a backup outcome where every sidecar process's metrics read it: the CLI's
    `backup` command calls this, the daemon does the same through `Metrics.observe`."""
    OutcomeRecord(state_dir / STATE_FILE).record(outcome)


def record_ping_failure(state_dir: Path, target: str, kind: str) -> None:
    """Count a heartbeat ping that failed (backup_sidecar_ping_failures_total), from any
    process, like `record_outcome`."""
    OutcomeRecord(state_dir / STATE_FILE).ping_failed(target, kind)


def _add_outcome(doc: dict[str, Any], outcome: Any, now: float) -> None:
    result = getattr(outcome.result, "value", outcome.result)
    per_target = _section(_section(doc, "targets"), outcome.target)
    runs = _section(per_target, "runs")
    runs[result] = runs.get(result, 0) + 1
    if result in ("skipped", "aborted"):  # no attempt at the data: last status and times stay
        return
    _observe_duration(_section(per_target, "duration"), float(outcome.seconds))
    per_target["downtime"] = float(outcome.downtime)
    risk = getattr(outcome, "risk", None)
    if risk is not None:
        per_target["risk"] = {"app": risk.seen, "preset": risk.preset or ""}
    else:
        per_target.pop("risk", None)
    sizes = {_volume_of(a.path.name): a.size for a in outcome.archives}
    snapshots = {s.item: s for s in getattr(outcome, "snapshots", ())}  # backup.format=restic
    volumes = _section(doc, "volumes")
    for volume in outcome.volumes:
        entry = _section(volumes, f"{outcome.target}/{volume}")
        entry["attempt"] = now
        entry["status"] = 1 if result == "success" else 0
        # An archive written before a later step (post-command) failed is still a good
        # backup of the volume.
        if volume in sizes:
            entry["success"], entry["size"] = now, sizes[volume]
        if volume in snapshots:
            snap = snapshots[volume]
            entry["success"], entry["raw_bytes"], entry["added_bytes"] = now, snap.raw_bytes, snap.added_bytes


def _observe_duration(duration: dict[str, Any], seconds: float) -> None:
    """Per-bucket (not cumulative) counts keyed by the bucket's upper bound, so a change
    of DURATION_BUCKETS never misplaces an observation already made."""
    bound = next((b for b in DURATION_BUCKETS if seconds <= b), None)
    key = floatToGoString(bound) if bound is not None else "+Inf"
    buckets = _section(duration, "buckets")
    buckets[key] = buckets.get(key, 0) + 1
    duration["sum"] = duration.get("sum", 0.0) + seconds
    duration["count"] = duration.get("count", 0) + 1


def _volume_of(filename: str) -> str:
    name = parse_name(filename)
    return name.kind if name is not None else ""


def _section(doc: dict[str, Any], key: str) -> dict[str, Any]:
    """doc[key] as a dict, replacing anything else found there (a hand-edited file)."""
    value = doc.get(key)
    if not isinstance(value, dict):
        value = doc[key] = {}
    return value


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _copy(v) if isinstance(v, dict) else v for k, v in data.items()}


# --- the collector ----------------------------------------------------------------------------

class Metrics(Collector):
    """The sidecar's metrics. The daemon tells it what it knows (`discovered`,
    `scheduled`, `copy_state`, `set_up`) and records outcomes (`observe`); every series is
    computed from that and the outcome record when scraped."""

    def __init__(self, registry: CollectorRegistry | None = None, state_path: Path | None = None,
                 node: str | None = None, fleet: "FleetView | None" = None):
        """`node`: the value of the `node` label on every series (None: no such label);
        `fleet`: the swarm's nodes, for a sidecar on a Swarm manager."""
        self.registry = registry if registry is not None else CollectorRegistry()
        self.node = node
        self.fleet = fleet
        self.outcomes = OutcomeRecord(state_path)
        self._mirrors = state_path.parent if state_path is not None else None  # the state folder
        self._lock = threading.Lock()
        self._targets: tuple[TargetView, ...] = ()
        self._config_errors = 0
        self._next_run: dict[str, float] = {}
        self._copies: dict[tuple[str, str], CopyState] = {}
        self._up = False
        self.registry.register(self)

    # --- what the daemon knows ---------------------------------------------------------
    def discovered(self, targets: Iterable[TargetView], config_errors: int) -> None:
        """The current targets: their series exist from now on (0 until known); those of
        targets that are gone are no longer yielded."""
        targets = tuple(targets)
        with self._lock:
            self._targets = targets
            self._config_errors = config_errors
            self._next_run = {t.name: t.next_run for t in targets}

    def scheduled(self, target: str, next_run: float) -> None:
        with self._lock:
            self._next_run[target] = next_run

    def copy_state(self, states: Mapping[tuple[str, str], CopyState]) -> None:
        """Off-site timestamps (one series per destination) and copy counts, from the
        backup volume and the copy indexes."""
        with self._lock:
            self._copies = dict(states)

    def set_up(self, up: bool) -> None:
        """Whether the scheduler runs (backup_sidecar_up)."""
        with self._lock:
            self._up = up

    def observe(self, outcome: Any) -> None:
        """Record a backup outcome (BackupOutcome) in the outcome record."""
        self.outcomes.record(outcome)

    def recover(self, newest_archive_times: Mapping[tuple[str, str], float]) -> None:
        self.outcomes.recover(newest_archive_times)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # --- prometheus_client's Collector --------------------------------------------------
    def describe(self) -> list[Metric]:
        return _families()  # names only: the registry checks them without a scrape

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            targets, errors, up = self._targets, self._config_errors, self._up
            next_run, copies = dict(self._next_run), dict(self._copies)
        saved = self._saved()
        f = {family.name: family for family in _families()}
        volumes, per_target = _mapping(saved.get("volumes")), _mapping(saved.get("targets"))
        for target in targets:
            _target_series(f, target, _mapping(per_target.get(target.name)), next_run.get(target.name, target.next_run))
            weakest = [copies[(target.name, v)].copies for v in target.volumes if (target.name, v) in copies]
            f["backup_sidecar_copies"].add_metric([target.name], min(weakest, default=0))
            for volume in target.volumes:
                _volume_series(f, target.name, volume, _mapping(volumes.get(f"{target.name}/{volume}")))
                if self._mirrors is not None and (size := mirror_bytes(mirror_folder(self._mirrors, target.name,
                                                                                     volume))) is not None:
                    f["backup_sidecar_mirror_bytes"].add_metric([target.name, volume], size)
                state = copies.get((target.name, volume))
                for destination, stamp in (state.offsite.items() if state is not None else ()):
                    f["backup_sidecar_offsite_last_success_timestamp_seconds"].add_metric(
                        [target.name, volume, destination], stamp or 0)
        if self._mirrors is not None:  # mirrors of targets gone (until removed): their bytes count too
            known = {(t.name, v) for t in targets for v in t.volumes}
            for target_name, volume, folder in kept_mirrors(self._mirrors):
                if (target_name, volume) not in known and (size := mirror_bytes(folder)) is not None:
                    f["backup_sidecar_mirror_bytes"].add_metric([target_name, volume], size)
        restic = self._restic()
        counts = _mapping(restic.get("snapshots"))
        for target in targets if counts else ():
            for volume in target.volumes:
                if f"{target.name}/{volume}" in counts:
                    f["backup_sidecar_restic_snapshots"].add_metric([target.name, volume],
                                                                     counts[f"{target.name}/{volume}"])
        if restic.get("repository_bytes") is not None:
            f["backup_sidecar_restic_repository_bytes"].add_metric([], restic["repository_bytes"])
        check = _mapping(restic.get("check"))
        if check:
            f["backup_sidecar_restic_check_ok"].add_metric([], 1 if check.get("ok") else 0)
            f["backup_sidecar_restic_check_timestamp_seconds"].add_metric([], check.get("finished", 0))
        f["backup_sidecar_targets"].add_metric([], len(targets))
        f["backup_sidecar_target_config_errors"].add_metric([], errors)
        f["backup_sidecar_up"].add_metric([], 1 if up else 0)
        f["backup_sidecar_build_info"].add_metric([__version__], 1)
        for hostname, ready in _readiness(self.fleet.nodes() if self.fleet is not None else None).items():
            f["backup_sidecar_swarm_node_ready"].add_metric([hostname], 1 if ready else 0)
        for family in f.values():
            yield _labelled(family, self.node)

    def _restic(self) -> dict[str, Any]:
        """The restic format's figures (.sidecar/restic.json, written after each restic run)."""
        if self._mirrors is None:
            return {}
        try:
            return JsonState(self._mirrors / RESTIC_STATE_FILE, "restic state").read()
        except OSError:
            return {}

    def _saved(self) -> dict[str, Any]:
        try:
            return self.outcomes.read()
        except OSError as exc:  # a scrape must still answer: series from discovery, at 0
            logger.error("metrics state unreadable", extra={"error": str(exc)})
            return {}


def _labelled(family: Metric, node: str | None) -> Metric:
    """`family` with the `node` label on every sample: one place for every family, so a
    family added later carries it too."""
    if node is not None:
        family.samples = [s._replace(labels={**s.labels, "node": node}) for s in family.samples]
    return family


def _readiness(nodes: Sequence[SwarmNode] | None) -> dict[str, bool]:
    """Per host name: ready and not drained (a drained node runs no tasks, so no sidecar,
    by design). A node that left and joined again is listed twice under one host name
    (the old entry stays "down"): one series, 1 when any entry is."""
    found: dict[str, bool] = {}
    for node in nodes or ():
        if node.hostname:
            found[node.hostname] = found.get(node.hostname, False) or node.runs_tasks
    return found


def _target_series(f: dict[str, Metric], target: TargetView, saved: Mapping[str, Any], next_run: float) -> None:
    runs = _mapping(saved.get("runs"))
    for result in RESULTS:
        f["backup_sidecar_runs"].add_metric([target.name, result], runs.get(result, 0))
    duration = _mapping(saved.get("duration"))
    stored = _mapping(duration.get("buckets"))
    buckets = [(floatToGoString(le), sum(n for bound, n in stored.items() if bound != "+Inf" and float(bound) <= le))
               for le in DURATION_BUCKETS]
    f["backup_sidecar_duration_seconds"].add_metric([target.name], buckets + [("+Inf", duration.get("count", 0))],
                                                    duration.get("sum", 0.0))
    f["backup_sidecar_downtime_seconds"].add_metric([target.name], saved.get("downtime", 0))
    f["backup_sidecar_next_run_timestamp_seconds"].add_metric([target.name], next_run)
    f["backup_sidecar_expected_interval_seconds"].add_metric([target.name], target.expected_interval)
    risk = _mapping(saved.get("risk")) if target.risk_possible else {}
    f["backup_sidecar_consistency_risk"].add_metric(
        [target.name, str(risk.get("app", "")), str(risk.get("preset", ""))], 1 if risk else 0)
    failures = _mapping(saved.get("ping_failures"))
    for kind in sorted(set(target.pings) | set(failures)):
        f["backup_sidecar_ping_failures"].add_metric([target.name, kind], failures.get(kind, 0))


def _volume_series(f: dict[str, Metric], target: str, volume: str, saved: Mapping[str, Any]) -> None:
    labels = [target, volume]
    f["backup_sidecar_last_success_timestamp_seconds"].add_metric(labels, saved.get("success", 0))
    f["backup_sidecar_last_attempt_timestamp_seconds"].add_metric(labels, saved.get("attempt", 0))
    if "status" in saved:
        f["backup_sidecar_last_status"].add_metric(labels, saved["status"])
    if "size" in saved:
        f["backup_sidecar_archive_size_bytes"].add_metric(labels, saved["size"])
    if "raw_bytes" in saved:
        f["backup_sidecar_restic_read_bytes"].add_metric(labels, saved["raw_bytes"])
        f["backup_sidecar_restic_added_bytes"].add_metric(labels, saved.get("added_bytes", 0))


def _families() -> list[Metric]:
    """Every family the sidecar exports, empty; names, help texts, types and labels are
    what the alerts, the dashboard and their tests rely on."""
    tv, t = ["target", "volume"], ["target"]
    return [
        GaugeMetricFamily("backup_sidecar_last_success_timestamp_seconds",
                          "When the last successful backup of the volume finished (0: never).", labels=tv),
        GaugeMetricFamily("backup_sidecar_last_attempt_timestamp_seconds",
                          "When the last backup attempt of the volume finished (0: never).", labels=tv),
        GaugeMetricFamily("backup_sidecar_last_status",
                          "1 when the last backup of the volume succeeded, 0 when it failed.", labels=tv),
        CounterMetricFamily("backup_sidecar_runs", "Backup runs by result.", labels=["target", "result"]),
        CounterMetricFamily("backup_sidecar_ping_failures", "Heartbeat pings of the target's runs that could not be "
                            "sent (no answer in BACKUP_PING_TIMEOUT, refused, an HTTP error), by kind.",
                            labels=["target", "kind"]),
        HistogramMetricFamily("backup_sidecar_duration_seconds", "How long backups of the target took.", labels=t),
        GaugeMetricFamily("backup_sidecar_downtime_seconds",
                          "How long the target was stopped or paused by its last backup, until it ran again and "
                          "its healthcheck (if any) passed (0 for hot).", labels=t),
        GaugeMetricFamily("backup_sidecar_archive_size_bytes", "Size of the volume's last archive.", labels=tv),
        GaugeMetricFamily("backup_sidecar_next_run_timestamp_seconds", "When the target is backed up next.",
                          labels=t),
        GaugeMetricFamily("backup_sidecar_expected_interval_seconds",
                          "Longest planned gap between two backups of the target (from its schedule).", labels=t),
        GaugeMetricFamily("backup_sidecar_targets", "Containers discovered as backup targets.", labels=[]),
        GaugeMetricFamily("backup_sidecar_target_config_errors", "Labelled containers skipped because of bad labels.",
                          labels=[]),
        GaugeMetricFamily("backup_sidecar_up", "1 while the sidecar's scheduler runs.", labels=[]),
        GaugeMetricFamily("backup_sidecar_build_info", "Version of the sidecar (value 1).", labels=["version"]),
        GaugeMetricFamily("backup_sidecar_offsite_last_success_timestamp_seconds",
                          "When the newest backup of the volume with a verified off-site copy was made (0: none).",
                          labels=["target", "volume", "destination"]),
        GaugeMetricFamily("backup_sidecar_mirror_bytes",
                          "Disk use of the volume's staging mirror on the backup volume (stop/pause targets; "
                          "also a target gone, until its mirror is removed).",
                          labels=tv),
        GaugeMetricFamily("backup_sidecar_copies",
                          "Places holding the latest backup of every volume of the target (local, S3).", labels=t),
        GaugeMetricFamily("backup_sidecar_consistency_risk",
                          "1 when the target's last backup was a hot copy of what looks like a live database "
                          "(app: the name that gave it away; preset: the backup.preset that backs it up "
                          "consistently, empty when none fits), which can restore corrupt; 0 otherwise, and once "
                          "a preset, pause or stop, or backup.hot-ok=true is set.",
                          labels=["target", "app", "preset"]),
        GaugeMetricFamily("backup_sidecar_restic_read_bytes",
                          "Bytes restic read for the volume's last snapshot (backup.format=restic).", labels=tv),
        GaugeMetricFamily("backup_sidecar_restic_added_bytes",
                          "Bytes the volume's last snapshot added to the restic repository after deduplication "
                          "(read / added: what deduplication saved).", labels=tv),
        GaugeMetricFamily("backup_sidecar_restic_snapshots",
                          "Snapshots of the volume in the local restic repository, after the last forget.", labels=tv),
        GaugeMetricFamily("backup_sidecar_restic_repository_bytes",
                          "Disk use of the local restic repository (BACKUP_DIR/restic).", labels=[]),
        GaugeMetricFamily("backup_sidecar_restic_check_ok",
                          "1 when the last `restic check` of the local repository passed, 0 when it failed.",
                          labels=[]),
        GaugeMetricFamily("backup_sidecar_restic_check_timestamp_seconds",
                          "When the last `restic check` of the local repository finished (0: never).", labels=[]),
        GaugeMetricFamily("backup_sidecar_swarm_node_ready",
                          "1 for each node of the swarm its managers see ready (and not drained), 0 for a known "
                          "node that is not (exported by sidecars on Swarm managers only).", labels=["swarm_node"]),
    ]


# --- the fleet ------------------------------------------------------------------------------

class FleetView:
    """The swarm's nodes for the fleet gauge, read through `read` (Engine.swarm_nodes) at
    scrape time: at most once per `ttl` seconds, in a thread of its own so a scrape waits
    at most `timeout` seconds for an engine that does not answer. A failed or late read
    leaves the series out (logged once until a read succeeds again)."""

    def __init__(self, read: Callable[[], Sequence[SwarmNode]], ttl: float = 30.0, timeout: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        self._read, self._ttl, self._timeout, self._clock = read, ttl, timeout, clock
        self._lock = threading.Lock()
        self._nodes: tuple[SwarmNode, ...] | None = None
        self._read_at: float | None = None  # when the last read finished (success or not)
        self._reader: threading.Thread | None = None
        self._failing = False

    def nodes(self) -> tuple[SwarmNode, ...] | None:
        """The nodes (None: unknown: the last read failed or is late)."""
        with self._lock:
            if self._read_at is not None and self._clock() - self._read_at < self._ttl:
                return self._nodes
            reader, started = self._reader, False
            if reader is None:
                reader = self._reader = threading.Thread(target=self._refresh, name="fleet", daemon=True)
                reader.start()
                started = True
        if started:  # a read still hanging from an earlier scrape holds no scrape again
            reader.join(self._timeout)
        with self._lock:
            if self._reader is reader and reader.is_alive():
                self._late()
                return None
            return self._nodes

    def _refresh(self) -> None:
        try:
            nodes, error = tuple(self._read()), None
        except Exception as exc:  # noqa: BLE001 - any failure of the engine leaves the series out
            nodes, error = None, exc
        with self._lock:
            self._nodes, self._read_at, self._reader = nodes, self._clock(), None
            was_failing, self._failing = self._failing, error is not None
        if error is not None and not was_failing:
            logger.error("swarm nodes unreadable: the fleet gauge is left out until they are",
                         extra={"error": str(error)})
        elif error is None and was_failing:
            logger.info("swarm nodes readable again", extra={"nodes": len(nodes or ())})

    def _late(self) -> None:
        """Called under the lock when a read outlasts the scrape's wait."""
        if not self._failing:
            self._failing = True
            logger.error("swarm nodes unreadable: the engine did not answer in time; the fleet gauge is left out "
                         "until it does", extra={"seconds": self._timeout})


# --- the endpoint ---------------------------------------------------------------------------

def metrics_app(registry: CollectorRegistry, healthy: Callable[[], tuple[bool, str]]) -> Callable:
    """WSGI app: /metrics by prometheus_client's own app (gzip when accepted, OpenMetrics
    when asked for), /healthz 200 while `healthy()` is true, else 503."""
    prometheus = make_wsgi_app(registry)

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return prometheus(environ, start_response)
        if path == "/healthz":
            ok, reason = healthy()
            return _text(start_response, "200 OK" if ok else "503 Service Unavailable", reason + "\n")
        return _text(start_response, "404 Not Found", "not found: try /metrics or /healthz\n")

    return app


def _text(start_response: Callable, status: str, text: str) -> list[bytes]:
    body = text.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]


class _QuietHandler(WSGIRequestHandler):
    timeout = 5.0  # seconds a client may take to send its request (socket read timeout)

    def log_message(self, *args: Any) -> None:  # scrapes every 15 s would flood the log
        pass


class _BoundedServer(ThreadingWSGIServer):
    """prometheus_client's threading server with at most `max_handlers` connections served
    at a time (more are closed at once) and IPv6 addresses (`::` accepts IPv4 as well
    where the system allows dual-stack). Why not the plain ThreadingWSGIServer: it starts
    one thread per connection without limit, so slow or half-sent requests pile up threads."""

    max_handlers = 8
    request_queue_size = 64  # listen backlog: a burst must not wait for SYN retransmits

    def __init__(self, server_address, handler_class, *args, **kwargs):
        if ":" in server_address[0]:
            self.address_family = socket.AF_INET6
        self._slots = threading.BoundedSemaphore(self.max_handlers)
        super().__init__(server_address, handler_class, *args, **kwargs)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and hasattr(socket, "IPV6_V6ONLY"):
            with contextlib.suppress(OSError):  # a system without dual-stack: IPv6 only
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            logger.debug("metrics connection refused: every handler is busy", extra={"client": str(client_address)})
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def handle_error(self, request, client_address) -> None:
        # A client that timed out or went away: socketserver would print a traceback.
        logger.debug("metrics request failed", exc_info=True, extra={"client": str(client_address)})

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class MetricsServer:
    """Serves /metrics and /healthz on a background thread: a bounded number of handler
    threads, each giving its client `read_timeout` seconds to send the request."""

    def __init__(self, metrics: Metrics, address: str, port: int, healthy: Callable[[], tuple[bool, str]],
                 read_timeout: float = _QuietHandler.timeout):
        handler = type("_Handler", (_QuietHandler,), {"timeout": read_timeout})
        self.httpd = make_server(address, port, metrics_app(metrics.registry, healthy), _BoundedServer,
                                 handler_class=handler)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)

    def start(self) -> "MetricsServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
