"""Honest metrics: a backup run by the CLI (another process than the daemon, as with
`docker compose exec backup backup-sidecar backup NAME`) shows on the running daemon's
/metrics within seconds, with its result and duration."""

from __future__ import annotations

import signal
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from .support import log_records, wait_for


def _scrape(port: int) -> list:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return []
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _samples(port: int) -> dict[tuple[str, tuple], float]:
    """Values by name and labels, without the `node` label every series carries."""
    return {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "node"))): s.value
            for s in _scrape(port)}


def _value(samples, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_a_cli_backup_shows_on_the_daemons_metrics(lab):
    ok_vol, bad_vol = lab.volume("data"), lab.volume("bad")
    lab.populate(ok_vol, "echo v > v")
    lab.workload("app", {"backup.enable": "true", "backup.strategy": "hot", "backup.schedule": "@monthly"},
                 {ok_vol: "/data"})
    lab.workload("bad", {"backup.enable": "true", "backup.strategy": "hot", "backup.schedule": "@monthly",
                         "backup.exec.pre": "exit 3"}, {bad_vol: "/data"})
    daemon, log = lab.start_cli("run", log_name="daemon.log")
    port = lab.metrics_port
    before = wait_for(lambda: _samples(port).get(("backup_sidecar_targets", ())) == 2 and _samples(port),
                      timeout=30, what="the daemon's metrics with both targets")
    assert _value(before, "backup_sidecar_last_success_timestamp_seconds", target="app", volume="data") == 0

    assert lab.cli("backup", "app").returncode == 0
    assert lab.cli("backup", "bad").returncode == 1

    def shown():
        s = _samples(port)
        return s if (_value(s, "backup_sidecar_runs_total", target="app", result="success") == 1
                     and _value(s, "backup_sidecar_runs_total", target="bad", result="failure") == 1) else None

    after = wait_for(shown, timeout=10, what="the CLI's runs on the daemon's /metrics")
    assert _value(after, "backup_sidecar_last_success_timestamp_seconds", target="app", volume="data") > 0
    assert _value(after, "backup_sidecar_last_status", target="app", volume="data") == 1
    assert _value(after, "backup_sidecar_duration_seconds_count", target="app") == 1
    assert _value(after, "backup_sidecar_duration_seconds_sum", target="app") > 0
    assert _value(after, "backup_sidecar_archive_size_bytes", target="app", volume="data") > 0
    assert _value(after, "backup_sidecar_last_status", target="bad", volume="bad") == 0
    assert _value(after, "backup_sidecar_last_success_timestamp_seconds", target="bad", volume="bad") == 0

    # Every series names the node: the engine's name (BACKUP_NODE_NAME unset).
    assert {s.labels.get("node") for s in _scrape(port)} == {lab.client.info()["Name"]}

    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    assert not [r for r in log_records(log) if r["level"] == "ERROR"]
