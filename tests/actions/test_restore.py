"""run_restore against the fake engine: refuse a volume with data without --force (before
stopping anything), put the container back, the bytes restored; a failure after the volume
was emptied leaves the container stopped and journalled."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from dataclasses import replace

import pytest

from sidecar import cli
from sidecar.tarball import crypto
from sidecar.actions.backup import run_backup
from sidecar.actions.recover import run_recovery
from sidecar.actions.restore import RestoreOutcome, run_restore
from sidecar.tarball.archive import write_checksum
from sidecar.destinations import CopyIndex
from sidecar.core.errors import (
    EngineError,
    LabelError,
    NotFound,
    RestoreError,
    RestoreLeftStopped,
    UnsafeArchive,
    UnsafeName,
)
from sidecar.core.model import ContainerState

from .conftest import app_labels, archive_members, tree

EXTRACT = "worker:extract:swap"  # the fake engine's fault on the extract worker's swap (journalled as an emptying)
pytestmark = pytest.mark.usefixtures("restore_worker")


@pytest.fixture
def backed_up(engine, ctx, data):
    app = engine.add_container("app-1", app_labels(), {"/data": data})
    outcome = run_backup(ctx, ctx.discover().find("app"))
    assert outcome.ok
    engine.calls.clear()
    return app, tree(data)


def test_restore_into_an_empty_volume_stops_and_starts_the_container(engine, ctx, data, backed_up):
    app, before = backed_up
    shutil.rmtree(data)
    data.mkdir()
    outcome = run_restore(ctx, "app", "data")
    assert isinstance(outcome, RestoreOutcome) and (outcome.target, outcome.volume) == ("app", "data")
    assert tree(data) == before
    assert [c[0] for c in engine.calls if c[0] in ("stop", "start", "run_helper")] == ["stop", "start"]
    assert engine.state(app.id) is ContainerState.RUNNING and ctx.journal.entries() == []


def test_restore_refuses_a_volume_with_data_without_force_and_puts_the_container_back(engine, ctx, data, backed_up):
    app, _ = backed_up
    (data / "new.txt").write_text("newer data\n")
    with pytest.raises(RestoreError, match="not empty; use --force"):
        run_restore(ctx, "app", "data")
    assert (data / "new.txt").exists()
    assert engine.state(app.id) is ContainerState.RUNNING and ctx.journal.entries() == []
    assert engine.names("put_archive") == []


def test_restore_with_force_replaces_the_contents(engine, ctx, data, backed_up):
    app, before = backed_up
    (data / "new.txt").write_text("newer data\n")
    (data / "a.txt").write_text("changed\n")
    run_restore(ctx, "app", "data", force=True)
    assert tree(data) == before
    assert engine.names("run_helper") == []  # the worker swaps the old contents out: no helper empties them
    assert engine.state(app.id) is ContainerState.RUNNING


def test_a_failed_unpack_still_puts_the_container_back(engine, ctx, data, backed_up):
    app, _ = backed_up
    shutil.rmtree(data)
    data.mkdir()
    engine.fail("worker:extract:go", EngineError("disk full"))  # before the archive was staged
    with pytest.raises(RestoreError, match="disk full"):
        run_restore(ctx, "app", "data")
    assert engine.state(app.id) is ContainerState.RUNNING and ctx.journal.entries() == []


def test_a_stopped_container_stays_stopped(engine, ctx, data, backed_up):
    app, before = backed_up
    engine.set_state(app.id, ContainerState.EXITED)
    shutil.rmtree(data)
    data.mkdir()
    run_restore(ctx, "app", "data")
    assert tree(data) == before
    assert engine.names("stop") == [] and engine.names("start") == []
    assert engine.state(app.id) is ContainerState.EXITED


def test_unknown_volume_and_missing_archive_are_not_found(engine, ctx, data, tmp_path):
    other = tmp_path / "volumes" / "other"
    engine.add_container("app-1", app_labels(), {"/data": data, "/other": other})
    with pytest.raises(NotFound, match="has no volume 'nope'"):
        run_restore(ctx, "app", "nope")
    with pytest.raises(NotFound, match="no archive of app volume other"):
        run_restore(ctx, "app", "other")


def test_colliding_short_names_stay_with_their_mount_whatever_the_engines_order(engine, ctx, tmp_path):
    """Two volumes both called `data`: the `-2` goes by mount destination, so a second
    backup after the engine listed the mounts the other way round names each the same,
    and `restore --volume data-2` puts the archive back where it came from."""
    first, second = tmp_path / "one" / "data", tmp_path / "two" / "data"
    app = engine.add_container("app-1", app_labels(), {"/srv/z": first, "/srv/a": second})
    (first / "z.txt").write_text("from /srv/z\n")
    (second / "a.txt").write_text("from /srv/a\n")

    def backed_up_names() -> dict[str, str]:
        assert run_backup(ctx, ctx.discover().find("app")).ok
        return {a.name.volume_name: sorted(archive_members(a.path)) for a in ctx.store.archives("app")
                if a.name.frequency.value == "daily"}

    assert backed_up_names() == {"data": [".", "a.txt"], "data-2": [".", "z.txt"]}
    c = engine.containers[app.id]
    c.info = replace(c.info, mounts=tuple(reversed(c.info.mounts)))
    for archive in ctx.store.archives("app"):
        ctx.store.delete(archive)
    assert backed_up_names() == {"data": [".", "a.txt"], "data-2": [".", "z.txt"]}

    shutil.rmtree(first)
    first.mkdir()
    outcome = run_restore(ctx, "app", "data-2")
    assert outcome.volume == "data-2" and (first / "z.txt").read_text() == "from /srv/z\n"
    assert not (first / "a.txt").exists()


@pytest.mark.parametrize("name", ["../../../escaped", "../../../../escaped", "a/../../escaped"])
def test_a_backup_name_that_climbs_out_is_refused_before_anything_is_written(engine, ctx, data, tmp_path, name):
    """A container skipped for bad labels, whose backup.name would put its lock file
    outside BACKUP_DIR: restore into it refuses with a clear message and creates nothing."""
    engine.add_container("app-1", app_labels(), {"/data": data})
    assert run_backup(ctx, ctx.discover().find("app")).ok
    archive = ctx.store.latest("app", "data").path
    engine.calls.clear()
    engine.add_container("bad-1", {"backup.enable": "true", "backup.name": name, "backup.strategy": "sideways"},
                         {"/data": tmp_path / "bad" / "data"})
    outside = tmp_path.parent
    before = set(outside.rglob("*escaped*"))

    with pytest.raises(LabelError, match=r"container 'bad-1': label backup.name=.* is invalid"):
        run_restore(ctx, "bad-1", "data", archive=str(archive))

    assert set(outside.rglob("*escaped*")) == before == set()
    assert engine.names("put_archive") == [] and engine.names("stop") == []


def test_names_that_become_paths_are_checked_where_they_do(ctx):
    with pytest.raises(UnsafeName, match="target name '../x' cannot be used in a file name"):
        with ctx.store.target_lock("../x"):
            pass
    for bad in ("../x", "/etc/passwd", "daily/../../x", "a\0b"):
        with pytest.raises(UnsafeName):
            ctx.store.path(bad)
    assert not (ctx.store.root.parent / "x.lock").exists()
    with pytest.raises(UnsafeName, match="destination name"):
        CopyIndex(ctx.store.state_dir, "../../x")


def test_restore_of_a_passphrase_archive_derives_no_key_in_the_sidecar(engine, make_ctx, data, monkeypatch):
    """Checking, then unpacking: two reads of the archive, both by the worker (one scrypt
    derivation there, crypto's cache); the sidecar reads none of it."""
    ctx = make_ctx(BACKUP_AGE_PASSPHRASE="correct horse battery staple 7")
    engine.add_container("app-1", app_labels(), {"/data": data})
    assert run_backup(ctx, ctx.discover().find("app")).ok
    before = tree(data)
    shutil.rmtree(data)
    data.mkdir()
    real, derived = crypto._scrypt, []
    monkeypatch.setattr(crypto, "_scrypt", lambda *args: derived.append(args[2]) or real(*args))
    run_restore(ctx, "app", "data")
    assert tree(data) == before and derived == []


# --- issue 8: checked before anything stops, left stopped when the volume was emptied --------

def _stops(engine) -> list[str]:
    return [c[0] for c in engine.calls if c[0] in ("stop", "start", "run_helper", "put_archive")]


def test_a_non_empty_volume_is_refused_before_anything_is_stopped(engine, ctx, data, backed_up):
    app, _ = backed_up
    (data / "new.txt").write_text("newer data\n")
    with pytest.raises(RestoreError, match="not empty; use --force"):
        run_restore(ctx, "app", "data")
    assert _stops(engine) == [] and engine.state(app.id) is ContainerState.RUNNING
    assert engine.names("run_worker") == []  # refused before the worker starts


@pytest.mark.parametrize("late", [False, True])
def test_an_unsafe_archive_is_refused_and_the_app_runs_again_on_its_old_data(engine, ctx, data, backed_up, late):
    """One pass (issue 19): the refusal comes while the app is stopped, halfway through the
    archive (`late`: after files that were already written into the staging folder); the
    volume keeps its old bytes, no staging folder is left, nothing is journalled."""
    app, before = backed_up
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        for i in range(20 if late else 0):
            body = f"new {i}\n".encode() * 1000
            info = tarfile.TarInfo(f"a.txt" if i == 0 else f"f{i}.txt")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        link = tarfile.TarInfo("d")
        link.type, link.linkname = tarfile.SYMTYPE, "/"
        tar.addfile(link)
    path = ctx.store.root / "daily" / "app_data_2026-01-01_daily.tar"
    path.write_bytes(evil.getvalue())
    write_checksum(path, hashlib.sha256(evil.getvalue()).hexdigest())
    with pytest.raises(UnsafeArchive, match="absolute path"):
        run_restore(ctx, "app", "data", archive=str(path), force=True)
    assert tree(data) == before  # no staging folder left either
    assert engine.state(app.id) is ContainerState.RUNNING and ctx.journal.entries() == []
    assert engine.names("run_helper") == []  # never emptied


def test_the_archive_is_opened_once(engine, ctx, data, backed_up, monkeypatch):
    shutil.rmtree(data)
    data.mkdir()
    latest = ctx.store.latest("app", "data").path
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **kw: (opened.append(p) if str(p) == str(latest) else None,
                                                         real_open(p, *a, **kw))[1])
    monkeypatch.setattr("builtins.open", _refuse_path(latest, open))
    run_restore(ctx, "app", "data")
    assert len(opened) == 1


