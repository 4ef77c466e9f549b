"""A real Prometheus scrapes the running sidecar and evaluates the shipped alert rules."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.request
from pathlib import Path

from .prom import Prometheus
from .support import wait_for, without_node

def _seed_old_archive(backup_dir: Path, service: str, volume: str, days_old: int) -> None:
    folder = backup_dir / "daily"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.time() - days_old * 86400
    day = time.strftime("%Y-%m-%d", time.gmtime(stamp))
    path = folder / f"{service}_{volume}_{day}_daily.tar.zst"
    path.write_bytes(b"old")
    (folder / (path.name + ".sha256")).write_text(f"{'0' * 64}  {path.name}\n")
    os.utime(path, (stamp, stamp))


def _firing(prometheus: Prometheus, alert: str) -> set[str]:
    return {a["labels"].get("target", "") for a in prometheus.alerts()
            if a["labels"]["alertname"] == alert and a["state"] == "firing"}


def test_prometheus_scrapes_and_the_too_old_alert_follows_the_schedule(lab, prometheus):
    for service in ("fresh", "stale", "busy"):
        volume = lab.volume(service)
        schedule = "* * * * * */5" if service == "busy" else "@daily"  # busy: 7.5 s before "too old"
        lab.populate(volume, f"echo {service} > f")
        lab.workload(service, {"backup.enable": "true", "backup.strategy": "hot", "backup.schedule": schedule,
                               "backup.volumes": volume}, {volume: "/data"})
    done = lab.cli("backup", "fresh")
    assert done.returncode == 0, done.stderr
    fresh_done = time.time()
    # "stale" was last backed up three days ago (an archive from before a sidecar restart).
    _seed_old_archive(lab.backup_dir, "stale", "stale", 3)
    daemon, _log = lab.start_cli("run", log_name="daemon.log")

    # Scraped during backup runs: the busy target's run counter grows in Prometheus.
    runs = 'backup_sidecar_runs_total{target="busy",result="success"}'
    wait_for(lambda: any(float(r["value"][1]) >= 2 for r in prometheus.query(runs)), timeout=60,
             what="Prometheus to see two runs of the busy target")

    last = prometheus.query('backup_sidecar_last_success_timestamp_seconds{target="fresh"}')
    assert len(last) == 1 and last[0]["metric"]["volume"] == "fresh"
    assert abs(float(last[0]["value"][1]) - fresh_done) < 30  # recovered after the restart, not 0

    firing = wait_for(lambda: _firing(prometheus, "BackupTooOld") or None, timeout=60,
                      what="BackupTooOld to fire")
    assert firing == {"stale"}
    stale = [a for a in prometheus.alerts() if a["labels"]["alertname"] == "BackupTooOld"][0]
    assert stale["labels"]["severity"] and "stale" in stale["annotations"]["summary"]
    assert prometheus.query('backup_sidecar_up{job="backup-sidecar"}')[0]["value"][1] == "1"

    # Every metric the dashboard uses is really exported.
    exported = set(re.findall(r"^(backup_sidecar_\w+)[{ ]", _scrape(lab.metrics_port), re.M))
    exported |= {re.sub(r"_(bucket|sum|count)$", "", name) for name in exported}
    from tests.unit.test_monitoring import dashboard_metric_names

    missing = {m for m in dashboard_metric_names() if m.startswith("backup_sidecar_")} - exported - {
        "backup_sidecar_offsite_last_success_timestamp_seconds",  # only with an S3 store configured
        "backup_sidecar_swarm_node_ready"}  # only on a Swarm manager node
    assert not missing, missing

    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return without_node(r.read().decode())


def test_healthz_reports_the_daemon(lab):
    daemon, _log = lab.start_cli("run", log_name="daemon.log")
    url = f"http://127.0.0.1:{lab.metrics_port}/healthz"

    def healthy():
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    wait_for(healthy, timeout=30, what="/healthz to answer 200")
    metrics = _scrape(lab.metrics_port)
    assert "backup_sidecar_up 1.0" in metrics and json.dumps("x")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
