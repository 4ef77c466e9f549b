"""`stop` of a replicated Swarm service is a scale to 0 and back, against the fake engine:
the exact replica count restored on every path, the journal for a killed sidecar, someone
else's scale wins, the other replicas on this node are not stopped one by one."""

from __future__ import annotations

import time

import pytest

from sidecar.actions import interrupt
from sidecar.actions.backup import BackupResult, run_backup
from sidecar.actions.plan import run_plan
from sidecar.actions.recover import run_recovery
from sidecar.actions.restore import run_restore
from sidecar.core.errors import EngineError, RestoreLeftStopped
from sidecar.core.model import ContainerState
from sidecar.store.storage import JournalEntry

from .conftest import archive_members, tree

STOP = {"backup.enable": "true", "backup.strategy": "stop", "backup.name": "db", "backup.stop-timeout": "1"}


@pytest.fixture
def service(engine, data):
    engine.manager = True
    svc = engine.add_service("shop_db", replicas=2, constraints=("node.hostname==n1",))
    engine.add_task(svc, 1, STOP, {"/data": data}, stack="shop")
    engine.add_task(svc, 2, STOP, {"/data": data}, stack="shop")  # its second replica, same node and volume
    return svc


def _target(ctx):
    found = ctx.discover()
    target = found.find("db")
    assert target is not None, found.skipped
    return target


def test_stop_scales_to_zero_and_back_to_the_exact_count(engine, ctx, service):
    seen = {}

    def during(service_id, replicas):
        if replicas == 0:
            (entry,) = ctx.journal.entries()
            seen["entry"] = entry
    engine.on_scale = during
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.result is BackupResult.SUCCESS, outcome.error
    assert [c[2] for c in engine.names("scale_service")] == [0, 2]
    assert engine.services[service.id].replicas == 2
    assert engine.names("stop") == [] and engine.names("start") == []  # no container stopped one by one
    assert seen["entry"].action == "scaled" and seen["entry"].replicas == 2 and seen["entry"].container_id == service.id
    assert ctx.journal.entries() == []
    (archive,) = [p for p in (ctx.store.root / "daily").glob("db_data_*.tar.zst")]
    assert archive_members(archive)["a.txt"] == b"alpha\n"


def test_only_slot_one_is_a_target_and_a_worker_cannot_stop_it(engine, ctx, service):
    found = ctx.discover()
    assert [t.container.name for t in found.targets] == ["shop_db.1.task1"]
    engine.manager = False
    skipped = ctx.discover().skipped
    assert skipped and "manager" in skipped[0].reason


def test_someone_elses_scale_during_the_backup_wins(engine, ctx, service):
    def meanwhile(service_id, replicas):
        if replicas == 0:
            engine.someone_scales(service_id, 0)  # `docker service scale shop_db=0` by its owner
    engine.on_scale = meanwhile
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.result is BackupResult.ABORTED and "scaled it to 0" in outcome.error
    assert [c[2] for c in engine.names("scale_service")] == [0]  # never scaled back against them
    assert engine.services[service.id].replicas == 0 and ctx.journal.entries() == []


def test_someone_elses_update_of_anything_else_keeps_our_scale_back(engine, ctx, service):
    def meanwhile(service_id, replicas):
        if replicas == 0:
            engine.someone_updates(service_id)  # e.g. a new image deployed during the backup
    engine.on_scale = meanwhile
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.result is BackupResult.SUCCESS, outcome.error
    assert engine.services[service.id].replicas == 2 and ctx.journal.entries() == []


def test_recovery_scales_back_after_someone_elses_update_of_anything_else(engine, ctx, service):
    ours = engine.scale_service(service.id, 0)
    engine.someone_updates(service.id)
    ctx.journal.add(JournalEntry(service.id, service.name, "scaled", "db", time.time(), replicas=2,
                                 version=ours.version))
    assert run_recovery(ctx) == ["shop_db"] and engine.services[service.id].replicas == 2


def test_tasks_that_do_not_end_fail_the_run_and_the_count_comes_back(engine, ctx, service, monkeypatch):
    monkeypatch.setattr(interrupt, "SCALE_GRACE", 0.5)
    engine.tasks_linger = 10_000  # Swarm never reports the tasks shut down
    target = _target(ctx)
    outcome = run_backup(ctx, target)
    assert outcome.result is BackupResult.FAILURE and "not shut down" in outcome.error
    assert engine.services[service.id].replicas == 2 and ctx.journal.entries() == []


def test_a_failed_scale_back_stays_in_the_journal_for_the_next_start(engine, ctx, service):
    def fail_back(service_id, replicas):
        if replicas == 0:
            engine.fail("scale_service", EngineError("manager unreachable"))
    engine.on_scale = fail_back
    outcome = run_backup(ctx, _target(ctx))
    assert outcome.result is BackupResult.FAILURE
    (entry,) = ctx.journal.entries()
    assert entry.action == "scaled" and entry.replicas == 2
    engine._faults.clear()
    run_recovery(ctx)  # the next start
    assert engine.services[service.id].replicas == 2 and ctx.journal.entries() == []


