"""JsonState: atomic, locked read-modify-write across processes; unreadable documents moved aside."""

import json
import logging
import multiprocessing
import stat

from sidecar.store.state import JsonState


def _add_many(path, start, count):
    state = JsonState(path, "journal")
    for i in range(start, start + count):
        with state.update() as data:
            data.setdefault("items", []).append(i)


def test_concurrent_processes_lose_no_entry(tmp_path):
    path = tmp_path / "journal.json"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_add_many, args=(path, n * 200, 200)) for n in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sorted(JsonState(path, "journal").read()["items"]) == list(range(400))


def test_written_private_and_only_when_changed(tmp_path):
    path = tmp_path / "state.json"
    state = JsonState(path, "state")
    with state.update() as data:
        pass
    assert not path.exists()
    with state.update() as data:
        data["a"] = 1
    assert json.loads(path.read_text()) == {"a": 1}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_exception_in_update_writes_nothing(tmp_path):
    path = tmp_path / "state.json"
    state = JsonState(path, "state")
    with state.update() as data:
        data["a"] = 1
    try:
        with state.update() as data:
            data["a"] = 2
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert state.read() == {"a": 1}


def test_unreadable_document_is_moved_aside_with_an_error(tmp_path, caplog):
    path = tmp_path / "remote.json"
    path.write_text("{not json")
    state = JsonState(path, "remote index")
    with caplog.at_level(logging.ERROR):
        with state.update() as data:
            assert data == {}
            data["b"] = 2
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("remote.json.unreadable-")]
    assert len(aside) == 1 and aside[0].read_text() == "{not json"
    assert json.loads(path.read_text()) == {"b": 2}
    assert any("remote index unreadable" in r.getMessage() for r in caplog.records)


def test_a_json_value_that_is_not_an_object_is_unreadable(tmp_path):
    path = tmp_path / "s.json"
    path.write_text("[1, 2]")
    assert JsonState(path, "s").read() == {}
    assert any(p.name.startswith("s.json.unreadable-") for p in tmp_path.iterdir())
