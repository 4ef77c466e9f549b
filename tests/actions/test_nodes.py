"""Per-node folders on the destinations (issue 13, item 3), against the fake engine: when
BACKUP_NODE_PREFIX is on (or auto on a Swarm node) every destination keeps this node's
copies under `{node}/`, a node's sync and rotation see only its own folder, `list --node`
and `restore --node` read another node's folder, and single hosts keep their layout."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace

import pytest

from sidecar.actions import context
from sidecar.actions.backup import run_backup
from sidecar.actions.listing import run_list_remote
from sidecar.actions.restore import run_restore
from sidecar.actions.sync import run_remote_prune, run_sync
from sidecar.destinations import NodeFolder, bare
from sidecar.core.errors import ConfigError, EngineError, NotFound
from sidecar.core.model import NodeIdentity
from sidecar.core.retention import parse_keep
from tests.fakes.destination import FakeDestination

from .conftest import app_labels, tree


def daily(day: int, backup_name: str = "app", volume: str = "data") -> str:
    return f"daily/{backup_name}_{volume}_2026-11-{day:02d}_daily.tar.zst"


@pytest.fixture
def s3(monkeypatch) -> FakeDestination:
    destination = FakeDestination("s3")
    monkeypatch.setattr(context, "from_settings", lambda _settings: (destination,))
    return destination


def swarm(engine, name: str = "n1", manager: bool = False) -> None:
    engine.identity = replace(engine.identity, name=name, node_id=f"id-{name}", swarm_active=True, manager=manager)


# --- when the folder is used -----------------------------------------------------------

def test_a_single_host_keeps_its_layout(make_ctx, s3):
    ctx = make_ctx()
    assert ctx.prefix_node is None and ctx.destinations == (s3,)


def test_auto_uses_the_node_folder_on_an_active_swarm_node(make_ctx, engine, s3):
    swarm(engine, "n1")
    ctx = make_ctx()
    [destination] = ctx.destinations
    assert ctx.prefix_node == "n1" and isinstance(destination, NodeFolder) and bare(destination) is s3
    assert destination.name == "s3" and destination.describe() == "fake://s3/n1/"
    assert destination.key(daily(1)) == f"fake/n1/{daily(1)}"


def test_false_keeps_the_layout_on_a_swarm_node_without_asking_the_engine(make_ctx, engine, s3):
    swarm(engine)
    ctx = make_ctx(BACKUP_NODE_PREFIX="false")
    assert ctx.prefix_node is None and ctx.destinations == (s3,)
    assert engine.names("node") == []


def test_true_on_a_single_host_and_the_name_setting_overrides_the_engine(make_ctx, engine, s3):
    assert make_ctx(BACKUP_NODE_PREFIX="true").prefix_node == "fake-node"
    ctx = make_ctx(BACKUP_NODE_PREFIX="yes", BACKUP_NODE_NAME="edge-7")
    assert ctx.prefix_node == "edge-7" and ctx.node().name == "edge-7"
    assert ctx.destinations[0].describe() == "fake://s3/edge-7/"


def test_an_engine_name_that_cannot_name_a_node_says_what_to_set(make_ctx, engine, s3):
    engine.identity = replace(engine.identity, name="bad/name")
    with pytest.raises(ConfigError, match="'bad/name'.*accepted: 1-253 letters"):
        make_ctx(BACKUP_NODE_PREFIX="true")


def test_an_engine_that_refuses_its_info_never_makes_auto_guess(make_ctx, engine, s3, caplog):
    """Behind a socket proxy that refuses GET /info: auto cannot tell a swarm node from a
    single host, and says what to do; a name setting is enough with the prefix on."""
    engine.fail("node", EngineError("info: 403 Client Error: Forbidden"))
    with pytest.raises(EngineError, match="BACKUP_NODE_PREFIX=auto cannot tell whether this is a Swarm node .*"
                                          "403.*allow GET /info"):
        make_ctx()
    assert make_ctx(BACKUP_NODE_PREFIX="false").prefix_node is None
    ctx = make_ctx(BACKUP_NODE_PREFIX="true", BACKUP_NODE_NAME="n1")
    assert ctx.prefix_node == "n1" and ctx.node() == NodeIdentity("n1")
    assert "the engine's info is unreadable" in caplog.text


# --- sync and rotation see only the node's own folder ------------------------------------

def test_sync_copies_into_the_node_folder_and_leaves_other_nodes_alone(make_ctx, engine, s3, data):
    swarm(engine, "n1")
    s3.put("n2/" + daily(1), b"the other node's")
    s3.put("n10/" + daily(1), b"a node whose name starts alike")
    s3.put(daily(1), b"a single host's, before the swarm")
    engine.add_container("app-1", app_labels(strategy="hot"), {"/data": data})
    ctx = make_ctx()
    outcome = run_backup(ctx, ctx.discover().find("app"))  # its sync copies the archives off site
    assert outcome.ok and outcome.offsite_error is None
    archives = {a.name.relpath: a.path for a in ctx.store.archives()}  # daily, and promoted copies
    for relpath, path in archives.items():
        assert s3.objects["n1/" + relpath].sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert {"n2/" + daily(1), "n10/" + daily(1), daily(1)} < s3.objects.keys()
    assert len(s3.objects) == 3 + len(archives)
    rows = run_list_remote(ctx)
    assert sorted(r.path for r in rows) == sorted(archives) and all(r.verified for r in rows)
    assert {r.key for r in rows} == {f"fake/n1/{relpath}" for relpath in archives}

    [again] = run_sync(ctx).results  # the copy index describes the node's folder
    assert again.ok and again.uploaded == again.copied == again.verified == ()
    state = ctx.store.state_dir
    assert (state / "remote-s3@n1.json").exists() and not (state / "remote.json").exists()


def test_turning_the_prefix_off_starts_from_the_roots_own_index(make_ctx, engine, s3, data):
    """The same backup volume, first as swarm node n1, then as a single host: the root's
    index is its own, so the archives go up to the root too (nothing is taken as copied
    because the node's folder holds it)."""
    engine.add_container("app-1", app_labels(strategy="hot"), {"/data": data})
    swarm(engine, "n1")
    ctx = make_ctx()
    assert run_backup(ctx, ctx.discover().find("app")).ok
    in_folder = set(s3.objects)
    single = make_ctx(BACKUP_NODE_PREFIX="false")
    [result] = run_sync(single).results
    assert result.ok and len(result.uploaded) + len(result.copied) == len(in_folder)
    assert set(s3.objects) == in_folder | {rel.removeprefix("n1/") for rel in in_folder}
    assert all(r.verified for r in run_list_remote(single)) and all(r.verified for r in run_list_remote(ctx))


def test_remote_rotation_never_touches_another_nodes_folder(make_ctx, engine, s3):
    keep_none = parse_keep("daily=1,weekly=0,monthly=0,hourly=0")
    for node in ("n1", "n2"):
        for day in (1, 2, 3):
            s3.put(f"{node}/{daily(day)}", f"{node} {day}".encode())
    swarm(engine, "n1")
    [pruned] = run_remote_prune(make_ctx(), lambda _name: keep_none)
    assert sorted(pruned.deleted) == [daily(1), daily(2)]
    assert sorted(s3.objects) == ["n1/" + daily(3)] + [f"n2/{daily(d)}" for d in (1, 2, 3)]

    # A single host sharing the bucket: its rotation of the root leaves the nodes' folders alone.
    single = make_ctx(BACKUP_NODE_PREFIX="false")
    s3.put(daily(1), b"a single host's")
    s3.put(daily(2), b"a single host's, newer")
    [pruned] = run_remote_prune(single, lambda _name: keep_none)
    assert pruned.deleted == (daily(1),) and "n1/" + daily(3) in s3.objects and len(s3.objects) == 5


# --- list and restore from another node's folder ----------------------------------------

def test_list_remote_of_another_node(make_ctx, engine, s3):
    swarm(engine, "n1")
    s3.put("n2/" + daily(1), b"n2's")
    s3.put("n1/" + daily(1), b"n1's")
    ctx = make_ctx()
    rows = run_list_remote(ctx, node="n2")
    assert [(r.path, r.key, r.node, r.verified) for r in rows] == [(daily(1), f"fake/n2/{daily(1)}", "n2", False)]
    assert [r.node for r in run_list_remote(ctx)] == ["n1"]
    assert run_list_remote(ctx, node="n3") == []


@pytest.mark.usefixtures("restore_worker")
def test_restore_from_another_nodes_folder(make_ctx, engine, s3, data, tmp_path):
    """Node n2 restores what n1 backed up: its own same-named archive stays as it is, the
    download goes to the state folder and is gone after the restore."""
    engine.add_container("app-1", app_labels(strategy="hot"), {"/data": data})
    original = tree(data)
    swarm(engine, "n1")
    n1 = make_ctx()
    assert run_backup(n1, n1.discover().find("app")).ok
    relpaths = [r.removeprefix("n1/") for r in s3.objects]

    n2_dir = tmp_path / "n2-backups"
    swarm(engine, "n2")
    n2 = make_ctx(BACKUP_DIR=str(n2_dir))
    for relpath in relpaths:  # n2 has archives of the same names (an app of the same name)
        n2.store.path(relpath).parent.mkdir(parents=True, exist_ok=True)
        n2.store.path(relpath).write_bytes(b"n2's own archive of the same name")
    for path in data.iterdir():
        path.unlink() if not path.is_dir() else None
    (data / "a.txt").write_text("changed on n2\n")

    outcome = run_restore(n2, "app", "data", force=True, node="n1")

    assert tree(data) == original
    assert str(outcome.archive.relative_to(n2.store.state_dir / "nodes" / "n1")) in relpaths
    assert not outcome.archive.exists() and not list((n2.store.state_dir / "nodes").rglob("*.tar.zst*"))
    assert all(n2.store.path(r).read_bytes() == b"n2's own archive of the same name" for r in relpaths)
    with pytest.raises(NotFound, match="node n3's folder"):
        run_restore(n2, "app", "data", force=True, node="n3")


# --- the CLI with a mounted disk as the destination ---------------------------------------

@pytest.mark.usefixtures("restore_worker")
def test_cli_backup_list_and_restore_node_with_the_local_destination(run, engine, data, tmp_path, monkeypatch,
                                                                      capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    monkeypatch.setenv("BACKUP_DESTINATIONS", str(disk))
    monkeypatch.setenv("BACKUP_NODE_PREFIX", "true")
    monkeypatch.setenv("BACKUP_NODE_NAME", "n1")
    engine.add_container("app-1", app_labels(strategy="hot"), {"/data": data})
    original = tree(data)
    assert run("backup", "app") == 0
    [copy] = disk.glob("n1/daily/*.tar.zst")
    assert (disk / "n1" / "daily" / (copy.name + ".sha256")).exists() and not (disk / "daily").exists()
    capsys.readouterr()
    assert run("list", "--remote", "--json") == 0
    rows = {row["path"]: row for row in json.loads(capsys.readouterr().out)}  # daily, and promoted copies
    row = rows[f"daily/{copy.name}"]
    assert (row["node"], row["verified"], row["key"]) == ("n1", True, str(copy))

    monkeypatch.setenv("BACKUP_NODE_NAME", "n2")
    monkeypatch.setenv("BACKUP_WORKER_IMAGE", "backup-sidecar:fake")  # restores are written by a worker
    monkeypatch.setenv("BACKUP_DIR", str(tmp_path / "n2-backups"))
    assert run("list", "--node", "n1", "--json") == 0
    seen = {row["path"]: row for row in json.loads(capsys.readouterr().out)}
    assert seen.keys() == rows.keys() and {(r["node"], r["verified"]) for r in seen.values()} == {("n1", False)}
    assert run("list", "--json") == 0 and json.loads(capsys.readouterr().out) == []  # n2's own: nothing yet

    (data / "a.txt").write_text("changed on n2\n")
    assert run("restore", "app", "--volume", "data", "--node", "n1", "--force") == 0
    assert tree(data) == original
    assert not [p for p in (tmp_path / "n2-backups").rglob("*.tar.zst*")]
    assert run("sync") == 0 and sorted(os.listdir(disk)) == ["n1"]  # nothing of n1's became n2's

    with pytest.raises(SystemExit) as usage:  # argparse's usage error
        run("restore", "app", "--volume", "data", "--node", "../etc", "--force")
    assert usage.value.code == 2
    assert "'../etc' cannot name a node: accepted: 1-253 letters" in capsys.readouterr().err
