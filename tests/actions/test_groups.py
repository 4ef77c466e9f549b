"""Shared volumes, backup groups and the sidecar's own container, against the fake engine."""

from __future__ import annotations

import threading

from sidecar.actions.backup import BackupResult, run_backup, run_group
from sidecar.actions.daemon import Daemon
from sidecar.core.groups import groups_of
from sidecar.core.model import ContainerState

from .conftest import app_labels


def _order(engine, method: str) -> list[str]:
    names = {cid: c.info.name for cid, c in engine.containers.items()}
    return [names[c[1]] for c in engine.calls if c[0] == method]


def test_other_writers_of_a_volume_are_stopped_too_and_put_back(engine, ctx, data, tmp_path):
    app = engine.add_container("app-1", app_labels(), {"/data": data})
    writer = engine.add_container("writer-1", {}, {"/srv": data})  # the same volume, read-write
    reader = engine.add_container("reader-1", {}, {"/ro": data})
    engine.containers[reader.id].info = engine.containers[reader.id].info.__class__(
        **{**engine.containers[reader.id].info.__dict__,
           "mounts": tuple(m.__class__(m.kind, m.source, m.destination, True) for m in reader.mounts)})
    outcome = run_backup(ctx, ctx.discover().find("app"))
    assert outcome.ok
    assert _order(engine, "stop") == ["writer-1", "app-1"] and _order(engine, "start") == ["app-1", "writer-1"]
    assert all(engine.state(c.id) is ContainerState.RUNNING for c in (app, writer, reader))
    assert ctx.journal.entries() == []


def test_backup_shared_ignore_leaves_them_running_and_says_so(engine, ctx, data, caplog):
    engine.add_container("app-1", app_labels(shared="ignore"), {"/data": data})
    engine.add_container("writer-1", {}, {"/srv": data})
    assert run_backup(ctx, ctx.discover().find("app")).ok
    assert _order(engine, "stop") == ["app-1"]
    [line] = [r for r in caplog.records if r.message.startswith("other containers write to the target's volumes")]
    assert line.containers == ["writer-1"]


def test_the_sidecar_is_never_quiesced_nor_a_stop_target(engine, ctx, data):
    engine.add_container("app-1", app_labels(), {"/data": data})
    engine.own = engine.add_container("sidecar-1", {**app_labels(), "backup.name": "sidecar"}, {"/data": data})
    discovery = ctx.discover()
    [skipped] = discovery.skipped
    assert "is the sidecar itself: it never stops, pauses or restarts itself" in skipped.reason
    assert run_backup(ctx, discovery.find("app")).ok
    assert _order(engine, "stop") == ["app-1"]


def _compose(service: str, **labels: str) -> dict[str, str]:
    return {**app_labels(group="shop"), "backup.name": service, "com.docker.compose.project": "p",
            "com.docker.compose.service": service, **labels}


def test_a_group_is_stopped_in_reverse_dependency_order_and_started_in_order(engine, ctx, tmp_path):
    engine.add_container("p_web_1", _compose("web", **{"com.docker.compose.depends_on": "api:service_started:false"}),
                         {"/w": tmp_path / "w"})
    engine.add_container("p_db_1", _compose("db"), {"/d": tmp_path / "d"})
    engine.add_container("p_api_1", _compose("api", **{"com.docker.compose.depends_on": "db:service_healthy:false"}),
                         {"/a": tmp_path / "a"})
    (tmp_path / "d" / "rows").write_text("1\n")
    group = groups_of(ctx.discover().targets)["shop"]
    assert [t.backup_name for t in group.members] == ["db", "api", "web"]
    outcomes = run_group(ctx, group)
    assert [o.result for o in outcomes] == [BackupResult.SUCCESS] * 3
    assert _order(engine, "stop") == ["p_web_1", "p_api_1", "p_db_1"]
    assert _order(engine, "start") == ["p_db_1", "p_api_1", "p_web_1"]
    # Every archive was read while all three were stopped.
    first_start = next(i for i, c in enumerate(engine.calls) if c[0] == "start")
    last_stop = max(i for i, c in enumerate(engine.calls) if c[0] == "stop")
    reads = [i for i, c in enumerate(engine.calls) if c[0] in ("read_path", "run_worker")]
    assert reads and all(last_stop < i < first_start for i in reads)
    assert all(o.downtime > 0 and len(o.archives) == 1 for o in outcomes)


