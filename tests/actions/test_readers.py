"""The Reader seam: registry, chooser, and the engine-API reader on the fake engine."""

from __future__ import annotations

import pytest

from sidecar import readers
from sidecar.core.errors import ArchiveError, ConfigError
from sidecar.core.model import Compression, Mount

from .conftest import archive_members, tree


class _Unusable:
    name = "worker"

    def usable(self, engine, request):
        return False

    def open(self, engine, request):  # pragma: no cover - never chosen
        raise AssertionError


def _request(container_id, tmp_path, **kw):
    return readers.ArchiveRequest(container_id, Mount("volume", "data", "/data"), tmp_path / "out.tar.zst",
                                  Compression.ZSTD, **kw)


def test_choose_falls_back_in_order(engine, tmp_path, monkeypatch):
    monkeypatch.setitem(readers.READERS, "worker", _Unusable())
    request = _request("x", tmp_path)
    assert readers.choose(engine, request).name == "engine-api"
    assert readers.choose(engine, request, ("worker", "engine-api")).name == "engine-api"
    with pytest.raises(ConfigError, match="no reader of worker"):
        readers.choose(engine, request, ("worker",))
    with pytest.raises(ConfigError, match="unknown reader 'nope'"):
        readers.get("nope")


def test_engine_api_reader_writes_the_archive_and_its_checksum_on_finish(engine, data, tmp_path):
    app = engine.add_container("app-1", mounts={"/data": data})
    request = _request(app.id, tmp_path)
    with readers.get("engine-api").open(engine, request) as pending:
        assert pending.read() > 0
        assert not request.final_path.exists()  # published only by finish
        result = pending.finish()
    assert result.path == request.final_path and (tmp_path / "out.tar.zst.sha256").exists()
    assert archive_members(result.path) == tree(data)


def test_a_broken_stream_is_an_archive_error_and_leaves_nothing(engine, data, tmp_path, monkeypatch):
    app = engine.add_container("app-1", mounts={"/data": data})
    monkeypatch.setattr(engine, "read_path", lambda cid, path: iter([b"not a tar" * 100]))
    request = _request(app.id, tmp_path, exclude=("*.log",))  # excludes parse the stream
    with pytest.raises(ArchiveError, match="broke"):
        with readers.get("engine-api").open(engine, request) as pending:
            pending.read()
    assert list(tmp_path.glob("out*")) == []
