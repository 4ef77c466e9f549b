"""The daemon on the real engine: schedules fire on their own, containers started later are
picked up from the event stream, and a badly labelled container spoils nothing else."""

from __future__ import annotations

import signal

from .support import extract_archive, log_records, wait_for

EVERY_2S = "* * * * * */2"


def test_schedule_discovery_and_bad_labels(lab):
    good_vol = lab.volume("good")
    lab.populate(good_vol, "echo good > g.txt")
    good = lab.workload("good", {"backup.enable": "true", "backup.strategy": "hot",
                                 "backup.schedule": EVERY_2S}, {good_vol: "/data"})
    bad_vol = lab.volume("bad")
    lab.workload("bad", {"backup.enable": "true", "backup.strategy": "freeze",
                         "backup.schedule": EVERY_2S}, {bad_vol: "/data"})

    daemon, log = lab.start_cli("run", log_name="daemon.log")

    # The seconds-field schedule fires on its own; names carry the time part in hourly/.
    first = wait_for(lambda: lab.archives("good_good_*"), timeout=30, what="a scheduled archive of 'good'")
    assert first[0].parent.name == "hourly"
    assert "T" in first[0].name.split("_")[2]
    wait_for(lambda: len(lab.archives("good_good_*")) >= 2, timeout=30, what="a second scheduled archive")

    # The bad container: one clear error naming container, label, value and what is accepted.
    errors = [r for r in log_records(log) if r["level"] == "ERROR" and "skipped" in r["message"]]
    assert len(errors) == 1, errors
    message = errors[0]["message"]
    assert f"{lab.project}-bad" in message and "backup.strategy='freeze'" in message
    assert "stop, pause, hot" in message
    assert not lab.archives("bad_*")

    # A container started after the sidecar is found through the event stream and backed up.
    late_vol = lab.volume("late")
    lab.populate(late_vol, "echo late > l.txt")
    lab.workload("late", {"backup.enable": "1", "backup.strategy": "pause",
                          "backup.schedule": EVERY_2S}, {late_vol: "/data"})
    [late] = wait_for(lambda: lab.archives("late_late_*")[:1], timeout=30, what="the late container's archive")
    out = lab.tmp / "late"
    extract_archive(late, out)
    assert (out / "l.txt").read_text() == "late\n"
    assert any(r["message"] == "target found" and r.get("target") == "late" for r in log_records(log))

    # Removing a target is noticed too.
    good.remove(force=True)
    wait_for(lambda: any(r["message"] == "target removed" and r.get("target") == "good"
                         for r in log_records(log)), timeout=30, what="the removal to be noticed")

    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    assert not list(lab.backup_dir.rglob("*.partial"))
    assert (lab.backup_dir / ".sidecar" / "heartbeat").exists()


def test_changed_labels_on_a_recreated_container_are_followed(lab):
    vol = lab.volume("data")
    lab.populate(vol, "echo v > v")
    first = lab.workload("app", {"backup.enable": "true", "backup.strategy": "hot",
                                 "backup.schedule": "@monthly"}, {vol: "/data"})
    daemon, log = lab.start_cli("run", log_name="daemon.log")
    wait_for(lambda: any(r["message"] == "target found" and r.get("target") == "app" for r in log_records(log)),
             timeout=30, what="the first container to be found")
    assert not lab.archives()

    # `docker compose up` after a label change: the container is recreated with new labels.
    first.remove(force=True)
    lab.workload("app", {"backup.enable": "true", "backup.strategy": "hot", "backup.schedule": EVERY_2S,
                         "backup.compression": "none"}, {vol: "/data"})
    archives = wait_for(lambda: lab.archives("app_data_*"), timeout=30, what="the new schedule to fire")
    assert archives[0].name.endswith("_hourly.tar")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0


def test_healthcheck_follows_the_daemon(lab):
    daemon, _log = lab.start_cli("run", log_name="daemon.log")
    wait_for(lambda: lab.cli("healthcheck").returncode == 0, timeout=30, what="a healthy daemon")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    assert lab.cli("healthcheck", "--max-age", "0").returncode == 1


def test_a_run_due_while_the_previous_runs_is_skipped_not_queued(lab):
    vol = lab.volume("data")
    lab.populate(vol, "dd if=/dev/urandom of=blob bs=1M count=100 2>/dev/null")
    lab.workload("slow", {"backup.enable": "true", "backup.strategy": "hot", "backup.compression": "gzip",
                          "backup.schedule": "* * * * * *"}, {vol: "/data"})
    daemon, log = lab.start_cli("run", log_name="daemon.log", BACKUP_PROGRESS_INTERVAL="0.5")
    wait_for(lambda: lab.archives("slow_*"), timeout=90, what="the first slow backup")
    records = log_records(log)
    skipped = [r for r in records if r["message"].startswith("backup skipped") and r.get("target") == "slow"]
    assert skipped and skipped[0]["level"] == "WARNING"
    # Progress is logged while a long backup runs, with bytes so far and the rate.
    progress = [r for r in records if r["message"] == "backup in progress"]
    assert progress and progress[0]["bytes"] > 0 and progress[0]["bytes_per_second"] > 0
    started = [r for r in records if r["message"] == "backup started"]
    finished = [r for r in records if r["message"] in ("backup finished", "backup failed")]
    assert len(started) - len(finished) <= 1  # never two at once
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(60) == 0
