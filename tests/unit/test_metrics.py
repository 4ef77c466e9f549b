"""Metric values after success, failure and skip, series from discovery on, and their
recovery after a restart. A fresh registry per test."""

from __future__ import annotations

import gzip
import multiprocessing
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from sidecar.actions.backup import BackupOutcome, BackupResult
from sidecar.tarball.archive import ArchiveResult
from sidecar.telemetry.metrics import STATE_FILE, Metrics, MetricsServer, TargetView, _BoundedServer, record_outcome
from sidecar.core.model import CopyState


def value(metrics: Metrics, name: str, **labels) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def make(tmp_path: Path | None = None) -> Metrics:
    return Metrics(CollectorRegistry(), state_path=tmp_path / "metrics.json" if tmp_path else None)


def outcome(result: str, volumes=("data",), sizes=None, seconds=2.5, downtime=0.5, phase=None) -> BackupOutcome:
    archives = tuple(ArchiveResult(Path(f"/b/daily/app_{v}_2026-01-01_daily.tar.zst"), size, size * 3, "0" * 64)
                     for v, size in (sizes or {}).items())
    return BackupOutcome("app", "app-1", result, archives, volumes, seconds, downtime, phase,
                         None if result == "success" else "boom")


VIEW = TargetView("app", ("data", "logs"), next_run=1_900_000_000, expected_interval=86400)


def test_series_exist_from_discovery_on():
    m = make()
    m.discovered([VIEW], config_errors=2)
    assert value(m, "backup_sidecar_last_success_timestamp_seconds", target="app", volume="data") == 0
    assert value(m, "backup_sidecar_last_success_timestamp_seconds", target="app", volume="logs") == 0
    for result in ("success", "failure", "skipped"):
        assert value(m, "backup_sidecar_runs_total", target="app", result=result) == 0
    assert value(m, "backup_sidecar_next_run_timestamp_seconds", target="app") == 1_900_000_000
    assert value(m, "backup_sidecar_expected_interval_seconds", target="app") == 86400
    assert value(m, "backup_sidecar_targets") == 1
    assert value(m, "backup_sidecar_target_config_errors") == 2
    assert value(m, "backup_sidecar_build_info", version=__import__("sidecar").__version__) == 1


def test_success_failure_skip():
    m = make()
    m.discovered([VIEW], 0)
    before = time.time()
    m.observe(outcome("success", ("data", "logs"), {"data": 1000, "logs": 20}))
    assert value(m, "backup_sidecar_last_status", target="app", volume="data") == 1
    success = value(m, "backup_sidecar_last_success_timestamp_seconds", target="app", volume="data")
    assert before <= success <= time.time()
    assert value(m, "backup_sidecar_archive_size_bytes", target="app", volume="data") == 1000
    assert value(m, "backup_sidecar_runs_total", target="app", result="success") == 1
    assert value(m, "backup_sidecar_duration_seconds_count", target="app") == 1
    assert value(m, "backup_sidecar_duration_seconds_sum", target="app") == 2.5
    assert value(m, "backup_sidecar_downtime_seconds", target="app") == 0.5

    m.observe(outcome("failure", ("data", "logs"), phase="pre"))
    assert value(m, "backup_sidecar_last_status", target="app", volume="data") == 0
    assert value(m, "backup_sidecar_last_success_timestamp_seconds", target="app", volume="data") == success
    assert value(m, "backup_sidecar_last_attempt_timestamp_seconds", target="app", volume="data") >= success
    assert value(m, "backup_sidecar_runs_total", target="app", result="failure") == 1

    m.observe(outcome("skipped"))
    assert value(m, "backup_sidecar_runs_total", target="app", result="skipped") == 1
    assert value(m, "backup_sidecar_duration_seconds_count", target="app") == 2  # skips take no time


def test_targets_gone_lose_their_series():
    m = make()
    m.discovered([VIEW], 0)
    m.discovered([], 0)
    assert value(m, "backup_sidecar_last_success_timestamp_seconds", target="app", volume="data") is None
    assert value(m, "backup_sidecar_runs_total", target="app", result="success") is None
    assert value(m, "backup_sidecar_targets") == 0


