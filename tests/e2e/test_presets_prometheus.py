"""The prometheus preset against a real Prometheus from Debian's packages
(tests/images/prometheus), in the slow group: a TSDB snapshot taken while it scrapes itself
restores into a fresh server that answers the same series; with the admin API off the run
fails naming the flag, without an archive."""

from __future__ import annotations

import json
import time

import pytest

from .app_images import ensure_app_image
from .support import wait_for
from .test_presets_postgres import events

pytestmark = pytest.mark.slow

QUERY = "count(count by (__name__) ({job=\"self\"}))"


@pytest.fixture(scope="module")
def prometheus_image(docker_client):
    try:
        return ensure_app_image(docker_client, "prometheus")
    except RuntimeError as exc:
        pytest.fail(str(exc))


def start(lab, image, service, labels=None, admin=True):
    all_labels = {"com.docker.compose.project": lab.project, "com.docker.compose.service": service}
    if labels is not None:
        all_labels.update({"backup.enable": "true", "backup.preset": "prometheus", "backup.image": "never",
                           **labels})
    extra = ["--web.enable-admin-api"] if admin else []
    container = lab.container(image, command=extra, name=f"{lab.project}-{service}", labels=all_labels,
                              network_mode="none", volumes={lab.volume(service): {"bind": "/prometheus",
                                                                                  "mode": "rw"}})
    wait_for(lambda: "success" in api(container, "/api/v1/status/flags"), timeout=90, what=f"{service} ready")
    return container


def api(container, path: str, post: bool = False) -> str:
    code = ("import sys, urllib.request\n"
            "try:\n"
            f"    r = urllib.request.urlopen(urllib.request.Request('http://localhost:9090' + sys.argv[1], "
            f"method={'POST' if post else 'GET'!r}))\n"
            "    print(r.read().decode())\n"
            "except Exception as e:\n"
            "    print('error', e)\n")
    return container.exec_run(["python3", "-c", code, path]).output.decode(errors="replace")


def series(container, at: float) -> int:
    answer = json.loads(api(container, f"/api/v1/query?query={QUERY.replace(' ', '%20')}&time={at:.0f}"
                            .replace('"', "%22").replace("{", "%7B").replace("}", "%7D")))
    result = answer["data"]["result"]
    return int(result[0]["value"][1]) if result else 0


def test_snapshot_restores_the_series(lab, docker_client, prometheus_image):
    prom = start(lab, prometheus_image, "prom", labels={})
    wait_for(lambda: series(prom, time.time()) > 50, timeout=90, what="series scraped")
    # The head block is in the snapshot too; query a moment the snapshot surely holds.
    at = time.time() - 1
    before = series(prom, at)
    since = time.time()
    done = lab.cli("backup", "prom", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    actions = events(docker_client, prom, since)
    assert not {"stop", "pause", "kill", "die", "restart"} & {a.split(":")[0] for a in actions}, actions
    assert "snapshots" not in prom.exec_run(["ls", "/prometheus/snapshots"]).output.decode() or \
        prom.exec_run(["sh", "-c", "ls /prometheus/snapshots | wc -l"]).output.strip() == b"0"
    [archive] = lab.archives("prom_prometheus+dump_*")

    fresh = start(lab, prometheus_image, "fresh")
    restored = lab.cli("restore", fresh.name, "--dump", str(archive), "--force", timeout=300)
    assert restored.returncode == 0, restored.stderr[-3000:]
    wait_for(lambda: "success" in api(fresh, "/api/v1/status/flags"), timeout=90, what="fresh ready again")
    assert series(fresh, at) == before


def test_admin_api_off_names_the_flag(lab, prometheus_image):
    start(lab, prometheus_image, "noadmin", labels={}, admin=False)
    done = lab.cli("backup", "noadmin", timeout=300)
    assert done.returncode != 0 and "--web.enable-admin-api" in done.stdout + done.stderr, done.stderr[-2000:]
    assert lab.archives() == []
