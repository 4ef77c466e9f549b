"""The redis preset against a real Redis from Debian's packages (tests/images/redis), in the
slow group: an RDB taken by BGSAVE while keys are written restores into an empty server
with every key written before the backup; a wrong password is a failed run with the
server's words and no archive."""

from __future__ import annotations

import threading
import time

import pytest

from .app_images import ensure_app_image
from .support import wait_for
from .test_presets_postgres import events

pytestmark = pytest.mark.slow

PASSWORD = "redis-test-pw"


@pytest.fixture(scope="module")
def redis_image(docker_client):
    try:
        return ensure_app_image(docker_client, "redis")
    except RuntimeError as exc:
        pytest.fail(str(exc))


def start(lab, image, service, labels=None, environment=None):
    all_labels = {"com.docker.compose.project": lab.project, "com.docker.compose.service": service}
    if labels is not None:
        all_labels.update({"backup.enable": "true", "backup.preset": "redis", "backup.image": "never", **labels})
    container = lab.container(image, name=f"{lab.project}-{service}", labels=all_labels, network_mode="none",
                              environment={"REDIS_PASSWORD": PASSWORD, **(environment or {})}, volumes={lab.volume(service): {
                                  "bind": "/data", "mode": "rw"}})
    wait_for(lambda: cli(container, "PING", check=False) == "PONG", timeout=60, what=f"{service} ready")
    return container


def cli(container, *args: str, check: bool = True) -> str:
    done = container.exec_run(["redis-cli", "--raw", *args], environment={"REDISCLI_AUTH": PASSWORD})
    if check:
        assert done.exit_code == 0, done.output.decode(errors="replace")
    return done.output.decode(errors="replace").strip()


def test_bgsave_under_writes_restores_the_keys(lab, docker_client, redis_image):
    # A bound of the sidecar's own: a dump that never ends fails with its words, not the test's timeout.
    db = start(lab, redis_image, "cache", labels={"backup.exec.timeout": "120"})
    assert cli(db, "EVAL", "for i=1,5000 do redis.call('SET', 'seed:'..i, i) end return 1", "0") == "1"
    stop = threading.Event()

    def writes() -> None:
        n = 0
        while not stop.is_set():
            cli(db, "SET", f"live:{n}", str(n))
            n += 1

    writer = threading.Thread(target=writes, daemon=True)
    since = time.time()
    writer.start()
    try:
        done = lab.cli("backup", "cache", timeout=300)
    finally:
        stop.set()
        writer.join(30)
    assert done.returncode == 0, done.stderr[-3000:]
    actions = events(docker_client, db, since)
    assert not {"stop", "pause", "kill", "die", "restart"} & {a.split(":")[0] for a in actions}, actions
    [archive] = lab.archives("cache_redis+dump_*")

    fresh = start(lab, redis_image, "fresh")
    restored = lab.cli("restore", fresh.name, "--dump", str(archive), timeout=300)
    assert restored.returncode == 0, restored.stderr[-3000:]
    wait_for(lambda: cli(fresh, "PING", check=False) == "PONG", timeout=60, what="fresh ready again")
    assert cli(fresh, "GET", "seed:4321") == "4321"
    assert len(cli(fresh, "KEYS", "seed:*").split()) == 5000
    again = lab.cli("restore", fresh.name, "--dump", str(archive), timeout=300)
    assert again.returncode != 0 and "use --force" in again.stdout + again.stderr


def test_a_bgsave_that_fails_fails_the_run_with_the_servers_status(lab, redis_image):
    """Redis leaves LASTSAVE as it was when a save fails (here: its folder made read-only, so
    the child cannot write its temporary RDB): the run fails at once with the server's status,
    not after waiting out backup.exec.timeout."""
    db = start(lab, redis_image, "ro", labels={"backup.exec.timeout": "120"})
    assert cli(db, "SET", "k", "v") == "OK"
    assert db.exec_run(["chmod", "0555", "/data"]).exit_code == 0
    started = time.monotonic()
    done = lab.cli("backup", "ro", timeout=300)
    assert done.returncode != 0
    assert "BGSAVE failed: rdb_last_bgsave_status:err" in done.stdout + done.stderr, done.stderr[-3000:]
    assert time.monotonic() - started < 60, "the failed save was waited out"
    assert lab.archives() == []


def test_wrong_password_fails_with_the_servers_words(lab, redis_image):
    # The server takes REDIS_PASSWORD; the preset prefers REDISCLI_AUTH, set wrong here.
    start(lab, redis_image, "wrong", labels={}, environment={"REDISCLI_AUTH": "not-the-password"})
    done = lab.cli("backup", "wrong", timeout=300)
    assert done.returncode != 0 and "WRONGPASS" in done.stdout + done.stderr, done.stderr[-2000:]
    assert lab.archives() == []
    assert "not-the-password" not in done.stdout + done.stderr
