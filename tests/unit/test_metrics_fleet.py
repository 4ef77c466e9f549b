"""Metrics of a fleet (issue 13): the `node` label on every series of every family, and
the fleet gauge a sidecar on a Swarm manager exports, read through FleetView (cached,
never holding a scrape on an engine that does not answer, failures logged once)."""

from __future__ import annotations

import dataclasses

import json
import logging
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from sidecar.actions.backup import BackupOutcome
from sidecar.actions.formats import SnapshotResult
from sidecar.tarball.archive import ArchiveResult
from sidecar.telemetry.metrics import FleetView, Metrics, TargetView, _families
from sidecar.core.model import CopyState, SwarmNode
from sidecar.readers.mirror import INFO, mirror_folder

VIEW = TargetView("app", ("data",), next_run=1_900_000_000, expected_interval=86400)
FLEET = (SwarmNode("a", "n1", "ready", manager=True), SwarmNode("b", "n2", "down"),
         SwarmNode("c", "n3", "ready"), SwarmNode("d", "n3", "down"),  # n3 left and joined again
         SwarmNode("e", "n4", "ready", availability="drain"), SwarmNode("f", "n5", "ready", availability="pause"))


def samples(metrics: Metrics) -> list:
    return [s for family in text_string_to_metric_families(metrics.render().decode()) for s in family.samples]


class Fixed:
    """A FleetView stand-in: the nodes it is given."""

    def __init__(self, nodes):
        self._nodes = nodes

    def nodes(self):
        return self._nodes


def busy(tmp_path: Path, **kwargs) -> Metrics:
    """Metrics with a series in every family (a mirror, an off-site copy, a recorded run)."""
    folder = mirror_folder(tmp_path, "app", "data")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INFO).write_text(json.dumps({"bytes": 123}))
    m = Metrics(CollectorRegistry(), state_path=tmp_path / "metrics.json", **kwargs)
    m.discovered([dataclasses.replace(VIEW, pings=("hc",))], 0)
    m.copy_state({("app", "data"): CopyState(1.0, {"s3": 2.0}, 2)})
    m.set_up(True)
    archive = ArchiveResult(Path("/b/daily/app_data_2026-01-01_daily.tar.zst"), 10, 30, "0" * 64)
    m.observe(BackupOutcome("app", "app-1", "success", (archive,), ("data",), 1.0, 0.0, None, None))
    # backup.format=restic: a snapshot's figures, and the repository's (actions/formats/restic.py writes them).
    (tmp_path / "restic.json").write_text(json.dumps({"repository_bytes": 5, "snapshots": {"app/data": 2},
                                                      "check": {"ok": True, "finished": 1.0}}))
    m.observe(BackupOutcome("app", "app-1", "success", (), ("data",), 1.0, 0.0, None, None,
                            snapshots=(SnapshotResult("data", "abc", 30, 3),)))
    return m


def test_every_series_of_every_family_carries_the_node_label(tmp_path):
    m = busy(tmp_path, node="n1", fleet=Fixed(FLEET))
    found = samples(m)
    exported = {s.name.removesuffix("_total").removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
                for s in found}
    assert exported == {f.name for f in _families()}  # a series in every family
    assert all(s.labels.get("node") == "n1" for s in found)
    assert m.registry.get_sample_value("backup_sidecar_up", {"node": "n1"}) == 1
    assert m.registry.get_sample_value("backup_sidecar_last_status", {"target": "app", "volume": "data",
                                                                     "node": "n1"}) == 1


def test_without_a_node_name_no_node_label(tmp_path):
    assert not any("node" in s.labels for s in samples(busy(tmp_path)))


def test_the_fleet_gauge_one_series_per_host_ready_or_not(tmp_path):
    m = busy(tmp_path, node="n1", fleet=Fixed(FLEET))
    ready = {s.labels["swarm_node"]: s.value for s in samples(m) if s.name == "backup_sidecar_swarm_node_ready"}
    assert ready == {"n1": 1, "n2": 0, "n3": 1, "n4": 0, "n5": 1}  # drained: no task runs there
    assert m.registry.get_sample_value("backup_sidecar_swarm_node_ready", {"swarm_node": "n2", "node": "n1"}) == 0


def test_no_fleet_series_off_a_manager_or_when_unknown(tmp_path):
    for fleet in (None, Fixed(()), Fixed(None)):
        m = busy(tmp_path, node="n2", fleet=fleet)
        assert not [s for s in samples(m) if s.name == "backup_sidecar_swarm_node_ready"]
        m.registry.unregister(m)


# --- FleetView -------------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_fleet_view_reads_once_per_ttl():
    reads, clock = [], Clock()
    view = FleetView(lambda: reads.append(1) or FLEET[:2], ttl=30, timeout=5, clock=clock)
    assert view.nodes() == FLEET[:2] and view.nodes() == FLEET[:2] and len(reads) == 1
    clock.now += 31
    assert view.nodes() == FLEET[:2] and len(reads) == 2


def test_fleet_view_errors_leave_the_series_out_logged_once(caplog):
    clock, failing = Clock(), [True]

    def read():
        if failing[0]:
            raise OSError("engine gone")
        return FLEET[:1]

    view = FleetView(read, ttl=30, timeout=5, clock=clock)
    with caplog.at_level(logging.INFO, logger="sidecar.telemetry.metrics"):
        for _ in range(3):
            assert view.nodes() is None
            clock.now += 31
        failing[0] = False
        assert view.nodes() == FLEET[:1]
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["swarm nodes unreadable: the fleet gauge is left out until they are",
                        "swarm nodes readable again"]


def test_fleet_view_never_holds_a_scrape_on_a_hanging_engine(caplog):
    release = threading.Event()
    view = FleetView(lambda: release.wait(30) and FLEET[:1], ttl=30, timeout=0.2)
    with caplog.at_level(logging.ERROR, logger="sidecar.telemetry.metrics"):
        started = time.monotonic()
        assert view.nodes() is None
        assert view.nodes() is None  # the read still hangs: no second wait
        waited = time.monotonic() - started
        release.set()
        deadline = time.monotonic() + 10
        while view.nodes() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    assert view.nodes() == FLEET[:1]
    assert waited < 5  # one bounded wait (0.2 s), not the engine's
    assert [r.getMessage() for r in caplog.records] == [
        "swarm nodes unreadable: the engine did not answer in time; the fleet gauge is left out until it does"]