def test_last_success_survives_a_restart(tmp_path):
    first = make(tmp_path)
    first.discovered([VIEW], 0)
    first.observe(outcome("success", ("data",), {"data": 10}))
    success = value(first, "backup_sidecar_last_success_timestamp_seconds", target="app", volume="data")

    second = make(tmp_path)  # a new process: fresh registry, same backup volume
    second.discovered([VIEW], 0)
    assert value(second, "backup_sidecar_last_success_timestamp_seconds", target="app", volume="data") == success
    assert value(second, "backup_sidecar_last_status", target="app", volume="data") == 1
    assert value(second, "backup_sidecar_last_success_timestamp_seconds", target="app", volume="logs") == 0
    assert oct((tmp_path / "metrics.json").stat().st_mode & 0o777) == "0o600"


def test_recovery_from_the_archives_without_a_state_file(tmp_path):
    stamp = time.time() - 3 * 86400
    m = make(tmp_path)
    m.recover({("app", "data"): stamp})
    m.discovered([VIEW], 0)
    assert value(m, "backup_sidecar_last_success_timestamp_seconds", target="app", volume="data") == stamp
    # A newer success recorded in the state file is not replaced by an older archive time.
    m.observe(outcome("success", ("data",), {"data": 1}))
    newer = value(m, "backup_sidecar_last_success_timestamp_seconds", target="app", volume="data")
    m.recover({("app", "data"): stamp})
    again = make(tmp_path)
    again.discovered([VIEW], 0)
    assert value(again, "backup_sidecar_last_success_timestamp_seconds", target="app", volume="data") == newer


def test_copy_state():
    m = make()
    m.discovered([VIEW], 0)
    m.copy_state({("app", "data"): CopyState(100.0, {"s3": 90.0}, 2), ("app", "logs"): CopyState(100.0, {"s3": None}, 1)})
    assert value(m, "backup_sidecar_copies", target="app") == 1  # the weakest volume counts
    assert value(m, "backup_sidecar_offsite_last_success_timestamp_seconds", target="app", volume="data",
                 destination="s3") == 90.0
    assert value(m, "backup_sidecar_offsite_last_success_timestamp_seconds", target="app", volume="logs",
                 destination="s3") == 0


@pytest.mark.parametrize("healthy, code", [((True, "ok"), 200), ((False, "scheduler loop stalled"), 503)])
def test_endpoint_serves_metrics_and_health(healthy, code):
    m = make()
    m.discovered([VIEW], 0)
    server = MetricsServer(m, "127.0.0.1", 0, lambda: healthy).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as r:
            assert b'backup_sidecar_last_success_timestamp_seconds{target="app",volume="data"} 0.0' in r.read()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as r:
                got, body = r.status, r.read()
        except urllib.error.HTTPError as err:
            got, body = err.code, err.read()
        assert got == code and healthy[1].encode() in body
    finally:
        server.stop()


def test_state_file_written_atomically(tmp_path):
    m = make(tmp_path)
    m.discovered([VIEW], 0)
    m.observe(outcome("success", ("data",), {"data": 1}))
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def _cli_backup(state_dir: Path) -> None:
    record_outcome(state_dir, outcome("success", ("data",), {"data": 4321}, seconds=40))


def test_an_outcome_recorded_by_another_process_shows_on_the_next_scrape(tmp_path):
    """`docker compose exec sidecar backup-sidecar backup app` beside the running daemon:
    the daemon's registry shows the run without a restart."""
    daemon = make(tmp_path)  # the daemon: state at tmp_path/metrics.json
    daemon.discovered([VIEW], 0)
    assert value(daemon, "backup_sidecar_last_success_timestamp_seconds", target="app", volume="data") == 0
    before = time.time()
    cli = multiprocessing.get_context("fork").Process(target=_cli_backup, args=(tmp_path,))
    cli.start()
    cli.join(30)
    assert cli.exitcode == 0 and (tmp_path / STATE_FILE).exists()
    assert value(daemon, "backup_sidecar_last_success_timestamp_seconds", target="app", volume="data") >= before
    assert value(daemon, "backup_sidecar_archive_size_bytes", target="app", volume="data") == 4321
    assert value(daemon, "backup_sidecar_runs_total", target="app", result="success") == 1
    assert value(daemon, "backup_sidecar_duration_seconds_bucket", target="app", le="30.0") == 0
    assert value(daemon, "backup_sidecar_duration_seconds_bucket", target="app", le="60.0") == 1
    assert value(daemon, "backup_sidecar_duration_seconds_bucket", target="app", le="+Inf") == 1
    daemon.observe(outcome("failure", ("data",)))  # the daemon's own runs add to the same record
    assert value(daemon, "backup_sidecar_runs_total", target="app", result="success") == 1
    assert value(daemon, "backup_sidecar_runs_total", target="app", result="failure") == 1
    assert value(daemon, "backup_sidecar_duration_seconds_count", target="app") == 2


