"""The daemon's discovery loop with a fake engine: a dropped event stream (the engine
restarted) is reconnected and followed by a full re-list, so changes made while it was
down are seen."""

from __future__ import annotations

import threading
import time

from sidecar.actions.context import Context
from sidecar.actions.daemon import Daemon
from sidecar.core.errors import EngineError
from sidecar.core.model import ContainerInfo, ContainerState, Mount
from sidecar.core.settings import load_settings
from sidecar.store.storage import BackupStore, Journal


def container(name: str) -> ContainerInfo:
    return ContainerInfo(id=name * 8, name=name, image="img", image_id="sha256:x", state=ContainerState.RUNNING,
                         labels={"backup.enable": "true"}, mounts=(Mount("volume", f"{name}-vol", "/data"),))


class FakeEngine:
    """Lists what `containers` holds; its first event stream breaks at once, later ones
    block until closed."""

    def __init__(self):
        self.containers = [container("a")]
        self.lists = 0
        self.streams = 0
        self.closed = threading.Event()

    def list_candidates(self, label):
        self.lists += 1
        return list(self.containers)

    def events(self, since=None):
        self.streams += 1
        if self.streams == 1:
            self.containers.append(container("b"))  # created while the engine restarts

            def broken():
                raise EngineError("follow events: connection reset")
                yield  # pragma: no cover
            return broken()
        return Blocking(self.closed)

    def find_container(self, ref):
        return next((c for c in self.containers if c.id == ref), None)

    def own_container(self):
        return None  # not in a container: the whole engine is in scope


class Blocking:
    def __init__(self, closed: threading.Event):
        self.closed = closed

    def __iter__(self):
        self.closed.wait(10)
        return iter(())

    def close(self):
        self.closed.set()


def wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_dropped_event_stream_reconnects_and_relists(tmp_path):
    settings = load_settings({"BACKUP_DIR": str(tmp_path)})
    engine = FakeEngine()
    store = BackupStore(tmp_path)
    ctx = Context(settings, engine, store, Journal(tmp_path / "journal.json"))
    daemon = Daemon(ctx)
    daemon.refresh_all()
    assert [t.backup_name for t in daemon.discovery.targets] == ["a"]

    watcher = threading.Thread(target=daemon._follow_events, daemon=True)
    watcher.start()
    try:
        wait(lambda: engine.streams >= 2)
        wait(lambda: [t.backup_name for t in daemon.discovery.targets] == ["a", "b"])
        assert engine.lists >= 3  # the first list, and one after each (re)connection
    finally:
        daemon.request_stop()
        engine.closed.set()
        watcher.join(5)
    assert not watcher.is_alive()


def test_healthz_is_not_healthy_before_recovery_and_discovery_are_done(tmp_path):
    """/healthz answers 200 only once the daemon runs: before, the metrics would say up=0."""
    settings = load_settings({"BACKUP_DIR": str(tmp_path)})
    ctx = Context(settings, FakeEngine(), BackupStore(tmp_path), Journal(tmp_path / "journal.json"))
    daemon = Daemon(ctx)
    ok, why = daemon.healthy()
    assert not ok and why.startswith("starting")