def test_recovery_scales_back_what_a_killed_sidecar_left_at_zero(engine, ctx, service):
    at_zero = engine.scale_service(service.id, 0)
    ctx.journal.add(JournalEntry(service.id, service.name, "scaled", "db", time.time(), replicas=2,
                                 version=at_zero.version))
    assert run_recovery(ctx) == ["shop_db"]
    assert engine.services[service.id].replicas == 2 and ctx.journal.entries() == []
    for c in engine._task_containers(service.id):
        assert c.info.state is ContainerState.RUNNING


def test_recovery_scales_back_when_the_sidecar_died_before_it_learnt_the_version(engine, ctx, service):
    engine.scale_service(service.id, 0)
    ctx.journal.add(JournalEntry(service.id, service.name, "scaled", "db", time.time(), replicas=2, version=None))
    run_recovery(ctx)
    assert engine.services[service.id].replicas == 2


@pytest.mark.parametrize("theirs", [0, 5])
def test_recovery_leaves_a_service_someone_else_changed(engine, ctx, service, theirs):
    ours = engine.scale_service(service.id, 0)
    engine.someone_scales(service.id, theirs)
    ctx.journal.add(JournalEntry(service.id, service.name, "scaled", "db", time.time(), replicas=2,
                                 version=ours.version))
    assert run_recovery(ctx) == []
    assert engine.services[service.id].replicas == theirs and ctx.journal.entries() == []


def test_recovery_forgets_a_removed_service(engine, ctx, service):
    ctx.journal.add(JournalEntry("gone" * 6, "shop_gone", "scaled", "gone", time.time(), replicas=1, version=3))
    assert run_recovery(ctx) == [] and ctx.journal.entries() == []


def test_plan_warns_about_an_unpinned_replicated_stop(engine, ctx, data):
    engine.manager = True
    svc = engine.add_service("shop_cache", replicas=1)
    engine.add_task(svc, 1, {**STOP, "backup.name": "cache"}, {"/data": data}, stack="shop")
    rows, _ = run_plan(ctx)
    (row,) = [r for r in rows if r.target == "cache"]
    assert any("placement constraint" in w for w in row.warnings)


# --- restore ------------------------------------------------------------------------------

def _backed_up(ctx, data):
    assert run_backup(ctx, _target(ctx)).ok
    before = tree(data)
    (data / "new.txt").write_text("newer data\n")
    return before


@pytest.mark.usefixtures("restore_worker")
def test_restore_scales_to_zero_and_back(engine, ctx, service, data):
    before = _backed_up(ctx, data)
    engine.calls.clear()
    run_restore(ctx, "db", "data", force=True)
    assert tree(data) == before
    assert [c[2] for c in engine.names("scale_service")] == [0, 2] and engine.names("stop") == []
    assert engine.services[service.id].replicas == 2 and ctx.journal.entries() == []


@pytest.mark.usefixtures("restore_worker")
def test_a_failed_restore_leaves_the_service_at_zero_until_a_restore_succeeds(engine, ctx, service, data):
    before = _backed_up(ctx, data)
    engine.fail("worker:extract:swap", EngineError("disk full"), times=1)  # once the swap began
    with pytest.raises(RestoreLeftStopped):
        run_restore(ctx, "db", "data", force=True)
    assert engine.services[service.id].replicas == 0
    (entry,) = ctx.journal.entries()
    assert (entry.container_id, entry.action, entry.replicas) == (service.id, "left-stopped", 2)
    assert run_recovery(ctx) == [] and engine.services[service.id].replicas == 0  # never on an emptied volume
    run_restore(ctx, "db", "data", force=True)
    assert tree(data) == before
    assert engine.services[service.id].replicas == 2 and ctx.journal.entries() == []


@pytest.mark.usefixtures("restore_worker")
def test_a_service_left_at_zero_that_someone_scaled_is_forgotten(engine, ctx, service, data):
    _backed_up(ctx, data)
    engine.fail("worker:extract:swap", EngineError("disk full"), times=1)
    with pytest.raises(RestoreLeftStopped):
        run_restore(ctx, "db", "data", force=True)
    engine.someone_scales(service.id, 1)
    run_recovery(ctx)
    assert ctx.journal.entries() == [] and engine.services[service.id].replicas == 1


def test_plan_lists_services_whose_labels_workers_cannot_read(engine, ctx):
    engine.unseen = ["Swarm service 'shop_web' has its backup labels in deploy.labels ..."]
    _, skipped = run_plan(ctx)
    assert [(s.container, s.reason) for s in skipped] == [("(Swarm service)", engine.unseen[0])]
