"""The actions tier: actions run against FakeEngine and a real BackupStore in tmp_path."""

from __future__ import annotations

import io
import logging
import signal
import socket
import tarfile
import tempfile
from pathlib import Path

import pytest
import zstandard

from sidecar import cli, readers
from sidecar.actions.context import Context
from sidecar.readers.worker import WorkerReader
from sidecar.core.settings import load_settings
from tests.fakes.engine import FakeEngine


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture(scope="session")
def docker_socket():
    """A real unix socket standing for the engine's: the CLI's preflight finds a socket this
    process may use (the fake engine answers the calls). A short path: AF_UNIX allows 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="fake-engine-") as folder:
        path = Path(folder) / "docker.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(str(path))
            yield path


@pytest.fixture
def env(tmp_path, docker_socket) -> dict[str, str]:
    return {"BACKUP_DIR": str(tmp_path / "backups"), "TZ": "UTC", "BACKUP_PROGRESS_INTERVAL": "0.1",
            "DOCKER_HOST": f"unix://{docker_socket}"}


@pytest.fixture
def make_ctx(engine, env):
    def make(**extra: str) -> Context:
        ctx = Context.create(load_settings({**env, **extra}), engine)
        ctx.store.prepare()
        return ctx
    return make


@pytest.fixture
def ctx(make_ctx) -> Context:
    return make_ctx()


WORKER_IMAGE = "backup-sidecar:fake"


@pytest.fixture
def restore_worker(engine, env, monkeypatch):
    """Restores written by the checked extractor in a worker (the fake engine runs it as a
    host process): no worker, no restore. Backups keep reading through the engine's archive
    API, as the tests using this were written."""
    engine.worker_images.add(WORKER_IMAGE)
    env["BACKUP_WORKER_IMAGE"] = WORKER_IMAGE
    monkeypatch.setenv("BACKUP_WORKER_IMAGE", WORKER_IMAGE)  # the CLI's tests read the process environment
    monkeypatch.setitem(readers.READERS, "worker", WorkerReader())
    real = readers.choose
    monkeypatch.setattr(readers, "choose", lambda engine, request, order=("engine-api",): real(engine, request, order))


@pytest.fixture
def data(tmp_path) -> Path:
    """A volume's folder with a few files, a subfolder and a symlink."""
    root = tmp_path / "volumes" / "data"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "b.bin").write_bytes(bytes(range(256)) * 64)
    (root / "link").symlink_to("a.txt")
    return root


def app_labels(**labels: str) -> dict[str, str]:
    return {"backup.enable": "true", "backup.name": "app", **{f"backup.{k.replace('_', '.')}": v
                                                              for k, v in labels.items()}}


def archive_members(path: Path) -> dict[str, bytes | str | None]:
    """An archive's members: file contents, symlink targets, None for folders."""
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(path.read_bytes()), read_across_frames=True).read()
    found: dict[str, bytes | str | None] = {}
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        for m in tar:
            name = m.name.removeprefix("./") or "."
            found[name] = tar.extractfile(m).read() if m.isreg() else m.linkname if m.issym() else None
    return found


def tree(root: Path) -> dict[str, bytes | str | None]:
    found: dict[str, bytes | str | None] = {".": None}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        found[rel] = str(p.readlink()) if p.is_symlink() else None if p.is_dir() else p.read_bytes()
    return found


@pytest.fixture
def run(engine, env, monkeypatch):
    """The CLI's main() in this process against the fake engine, with `env` as the
    environment (the host's BACKUP_PROJECT and LOG_* left out); returns main's exit code.
    The signal handlers and the root logger the CLI sets up are put back afterwards."""
    for name in ("BACKUP_PROJECT", "LOG_FORMAT", "LOG_LEVEL", "LOG_FORMAT_FILE", "LOG_LEVEL_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(cli, "Engine", lambda *_args, **_kw: engine)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield lambda *argv: cli.main(list(argv))
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    root.handlers[:], root.level = saved


@pytest.fixture
def fresh_worker_reader(monkeypatch):
    """The registry's worker reader caches its image lookup and probes per process: a fresh
    one per test (modules that start workers use it: pytestmark)."""
    monkeypatch.setitem(readers.READERS, "worker", WorkerReader())
