"""The sqlite preset against a real writer in WAL mode (tests/images/sqlite-writer): the
online backup API's copy, taken while it writes, restores into an empty volume passing
`PRAGMA integrity_check` with its invariant; the writer is never stopped or paused and a
query loop sees no failure; a path matching nothing is a failed run without an archive."""

from __future__ import annotations

import json
import threading
import time

import pytest

from .app_images import ensure_app_image
from .support import wait_for
from .test_presets_postgres import events


@pytest.fixture(scope="module")
def writer_image(docker_client):
    try:
        return ensure_app_image(docker_client, "sqlite-writer")
    except RuntimeError as exc:
        pytest.fail(str(exc))


def _start(lab, image, service, volume, mode="write", labels=None):
    all_labels = {"com.docker.compose.project": lab.project, "com.docker.compose.service": service}
    if labels is not None:
        all_labels.update({"backup.enable": "true", "backup.preset": "sqlite", "backup.image": "never",
                           "backup.sqlite.paths": "/data/*.db", **labels})
    return lab.container(image, command=[mode], name=f"{lab.project}-{service}", labels=all_labels,
                         network_mode="none", volumes={volume: {"bind": "/data", "mode": "rw"}})


def _check(container) -> tuple[str, int, int]:
    done = container.exec_run(["python3", "/usr/local/bin/writer.py", "check"])
    assert done.exit_code == 0, done.output.decode(errors="replace")
    verdict, rows, counted = done.output.decode().strip().split("|")
    return verdict, int(rows), int(counted)


def _rows(container) -> int:
    done = container.exec_run(["python3", "/usr/local/bin/writer.py", "check"])
    return int(done.output.decode().strip().split("|")[1]) if done.exit_code == 0 else -1


def test_online_backup_while_writing_restores_consistent(lab, docker_client, writer_image, sidecar_image):
    app = _start(lab, writer_image, "app", lab.volume("data"), labels={})
    wait_for(lambda: _rows(app) > 2000, timeout=60, what="rows written")
    failures: list[str] = []
    ok = [0]
    stop = threading.Event()

    def query_loop() -> None:
        while not stop.is_set():
            done = app.exec_run(["python3", "/usr/local/bin/writer.py", "check"])
            if done.exit_code == 0:
                ok[0] += 1
            else:
                failures.append(done.output.decode(errors="replace"))
            time.sleep(0.1)

    since = time.time()
    loop = threading.Thread(target=query_loop, daemon=True)
    loop.start()
    before = _check(app)[1]
    done = lab.cli("backup", "app", BACKUP_WORKER_IMAGE=sidecar_image, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    wait_for(lambda: ok[0] >= 3, timeout=60, what="queries")
    stop.set()
    loop.join(30)
    assert failures == []
    assert _check(app)[1] > before  # it kept writing
    actions = events(docker_client, app, since)
    assert not {"stop", "pause", "kill", "die", "restart"} & {a.split(":")[0] for a in actions}, actions
    [archive] = lab.archives("app_sqlite+dump_*")

    fresh = _start(lab, writer_image, "fresh", lab.volume("empty"), mode="idle")
    restored = lab.cli("restore", fresh.name, "--dump", str(archive), timeout=600)
    assert restored.returncode == 0, restored.stderr[-3000:]
    assert lab.state(fresh) == "running"
    verdict, rows, counted = _check(fresh)
    assert verdict == "ok" and rows == counted and rows >= before
    owner = fresh.exec_run(["stat", "-c", "%u:%g", "/data/app.db"]).output.decode().strip()
    assert owner == "1000:1000"
    again = lab.cli("restore", fresh.name, "--dump", str(archive), timeout=600)
    assert again.returncode != 0 and "use --force" in again.stdout + again.stderr
    assert lab.state(fresh) == "running"


def test_a_path_matching_nothing_fails_without_archive(lab, writer_image, sidecar_image):
    _start(lab, writer_image, "app", lab.volume("data"), labels={"backup.sqlite.paths": "/data/none.db"})
    done = lab.cli("backup", "app", BACKUP_WORKER_IMAGE=sidecar_image, timeout=600)
    assert done.returncode != 0 and "no file matches /data/none.db" in done.stdout + done.stderr
    assert lab.archives() == []


@pytest.mark.slow  # the restic variant of the sqlite preset; the default keeps the archive one and test_restic's S3 round trip
def test_restic_format_backs_up_while_writing_and_restores_by_snapshot_name(lab, writer_image, worker_image,
                                                                             tmp_path):
    """backup.format=restic: the online backup's copies go into one snapshot (a tar through
    `restic backup --stdin`), and `restore --dump NAME` (the name `list` shows) puts them back
    through the same checked extractor into another container's empty volume."""
    secret = tmp_path / "restic-password"
    secret.write_text("sqlite-restic-Pw\n")
    env = {"BACKUP_WORKER_IMAGE": worker_image, "BACKUP_FORMAT": "restic", "RESTIC_PASSWORD_FILE": str(secret)}
    app = _start(lab, writer_image, "app", lab.volume("data"), labels={})
    wait_for(lambda: _rows(app) > 500, timeout=60, what="rows written")
    before = _check(app)[1]
    done = lab.cli("backup", "app", timeout=600, **env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert lab.archives("app_sqlite+dump_*") == []  # a snapshot, no archive
    listed = lab.cli("list", "app", "--json", **env)
    [row] = [r for r in json.loads(listed.stdout) if r.get("kind") == "restic-snapshot"]
    assert row["volume"] == "sqlite+dump"

    fresh = _start(lab, writer_image, "fresh", lab.volume("empty"), mode="idle")
    restored = lab.cli("restore", fresh.name, "--dump", row["name"], timeout=600, **env)
    assert restored.returncode == 0, restored.stderr[-3000:]
    assert row["name"] in restored.stdout and lab.state(fresh) == "running"
    verdict, rows, counted = _check(fresh)
    assert verdict == "ok" and rows == counted and rows >= before
    again = lab.cli("restore", fresh.name, "--dump", row["name"], timeout=600, **env)
    assert again.returncode != 0 and "use --force" in again.stdout + again.stderr
    assert not list((lab.backup_dir / ".sidecar" / "restic-dumps").glob("*"))