def test_outcome_result_may_be_an_enum():
    m = make()
    m.discovered([VIEW], 0)
    archives = outcome("success", ("data",), {"data": 1}).archives
    m.observe(BackupOutcome("app", "app-1", BackupResult.SUCCESS, archives, ("data",), 1.0, 0.0))
    m.observe(BackupOutcome("app", "app-1", BackupResult.SKIPPED))
    assert value(m, "backup_sidecar_runs_total", target="app", result="success") == 1
    assert value(m, "backup_sidecar_runs_total", target="app", result="skipped") == 1
    assert value(m, "backup_sidecar_last_status", target="app", volume="data") == 1


def test_endpoint_gzips_when_asked_and_keeps_help_and_types():
    m = make()
    m.discovered([VIEW], 0)
    m.set_up(True)
    server = MetricsServer(m, "127.0.0.1", 0, lambda: (True, "ok")).start()
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request, timeout=5) as r:
            assert r.headers["Content-Encoding"] == "gzip"
            text = gzip.decompress(r.read()).decode()
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.headers.get("Content-Encoding") is None
            assert r.read().decode() == text
        assert "# HELP backup_sidecar_runs_total Backup runs by result." in text
        assert "# TYPE backup_sidecar_runs_total counter" in text
        assert "# TYPE backup_sidecar_duration_seconds histogram" in text
        assert 'backup_sidecar_duration_seconds_bucket{le="+Inf",target="app"} 0.0' in text
        assert "backup_sidecar_up 1.0" in text
        openmetrics = urllib.request.Request(url, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        with urllib.request.urlopen(openmetrics, timeout=5) as r:
            assert r.headers["Content-Type"].startswith("application/openmetrics-text")
            assert r.read().decode().endswith("# EOF\n")
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/other", timeout=5)
        assert missing.value.code == 404
    finally:
        server.stop()


def _metrics_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name != "metrics" and t is not threading.main_thread())


def test_half_sent_requests_use_a_bounded_number_of_threads_for_a_bounded_time():
    """500 clients that send half a request: the endpoint keeps a few handler threads,
    frees them after its read timeout, and still answers a scrape."""
    m = make()
    before = _metrics_threads()
    server = MetricsServer(m, "127.0.0.1", 0, lambda: (True, "ok"), read_timeout=1.0).start()
    clients = []
    try:
        for _ in range(500):
            try:
                c = socket.create_connection(("127.0.0.1", server.port), timeout=2)
                c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never the blank line that ends it
                clients.append(c)
            except OSError:  # refused or reset once the endpoint is busy: also fine
                pass
        time.sleep(0.3)
        assert _metrics_threads() - before <= _BoundedServer.max_handlers + 2
        deadline = time.monotonic() + 10
        while _metrics_threads() > before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _metrics_threads() == before  # every handler timed out
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as r:
            assert r.status == 200
    finally:
        for c in clients:
            c.close()
        server.stop()


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 in this Python")
def test_the_ipv6_wildcard_serves_ipv6_and_ipv4():
    try:
        server = MetricsServer(make(), "::", 0, lambda: (True, "ok")).start()
    except OSError as exc:  # pragma: no cover - a kernel without IPv6
        pytest.skip(f"no IPv6 here: {exc}")
    try:
        for host in ("[::1]", "127.0.0.1"):  # the healthcheck asks 127.0.0.1 for METRICS_ADDR=::
            with urllib.request.urlopen(f"http://{host}:{server.port}/healthz", timeout=5) as r:
                assert r.status == 200
    finally:
        server.stop()


def test_a_staging_mirror_size_from_its_last_pass(tmp_path):
    """A gone target's mirror counts too, until it is removed (actions/mirrors.py)."""
    m = make(tmp_path)
    m.discovered([VIEW], 0)
    for target, volume, size in (("app", "data", 12345), ("gone", "olddata", 777)):
        folder = tmp_path / "mirror" / target / volume
        folder.mkdir(parents=True)
        (folder / "info.json").write_text(f'{{"bytes": {size}, "entries": 3, "updated": 1}}')
    assert value(m, "backup_sidecar_mirror_bytes", target="app", volume="data") == 12345
    assert value(m, "backup_sidecar_mirror_bytes", target="gone", volume="olddata") == 777
    assert value(m, "backup_sidecar_mirror_bytes", target="app", volume="logs") is None  # no mirror kept