def _refuse_path(path, real):
    def guarded(file, *args, **kwargs):
        assert str(file) != str(path), "the archive was opened a second time"
        return real(file, *args, **kwargs)
    return guarded


def test_a_failure_after_emptying_leaves_the_container_stopped_and_journalled(engine, ctx, data, backed_up, caplog):
    app, before = backed_up
    (data / "new.txt").write_text("newer data\n")
    engine.fail(EXTRACT, EngineError("disk full"), times=1)
    with pytest.raises(RestoreLeftStopped) as err:
        run_restore(ctx, "app", "data", force=True)
    assert err.value.exit_code == 3 and (err.value.container, err.value.volume) == ("app-1", "data")
    assert "app-1" in str(err.value) and "left stopped" in str(err.value) and "disk full" in str(err.value)
    assert engine.state(app.id) is ContainerState.EXITED
    assert [(e.container_id, e.action) for e in ctx.journal.entries()] == [(app.id, "left-stopped")]
    assert any(r.levelname == "ERROR" and getattr(r, "container", None) == "app-1" for r in caplog.records)

    # A restarted sidecar does not start it ...
    assert run_recovery(ctx) == []
    assert engine.state(app.id) is ContainerState.EXITED and len(ctx.journal.entries()) == 1
    # ... a restore that succeeds does, and forgets the entry.
    engine.calls.clear()
    run_restore(ctx, "app", "data", force=True)
    assert tree(data) == before
    assert engine.state(app.id) is ContainerState.RUNNING and ctx.journal.entries() == []
    assert engine.names("stop") == []


