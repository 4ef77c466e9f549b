"""Consistency strategies on the real engine: stop, pause and hot, and the pre/post commands."""

from __future__ import annotations

import pytest

from .support import StateWatcher, extract_archive, stderr_records

# Enough data that reading it takes a visible while, so the watcher sees the window.
DATA = "dd if=/dev/urandom of=blob bs=1M count=64 2>/dev/null; echo marker > marker.txt"


@pytest.mark.parametrize(
    "strategy, during",
    [("stop", "exited"), ("pause", "paused"), ("hot", None)],
)
def test_strategy_interrupts_only_as_asked(lab, docker_client, strategy, during):
    volume = lab.volume("data")
    lab.populate(volume, DATA)
    app = lab.workload("app", {"backup.enable": "true", "backup.strategy": strategy,
                               "backup.compression": "gzip"}, {volume: "/data"})
    with StateWatcher(docker_client, app.id) as watcher:
        done = lab.cli("backup", "app")
    assert done.returncode == 0, done.stderr
    if during is None:
        assert watcher.states == ["running"]
    else:
        assert during in watcher.states, watcher.states
        assert watcher.states[0] == "running" and watcher.states[-1] == "running", watcher.states
    assert lab.state(app) == "running"

    # The downtime window covered the read: "volume read" is logged between the
    # interruption and the restart, and the archive really holds the data.
    messages = [r["message"] for r in stderr_records(done.stderr)]
    if during is not None:
        assert messages.index("container " + ("stopped" if strategy == "stop" else "paused")) \
            < messages.index("volume read") < messages.index("container running again")
    [archive] = lab.archives()
    assert archive.name.endswith(".tar.gz")


def test_container_stopped_by_owner_is_left_stopped(lab):
    volume = lab.volume("data")
    lab.populate(volume, "echo kept > kept.txt")
    app = lab.workload("app", {"backup.enable": "true", "backup.strategy": "stop"}, {volume: "/data"}, start=False)
    done = lab.cli("backup", "app")
    assert done.returncode == 0, done.stderr
    assert lab.state(app) == "created"
    [archive] = lab.archives()
    out = lab.tmp / "out"
    extract_archive(archive, out)
    assert (out / "kept.txt").read_text() == "kept\n"


def test_failing_pre_command_aborts_without_stopping(lab, docker_client):
    volume = lab.volume("data")
    lab.populate(volume, "echo x > x")
    app = lab.workload("app", {"backup.enable": "true", "backup.strategy": "stop",
                               "backup.exec.pre": "echo dumping failed >&2; exit 3"}, {volume: "/data"})
    with StateWatcher(docker_client, app.id) as watcher:
        done = lab.cli("backup", "app")
    assert done.returncode == 1
    assert "pre failed" in done.stderr and "exited with 3" in done.stderr and "dumping failed" in done.stderr
    failure = [r for r in stderr_records(done.stderr) if r["message"] == "backup failed"]
    assert failure and failure[0]["phase"] == "pre" and failure[0]["target"] == "app"
    assert watcher.states == ["running"]
    assert lab.archives() == []
    assert not list(lab.backup_dir.rglob("*.partial"))


def test_pre_and_post_commands_run_inside_the_container(lab):
    volume = lab.volume("data")
    app = lab.workload("app", {
        "backup.enable": "true", "backup.strategy": "stop",
        "backup.exec.pre": "echo consistent-dump > /data/dump.sql",
        "backup.exec.post": "rm /data/dump.sql && touch /data/post-ran",
    }, {volume: "/data"})
    done = lab.cli("backup", "app")
    assert done.returncode == 0, done.stderr
    [archive] = lab.archives()
    out = lab.tmp / "out"
    extract_archive(archive, out)
    assert (out / "dump.sql").read_text() == "consistent-dump\n"
    assert not (out / "post-ran").exists()
    # The post-command ran after the container was started again.
    assert set(lab.manifest(volume)) == {".", "./post-ran"}
    assert lab.state(app) == "running"


def test_exclude_patterns_and_selected_volumes(lab):
    data = lab.volume("data")
    other = lab.volume("other")
    lab.populate(data, "mkdir -p cache/deep keep; echo c > cache/deep/c; echo k > keep/k; echo l > x.log")
    lab.populate(other, "echo o > o")
    lab.workload("app", {"backup.enable": "true", "backup.strategy": "hot",
                         "backup.volumes": "data", "backup.exclude": "cache,*.log"},
                 {data: "/data", other: "/other"})
    done = lab.cli("backup", "app")
    assert done.returncode == 0, done.stderr
    [archive] = lab.archives()
    assert archive.name.startswith("app_data_")
    out = lab.tmp / "out"
    extract_archive(archive, out)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["keep", "keep/k"]
