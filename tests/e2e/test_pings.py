"""Heartbeat pings through the real CLI on the real engine: a sidecar-wide healthchecks.io
URL and a container's Uptime Kuma push URL (label backup.ping), both on a local receiver
that records every request. A failing pre-command: start, then fail with the run's log
tail (healthchecks) and down (Kuma); then a success: start and success, up."""

from __future__ import annotations

from tests.fakes.ping_receiver import PingReceiver

CHECK = "0b6e4f7a-58c4-4d55-9c1e-3f2a1b0c9d8e"
PUSH = "pushTok3nAbcdef"


def test_failure_then_success_pings_healthchecks_and_kuma(lab):
    receiver = PingReceiver()
    try:
        volume = lab.volume("data")
        lab.workload("app", {"backup.enable": "true", "backup.strategy": "stop",
                             "backup.exec.pre": "test -f /data/ready || { echo database not ready >&2; exit 4; }",
                             "backup.ping": f"kuma+{receiver.url(f'/api/push/{PUSH}')}?status=up&msg=OK&ping="},
                     {volume: "/data"})
        env = {"BACKUP_PING_URL": "hc+" + receiver.url(f"/ping/{CHECK}"), "LOG_LEVEL": "INFO"}
        failed = lab.cli("backup", "app", **env)
        assert failed.returncode == 1
        start, fail, down = receiver.requests  # sent before the command exits
        assert (start.method, start.path) == ("GET", f"/ping/{CHECK}/start")
        assert (fail.method, fail.path, fail.query["rid"]) == ("POST", f"/ping/{CHECK}/fail", start.query["rid"])
        assert fail.text.startswith("backup of app failed in phase pre: ") and "exited with 4" in fail.text
        assert "the run's last " in fail.text and "database not ready" in fail.text.split("log lines:\n", 1)[1]
        assert (down.path, down.query["status"]) == (f"/api/push/{PUSH}", "down")
        assert "exited with 4" in down.query["msg"]
        said = failed.stdout + failed.stderr
        assert CHECK not in said and PUSH not in said

        lab.populate(volume, "touch ready")
        ok = lab.cli("backup", "app", **env)
        assert ok.returncode == 0, ok.stderr
        start, success, up = receiver.requests[3:]
        assert start.path == f"/ping/{CHECK}/start" and start.query["rid"] != fail.query["rid"]
        assert (success.method, success.path, success.query["rid"]) == ("POST", f"/ping/{CHECK}", start.query["rid"])
        assert success.text.startswith("backup of app succeeded: 1 archives, ")
        assert up.query["status"] == "up" and up.query["msg"].startswith("backup of app succeeded")
        assert int(up.query["ping"]) > 0  # the run's milliseconds
        assert lab.archives("app_data_*")
    finally:
        receiver.close()
