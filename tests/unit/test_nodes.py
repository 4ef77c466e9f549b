"""A node's name and folder (issue 13, item 3): which names are accepted (a folder on every
destination and a label value), the settings BACKUP_NODE_NAME / BACKUP_NODE_PREFIX, the
engine's view of this node and of the swarm (Engine.node, Engine.swarm_nodes over a fake
API), and where NodeFolder puts copies on each kind of destination."""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil

import botocore.stub
import pytest

from sidecar.core.config import LocalConfig, RcloneConfig, S3Config
from sidecar.destinations import Destination, NodeFolder, bare, create, on_node
from sidecar.destinations.rclone import RcloneDestination
from sidecar.docker.engine import Engine
from sidecar.core.errors import SettingsError, UnsafeName
from sidecar.core.model import NodeIdentity, SwarmNode
from sidecar.core.naming import safe_node_name
from sidecar.core.settings import load_settings

from .helpers import daily_archive

NAME = "app_data_2026-12-02_daily.tar.zst"


# --- names ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["n1", "node-1.example.com", "worker_2", "A", "a" * 253, "..hidden", "x.."])
def test_accepted_node_names(name):
    assert safe_node_name(name, "--node") == name


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../etc", "a b", "n1:x", "nœud", "a\0b", "a" * 254, "n1/"])
def test_refused_node_names_say_where_from_the_value_and_what_is_accepted(name):
    with pytest.raises(UnsafeName) as refused:
        safe_node_name(name, "--node")
    assert str(refused.value).startswith(f"--node {name!r} cannot name a node: accepted: 1-253 letters, digits, "
                                         "'.', '_' and '-', not '.' or '..'")


# --- settings ----------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [(None, None), ("auto", None), ("AUTO", None), ("true", True),
                                           ("yes", True), ("1", True), ("false", False), ("no", False)])
def test_node_prefix_setting(raw, expected):
    env = {} if raw is None else {"BACKUP_NODE_PREFIX": raw}
    assert load_settings(env).node_prefix is expected


def test_node_settings_errors_name_the_setting_the_value_and_what_is_accepted():
    with pytest.raises(SettingsError) as bad:
        load_settings({"BACKUP_NODE_PREFIX": "sometimes", "BACKUP_NODE_NAME": "a/b"})
    assert bad.value.problems == [
        "BACKUP_NODE_PREFIX='sometimes' is invalid: accepted: auto, true/1/yes or false/0/no",
        "BACKUP_NODE_NAME='a/b' is invalid: accepted: 1-253 letters, digits, '.', '_' and '-', not '.' or '..'"]
    assert load_settings({"BACKUP_NODE_NAME": "edge-7"}).node_name == "edge-7"
    assert load_settings({}).node_name is None


# --- the engine's view --------------------------------------------------------------------

class FakeApi:
    """docker-py's low-level API: info() and nodes() as a Swarm manager answers them."""

    def __init__(self, info: dict, nodes: list[dict] | None = None):
        self._info, self._nodes, self.calls = info, nodes or [], []

    def info(self) -> dict:
        self.calls.append("info")
        return self._info

    def nodes(self) -> list[dict]:
        self.calls.append("nodes")
        return self._nodes


def engine_with(api: FakeApi) -> Engine:
    engine = Engine.__new__(Engine)  # no connection: only the API object is used
    engine.api = api
    engine._manager_cache = None
    return engine


MANAGER_INFO = {"Name": "n1", "Swarm": {"NodeID": "abc", "LocalNodeState": "active", "ControlAvailable": True}}
NODES = [
    {"ID": "abc", "Description": {"Hostname": "n1"}, "Status": {"State": "ready"}, "Spec": {"Availability": "active"},
     "ManagerStatus": {"Leader": True}},
    {"ID": "def", "Description": {"Hostname": "n2"}, "Status": {"State": "down"}, "Spec": {"Availability": "drain"}},
]


def test_engine_node_on_a_single_host_and_on_a_swarm_manager():
    single = {"Name": "vm", "Swarm": {"NodeID": "", "LocalNodeState": "inactive", "ControlAvailable": False}}
    assert engine_with(FakeApi(single)).node() == NodeIdentity("vm", None, False, False)
    assert engine_with(FakeApi(MANAGER_INFO)).node() == NodeIdentity("n1", "abc", True, True)
    assert engine_with(FakeApi(MANAGER_INFO)).node("edge-7").name == "edge-7"  # BACKUP_NODE_NAME


def test_an_engine_name_that_cannot_name_a_node_says_to_set_the_setting():
    with pytest.raises(UnsafeName, match=r"the engine's name \(docker info: Name\) 'my host' cannot name this node: "
                                         r"accepted: .* set BACKUP_NODE_NAME"):
        engine_with(FakeApi({"Name": "my host"})).node()
    with pytest.raises(UnsafeName, match="BACKUP_NODE_NAME '../x'"):
        engine_with(FakeApi(MANAGER_INFO)).node("../x")


