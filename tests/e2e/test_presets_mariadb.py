"""The mysql preset (as `mariadb`) against a real MariaDB from Debian's packages
(tests/images/mariadb), in the slow group: a dump taken under a transfer load restores into
an empty server with the same rows and an unchanged total, passing `mariadb-check`; wrong
credentials are a failed run with the server's words and no archive."""

from __future__ import annotations

import threading
import time

import pytest

from .app_images import ensure_app_image
from .support import wait_for
from .test_presets_postgres import events

pytestmark = pytest.mark.slow

PASSWORD = "maria-test-pw"
ACCOUNTS, BALANCE, MARKERS = 100, 1000, 1000


@pytest.fixture(scope="module")
def mariadb_image(docker_client):
    try:
        return ensure_app_image(docker_client, "mariadb")
    except RuntimeError as exc:
        pytest.fail(str(exc))


def start(lab, image, service, labels=None):
    all_labels = {"com.docker.compose.project": lab.project, "com.docker.compose.service": service}
    if labels is not None:
        all_labels.update({"backup.enable": "true", "backup.preset": "mariadb", "backup.image": "never",
                           "backup.schedule": "0 3 * * *", **labels})
    container = lab.container(image, name=f"{lab.project}-{service}", labels=all_labels, network_mode="none",
                              environment={"MARIADB_ROOT_PASSWORD": PASSWORD})
    wait_for(lambda: sql(container, "SELECT 1", check=False) == "1", timeout=180, interval=0.5,
             what=f"{service} ready")
    return container


def sql(container, query: str, db: str = "", check: bool = True) -> str:
    done = container.exec_run(["mariadb", "-uroot", "-N", "-B", *([db] if db else []), "-e", query],
                              environment={"MYSQL_PWD": PASSWORD})
    if check:
        assert done.exit_code == 0, done.output.decode(errors="replace")
    return done.output.decode(errors="replace").strip() if done.exit_code == 0 else ""


def seed(container) -> None:
    sql(container, "CREATE DATABASE shop")
    sql(container, "CREATE TABLE acct (id INT PRIMARY KEY, bal INT) ENGINE=InnoDB; "
                   "CREATE TABLE marker (id INT PRIMARY KEY, v VARCHAR(40)) ENGINE=InnoDB", db="shop")
    sql(container, f"INSERT INTO acct SELECT seq, {BALANCE} FROM seq_1_to_{ACCOUNTS}; "
                   f"INSERT INTO marker SELECT seq, md5(seq) FROM seq_1_to_{MARKERS}", db="shop")


TRANSFERS = ('end=$(($(date +%s) + 20)); n=0; while [ "$(date +%s)" -lt "$end" ]; do '
             'mariadb -uroot shop -e "START TRANSACTION; SET @a = FLOOR(1 + RAND() * 100); '
             'UPDATE acct SET bal = bal - 1 WHERE id = @a; UPDATE acct SET bal = bal + 1 WHERE id = 1 + MOD(@a, 100); '
             'COMMIT" || exit 1; n=$((n + 1)); done; echo "transfers=$n"')


def test_dump_under_load_restores_the_same_total(lab, docker_client, mariadb_image):
    db = start(lab, mariadb_image, "db", labels={})
    seed(db)
    results: list = []
    load = threading.Thread(target=lambda: results.append(db.exec_run(["sh", "-c", TRANSFERS],
                                                                      environment={"MYSQL_PWD": PASSWORD})))
    since = time.time()
    load.start()
    done = lab.cli("backup", "db", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    load.join(120)
    assert results and results[0].exit_code == 0, results[0].output.decode(errors="replace")[-2000:]
    actions = events(docker_client, db, since)
    assert not {"stop", "pause", "kill", "die", "restart"} & {a.split(":")[0] for a in actions}, actions
    [archive] = lab.archives("db_mysql+dump_*")

    fresh = start(lab, mariadb_image, "fresh")
    restored = lab.cli("restore", fresh.name, "--dump", str(archive), timeout=600)
    assert restored.returncode == 0, restored.stderr[-3000:]
    assert sql(fresh, "SELECT count(*), sum(bal) FROM acct", db="shop").split() == [str(ACCOUNTS),
                                                                                   str(ACCOUNTS * BALANCE)]
    assert sql(fresh, "SELECT count(*) FROM marker", db="shop") == str(MARKERS)
    check = fresh.exec_run(["mariadb-check", "-uroot", "--all-databases"], environment={"MYSQL_PWD": PASSWORD})
    assert check.exit_code == 0 and b"error" not in check.output.lower(), check.output.decode(errors="replace")
    again = lab.cli("restore", fresh.name, "--dump", str(archive), timeout=600)
    assert again.returncode != 0 and "use --force" in again.stdout + again.stderr


def test_wrong_credentials_fail_with_the_servers_words(lab, mariadb_image):
    start(lab, mariadb_image, "wrong", labels={"backup.preset.user": "nobody"})
    done = lab.cli("backup", "wrong", timeout=300)
    assert done.returncode != 0 and "Access denied for user 'nobody'" in done.stdout + done.stderr
    assert lab.archives() == []
    assert PASSWORD not in done.stdout + done.stderr