def test_backup_group_order_orders_members_without_depends_on(engine, ctx, tmp_path):
    engine.add_container("p_a_1", _compose("a", **{"backup.group.order": "2"}), {"/a": tmp_path / "a"})
    engine.add_container("p_b_1", _compose("b", **{"backup.group.order": "1"}), {"/b": tmp_path / "b"})
    outcomes = run_group(ctx, groups_of(ctx.discover().targets)["shop"])
    assert [o.target for o in outcomes] == ["b", "a"]
    assert _order(engine, "stop") == ["p_a_1", "p_b_1"]


def test_group_members_that_disagree_are_skipped_naming_both(engine, ctx, tmp_path):
    engine.add_container("p_a_1", _compose("a", **{"backup.schedule": "@daily"}), {"/a": tmp_path / "a"})
    engine.add_container("p_b_1", _compose("b", **{"backup.schedule": "@weekly"}), {"/b": tmp_path / "b"})
    discovery = ctx.discover()
    assert discovery.targets == ()
    reasons = [s.reason for s in discovery.skipped]
    assert len(reasons) == 2 and all("'@daily' on 'p_a_1' but '@weekly' on 'p_b_1'" in r for r in reasons)


def test_backup_of_one_member_backs_up_the_group(engine, run, capsys, tmp_path):
    engine.add_container("p_a_1", _compose("a"), {"/a": tmp_path / "a"})
    engine.add_container("p_b_1", _compose("b"), {"/b": tmp_path / "b"})
    assert run("backup", "a") == 0
    out = capsys.readouterr().out
    assert "a: wrote" in out and "b: wrote" in out


def test_someone_stopping_a_shared_writer_aborts_the_run_and_it_stays_stopped(engine, ctx, data):
    app = engine.add_container("app-1", app_labels(), {"/data": data})
    writer = engine.add_container("writer-1", {}, {"/srv": data})
    engine.on_stop = lambda cid: engine.someone_stops(cid) if cid == writer.id else None
    outcome = run_backup(ctx, ctx.discover().find("app"))
    assert outcome.result is BackupResult.ABORTED and "'writer-1'" in outcome.error
    assert engine.state(writer.id) is ContainerState.EXITED and engine.state(app.id) is ContainerState.RUNNING
    assert ctx.journal.entries() == []


def test_someone_stopping_a_group_member_aborts_the_group(engine, ctx, tmp_path):
    engine.add_container("p_a_1", _compose("a"), {"/a": tmp_path / "a"})
    b = engine.add_container("p_b_1", _compose("b"), {"/b": tmp_path / "b"})
    engine.on_stop = lambda cid: engine.someone_stops(cid) if cid == b.id else None
    outcomes = run_group(ctx, groups_of(ctx.discover().targets)["shop"])
    assert [o.result for o in outcomes] == [BackupResult.ABORTED] * 2
    assert all(o.archives == () for o in outcomes) and list(ctx.store.root.rglob("*.tar.zst")) == []
    assert engine.state(b.id) is ContainerState.EXITED
    assert engine.state(engine.containers[next(iter(engine.containers))].info.id) is ContainerState.RUNNING


def test_the_daemon_runs_a_due_group_once_for_all_its_members(engine, ctx, tmp_path):
    engine.add_container("p_a_1", _compose("a"), {"/a": tmp_path / "a"})
    engine.add_container("p_b_1", _compose("b"), {"/b": tmp_path / "b"})
    outcomes, done = [], threading.Event()

    def seen(outcome):
        outcomes.append(outcome)
        if len(outcomes) >= 2:
            done.set()
    daemon = Daemon(ctx, on_outcome=seen)
    daemon.refresh_all()
    past = ctx.now().replace(year=2000)
    daemon._next = {name: past for name in daemon._next}  # both due now
    loop = threading.Thread(target=daemon._schedule_loop, daemon=True)
    loop.start()
    assert done.wait(30)
    daemon.request_stop()
    loop.join(10)
    daemon._pool.shutdown(wait=True)
    assert sorted(o.target for o in outcomes) == ["a", "b"] and all(o.ok for o in outcomes)
    # One group run: both stopped before either started.
    assert [c[0] for c in engine.calls if c[0] in ("stop", "start")] == ["stop", "stop", "start", "start"]