def test_a_failure_after_emptying_a_stopped_container_keeps_it_stopped_without_a_journal(engine, ctx, data,
                                                                                        backed_up):
    app, _ = backed_up
    engine.set_state(app.id, ContainerState.EXITED)
    (data / "new.txt").write_text("newer data\n")
    engine.fail(EXTRACT, EngineError("disk full"))
    with pytest.raises(RestoreLeftStopped):
        run_restore(ctx, "app", "data", force=True)
    assert engine.state(app.id) is ContainerState.EXITED and ctx.journal.entries() == []


def test_the_cli_exit_code_for_a_container_left_stopped(engine, env, data, backed_up, monkeypatch, capsys):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(cli, "Engine", lambda *_a, **_kw: engine)
    monkeypatch.setattr(cli, "_on_termination", lambda handler: None)
    engine.fail(EXTRACT, EngineError("disk full"))
    assert cli.main(["restore", "app", "--volume", "data", "--force"]) == 3
    assert "left stopped" in capsys.readouterr().err


def test_a_container_left_stopped_is_not_backed_up(engine, ctx, data, backed_up):
    app, _ = backed_up
    assert engine.state(app.id) is ContainerState.RUNNING
    (data / "new.txt").write_text("newer data\n")
    engine.fail(EXTRACT, EngineError("disk full"), times=1)
    with pytest.raises(RestoreLeftStopped):
        run_restore(ctx, "app", "data", force=True)
    archives = sorted(p.name for p in ctx.store.root.rglob("*.tar.zst"))
    outcome = run_backup(ctx, ctx.discover().find("app"))
    assert not outcome.ok and "failed restore left the container stopped" in outcome.error
    assert sorted(p.name for p in ctx.store.root.rglob("*.tar.zst")) == archives
