"""run_restore against the fake engine: refuse a volume with data without --force, put
the container back, the bytes restored."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest

from sidecar import crypto
from sidecar.actions.backup import run_backup
from sidecar.actions.restore import RestoreOutcome, run_restore
from sidecar.destinations import CopyIndex
from sidecar.errors import EngineError, LabelError, NotFound, RestoreError, UnsafeName
from sidecar.model import ContainerState

from .conftest import app_labels, archive_members, tree


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
    assert len(engine.names("run_helper")) == 1
    assert engine.state(app.id) is ContainerState.RUNNING


def test_a_failed_unpack_still_puts_the_container_back(engine, ctx, data, backed_up):
    app, _ = backed_up
    shutil.rmtree(data)
    data.mkdir()
    engine.fail("put_archive", EngineError("disk full"))
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


def test_restore_of_a_passphrase_archive_derives_the_key_once(engine, make_ctx, data, monkeypatch):
    """Checking, then unpacking: two reads of the archive, one scrypt derivation (256 MiB)."""
    ctx = make_ctx(BACKUP_AGE_PASSPHRASE="correct horse battery staple 7")
    engine.add_container("app-1", app_labels(), {"/data": data})
    assert run_backup(ctx, ctx.discover().find("app")).ok
    before = tree(data)
    shutil.rmtree(data)
    data.mkdir()
    real, derived = crypto._scrypt, []
    monkeypatch.setattr(crypto, "_scrypt", lambda *args: derived.append(args[2]) or real(*args))
    run_restore(ctx, "app", "data")
    assert tree(data) == before and derived == [18]
