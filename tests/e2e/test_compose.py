"""The sidecar as a good citizen of a Compose stack, driven by Debian's docker-compose 1.29."""

from __future__ import annotations

import signal

from .support import log_records, wait_for


def test_recreating_a_service_is_no_name_clash(lab, stack):
    # `up -d` after a label change renames the old container `<id12>_<name>` while it
    # creates the new one: for a moment both claim the backup name "app".
    labels = {"backup.enable": "true", "backup.strategy": "hot", "backup.schedule": "@daily"}
    stack.write({"app": stack.service(labels, {"data": "/data"})}, volumes=("data",))
    stack.run("up", "-d")
    daemon, log = lab.start_cli("run", log_name="daemon.log", LOG_LEVEL="DEBUG")
    wait_for(lambda: any(r["message"] == "target found" and r.get("target") == "app" for r in log_records(log)),
             timeout=30, what="the daemon to find the stack's service")

    for schedule in ("@weekly", "@monthly"):
        labels["backup.schedule"] = schedule
        stack.write({"app": stack.service(labels, {"data": "/data"})}, volumes=("data",))
        stack.run("up", "-d")
        wait_for(lambda: any(r["message"] in ("target found", "target changed") and r.get("schedule") == schedule
                             for r in log_records(log)), timeout=30, what=f"the recreated service ({schedule})")
    def followed() -> int:
        return sum(r["message"] in ("target found", "target changed") for r in log_records(log))

    seen = followed()
    assert "Recreating" in stack.run("up", "-d", "--force-recreate").stderr
    wait_for(lambda: followed() > seen, timeout=30, what="the forced recreate to be followed")

    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    records = log_records(log)
    errors = [r for r in records if r["level"] == "ERROR"]
    assert not errors, errors
    assert not [r for r in records if "already used" in r["message"]]
    # The daemon backs up the new container, not the one Compose removed.
    last = [r for r in records if r["message"] in ("target found", "target changed")][-1]
    assert last["container"] == f"{lab.project}_app_1"
    assert any(r.get("replaced", "").endswith(f"_{lab.project}_app_1") for r in records)  # the moment was seen