def test_swarm_nodes_typed_and_empty_on_a_node_that_is_no_manager():
    assert engine_with(FakeApi(MANAGER_INFO, NODES)).swarm_nodes() == (
        SwarmNode("abc", "n1", "ready", "active", True), SwarmNode("def", "n2", "down", "drain", False))
    worker = FakeApi({"Name": "n2", "Swarm": {"NodeID": "def", "LocalNodeState": "active",
                                              "ControlAvailable": False}}, NODES)
    assert engine_with(worker).swarm_nodes() == () and worker.calls == ["info"]


# --- the folder on each kind of destination ---------------------------------------------

@pytest.fixture
def archive(tmp_path):
    return daily_archive(tmp_path, NAME, 3000)


def round_trip(destination: Destination, archive, tmp_path) -> None:
    """Upload, promote, list, head, download and delete through the node's folder; the
    relpaths seen are the single-host ones."""
    path, digest = archive
    assert destination.upload(path, f"daily/{NAME}", digest).relpath == f"daily/{NAME}"
    weekly = f"weekly/{NAME.replace('_daily', '_weekly')}"
    assert destination.copy(f"daily/{NAME}", weekly).relpath == weekly
    assert sorted(o.relpath for o in destination.list()) == [f"daily/{NAME}", weekly]
    assert [o.relpath for o in destination.list("weekly/")] == [weekly]
    assert destination.head(f"daily/{NAME}").sha256 == digest and destination.head("daily/nope") is None
    out = tmp_path / "restored" / NAME
    assert destination.download(f"daily/{NAME}", out).sha256 == digest and out.read_bytes() == path.read_bytes()
    destination.delete([weekly])
    assert [o.relpath for o in destination.list()] == [f"daily/{NAME}"]


def test_local_destination_in_the_node_folder(tmp_path, archive):
    disk = tmp_path / "disk"
    disk.mkdir()
    local = create("local", LocalConfig(str(disk)))
    other = disk / "n10" / "daily" / NAME  # a node whose name starts alike: not in n1's folder
    other.parent.mkdir(parents=True)
    other.write_bytes(b"x")
    (other.parent / (NAME + ".sha256")).write_text(f"{hashlib.sha256(b'x').hexdigest()}  {NAME}\n")

    n1 = on_node(local, "n1")
    assert isinstance(n1, Destination) and n1.name == "local" and bare(n1) is local
    round_trip(n1, archive, tmp_path)
    assert (disk / "n1" / "daily" / NAME).read_bytes() == archive[0].read_bytes()
    assert (disk / "n1" / "daily" / (NAME + ".sha256")).exists() and not (disk / "daily").exists()
    assert n1.key(f"daily/{NAME}") == str(disk / "n1" / "daily" / NAME) and n1.describe() == f"{disk}/n1/"
    assert [o.key for o in on_node(n1, "n10").list()] == [str(other)]  # another node's view, not nested


def test_s3_keys_and_listing_in_the_node_folder():
    s3 = create("s3", S3Config(bucket="backups", prefix="fleet", region="us-east-1", access_key_id="k",
                               secret_access_key="secret"))
    n1 = NodeFolder(s3, "n1")
    assert n1.key(f"daily/{NAME}") == f"fleet/n1/daily/{NAME}"
    assert n1.describe() == "s3://backups/fleet/n1/" and n1.describe(f"daily/{NAME}") == f"s3://backups/fleet/n1/daily/{NAME}"
    when = datetime.datetime(2026, 12, 2, tzinfo=datetime.timezone.utc)
    with botocore.stub.Stubber(s3.client) as stub:
        stub.add_response("list_objects_v2", {"Contents": [{"Key": f"fleet/n1/daily/{NAME}", "Size": 3,
                                                            "LastModified": when}], "IsTruncated": False},
                          {"Bucket": "backups", "Prefix": "fleet/n1/daily/", "MaxKeys": 1000})
        stub.add_response("head_object", {"ContentLength": 3, "LastModified": when, "Metadata": {"sha256": "a" * 64}},
                          {"Bucket": "backups", "Key": f"fleet/n1/daily/{NAME}"})
        [listed] = n1.list("daily/")
        assert (listed.relpath, listed.key) == (f"daily/{NAME}", f"fleet/n1/daily/{NAME}")
        assert n1.head(f"daily/{NAME}").relpath == f"daily/{NAME}"
        stub.assert_no_pending_responses()


@pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone is not installed")
def test_rclone_remote_in_the_node_folder(tmp_path, archive):
    """A real rclone; the remote "box" is an alias of a folder, defined by variables."""
    root = tmp_path / "remote"
    env = (("RCLONE_CONFIG_BOX_TYPE", "alias"), ("RCLONE_CONFIG_BOX_REMOTE", str(root)),
           ("RCLONE_CONFIG", str(tmp_path / "none.conf")))
    rclone = create("rclone", RcloneConfig("box", "fleet", env=env))
    assert isinstance(rclone, RcloneDestination)
    n1 = on_node(rclone, "n1")
    assert n1.key(f"daily/{NAME}") == f"box:fleet/n1/daily/{NAME}" and n1.describe() == "box:fleet/n1/"
    round_trip(n1, archive, tmp_path)
    assert (root / "fleet" / "n1" / "daily" / NAME).read_bytes() == archive[0].read_bytes()
    assert os.listdir(root / "fleet") == ["n1"]
