"""The postgres preset against a real PostgreSQL 15 (Debian's packages, tests/images/postgres):
a dump taken under a pgbench write load restores into an empty server with the same rows and
a consistent state, while a query loop sees no failure and the server is never stopped or
paused; a failed dump (wrong role, no tool, past its timeout) is a failed run with the tool's
words and no archive; a large dump streams with a flat sidecar memory."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import threading
import time

import pytest

from sidecar.tarball.archive import write_checksum

from .app_images import ensure_app_image
from .support import REPO, wait_for

PASSWORD = "s3cret-test-pw"
SCALE = 2  # pgbench: 200,000 accounts
MARKERS = 1000
# Runs the CLI as a child and prints its peak RSS (KiB) last: getrusage of this wrapper's
# children is the CLI's alone.
RSS_WRAPPER = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
               "print('MAXRSS=%d' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
               "sys.exit(code)")


@pytest.fixture(scope="module")
def postgres_image(docker_client):
    try:
        return ensure_app_image(docker_client, "postgres")
    except RuntimeError as exc:
        pytest.fail(str(exc))


def start_postgres(lab, image: str, service: str, labels: dict[str, str] | None = None):
    all_labels = {"com.docker.compose.project": lab.project, "com.docker.compose.service": service}
    if labels is not None:
        all_labels.update({"backup.enable": "true", "backup.preset": "postgres", "backup.image": "never",
                           "backup.schedule": "0 3 * * *", **labels})
    container = lab.container(image, name=f"{lab.project}-{service}", labels=all_labels, network_mode="none",
                              environment={"POSTGRES_PASSWORD": PASSWORD})
    wait_for(lambda: container.exec_run(["pg_isready", "-q", "-h", "/var/run/postgresql"]).exit_code == 0,
             timeout=120, interval=0.3, what=f"{service} ready")
    return container


def psql(container, sql: str, db: str = "postgres") -> str:
    done = container.exec_run(["psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", db, "-c", sql],
                              environment={"PGPASSWORD": PASSWORD})
    assert done.exit_code == 0, done.output.decode(errors="replace")
    return done.output.decode().strip()


def run(container, *argv: str):
    return container.exec_run(list(argv), environment={"PGPASSWORD": PASSWORD, "PGUSER": "postgres"})


def seed(container) -> None:
    psql(container, "CREATE DATABASE bench")
    assert run(container, "pgbench", "-q", "-i", "-s", str(SCALE), "bench").exit_code == 0
    psql(container, f"CREATE TABLE marker (id int PRIMARY KEY, v text); INSERT INTO marker SELECT i, md5(i::text) "
                    f"FROM generate_series(1, {MARKERS}) i", db="bench")


def invariant(container) -> tuple[str, ...]:
    """The bench database's consistency: pgbench keeps these four sums equal."""
    row = psql(container, "SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(bbalance) FROM "
                          "pgbench_branches), (SELECT sum(tbalance) FROM pgbench_tellers), (SELECT coalesce(sum(delta), "
                          "0) FROM pgbench_history)", db="bench")
    return tuple(row.split("|"))


def events(client, container, since: float) -> list[str]:
    seen = client.events(since=int(since) - 1, until=int(time.time()) + 1, decode=True,
                         filters={"type": "container", "container": container.id})
    return [event.get("Action") or event.get("status", "") for event in seen]


class QueryLoop(threading.Thread):
    """Queries through the app's client until stopped; counts failures."""

    def __init__(self, container):
        super().__init__(daemon=True)
        self.container, self.ok, self.failed, self.stop = container, 0, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            done = run(self.container, "psql", "-XAtq", "-d", "bench", "-c", "SELECT count(*) FROM marker")
            if done.exit_code == 0 and done.output.strip() == str(MARKERS).encode():
                self.ok += 1
            else:
                self.failed.append(done.output.decode(errors="replace"))
            time.sleep(0.05)


def test_dump_under_load_restores_consistent_rows_without_stopping(lab, docker_client, postgres_image):
    db = start_postgres(lab, postgres_image, "db", labels={})
    seed(db)
    load = threading.Thread(target=lambda: results.append(run(db, "pgbench", "-n", "-c", "2", "-T", "25", "bench")))
    results: list = []
    loop = QueryLoop(db)
    since = time.time()
    load.start()
    loop.start()
    wait_for(lambda: psql(db, "SELECT count(*) FROM pgbench_history", db="bench") not in ("", "0"), timeout=60,
             what="pgbench writing")
    done = lab.cli("backup", "db", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    wait_for(lambda: loop.ok >= 5, timeout=60, what="queries during the backup")
    loop.stop.set()
    load.join(120)
    loop.join(30)
    assert loop.failed == []
    assert results and results[0].exit_code == 0, results[0].output.decode(errors="replace")[-2000:]
    assert "number of failed transactions: 0 " in results[0].output.decode()
    actions = events(docker_client, db, since)
    assert not {"stop", "pause", "kill", "die", "restart"} & {a.split(":")[0] for a in actions}, actions
    [archive] = lab.archives("db_postgres+dump_*")
    assert archive.with_name(archive.name + ".sha256").exists()
    assert not list(lab.backup_dir.rglob("*.partial"))

    fresh = start_postgres(lab, postgres_image, "fresh")
    restored = lab.cli("restore", fresh.name, "--dump", str(archive), timeout=600)
    assert restored.returncode == 0, restored.stderr[-3000:]
    assert psql(fresh, "SELECT count(*), sum(id) FROM marker", db="bench") == f"{MARKERS}|{MARKERS * (MARKERS + 1) // 2}"
    assert psql(fresh, "SELECT count(*) FROM pgbench_accounts", db="bench") == str(SCALE * 100000)
    sums = invariant(fresh)
    assert len(set(sums)) == 1, sums
    check = run(fresh, "pg_amcheck", "--install-missing", "--heapallindexed", "--all")
    assert check.exit_code == 0, check.output.decode(errors="replace")

    again = lab.cli("restore", fresh.name, "--dump", str(archive), timeout=600)
    assert again.returncode != 0 and "holds data already" in again.stderr + again.stdout


def test_per_database_dump_restores_with_force(lab, postgres_image):
    db = start_postgres(lab, postgres_image, "one", labels={"backup.preset.database": "bench"})
    seed(db)
    done = lab.cli("backup", "one", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    psql(db, "DELETE FROM marker WHERE id > 10", db="bench")
    restored = lab.cli("restore", "one", "--dump", "latest", "--force", timeout=600)
    assert restored.returncode == 0, restored.stderr[-3000:]
    assert psql(db, "SELECT count(*) FROM marker", db="bench") == str(MARKERS)


def _assert_failed_without_archive(lab, done, *words: str) -> None:
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    for word in words:
        assert word in output, output[-3000:]
    assert lab.archives() == []
    assert not list(lab.backup_dir.rglob("*.partial"))


@pytest.mark.slow  # an error path of the real client
def test_wrong_role_fails_with_the_tools_message(lab, postgres_image):
    start_postgres(lab, postgres_image, "wrong", labels={"backup.preset.user": "nosuchrole"})
    done = lab.cli("backup", "wrong", timeout=300)
    _assert_failed_without_archive(lab, done, "pg_dumpall exited with 1", 'password authentication failed for user '
                                                                          '"nosuchrole"')
    assert PASSWORD not in done.stdout + done.stderr


def test_a_crafted_dump_archive_is_refused_by_the_worker_before_any_client_runs(lab):
    """Issue 19: the dump archive is read by a streaming worker only; one that is no dump (a
    setuid member named to land in the container, with a checksum that matches) is refused
    before the server is asked anything (the busybox workload has no psql to run)."""
    lab.workload("crafted", labels={"backup.enable": "true", "backup.preset": "postgres", "backup.image": "never"})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("usr/local/bin/backdoor")
        info.size, info.mode = 10, 0o4755
        tar.addfile(info, io.BytesIO(b"#!/bin/sh\n"))
    archive = lab.backup_dir / "daily" / "crafted_postgres+dump_2026-12-08_daily.tar"
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.write_bytes(buf.getvalue())
    write_checksum(archive, hashlib.sha256(buf.getvalue()).hexdigest(), 0o600)
    refused = lab.cli("restore", "crafted", "--dump", "latest", "--force")
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert "'usr/local/bin/backdoor' is not part 0 of a dump" in refused.stderr, refused.stderr[-3000:]
    assert f"refused before anything reached {lab.project}-crafted" in refused.stderr


def test_missing_tool_fails(lab):
    lab.workload("notpg", labels={"backup.enable": "true", "backup.preset": "postgres", "backup.image": "never"})
    done = lab.cli("backup", "notpg", timeout=300)
    _assert_failed_without_archive(lab, done, "pg_dumpall: not found in the container")


@pytest.mark.slow  # a timeout's path; the actions tier covers the kill with a fake client
def test_dump_past_its_timeout_is_killed_and_fails(lab, postgres_image):
    db = start_postgres(lab, postgres_image, "slow", labels={"backup.exec.timeout": "3"})
    psql(db, "CREATE TABLE held (id int)")
    started = psql(db, "SELECT pg_postmaster_start_time()")
    # An exclusive lock held elsewhere: pg_dumpall waits for it for ever.
    holder = threading.Thread(target=run, args=(db, "psql", "-XAtq", "-d", "postgres", "-c",
                                                "BEGIN; LOCK TABLE held IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60)"),
                              daemon=True)
    holder.start()
    wait_for(lambda: psql(db, "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND "
                              "relation = 'held'::regclass") == "1", timeout=30, what="lock held")
    done = lab.cli("backup", "slow", timeout=300)
    _assert_failed_without_archive(lab, done, "ran past its timeout")
    # Killed inside the container too: its session is gone (without waiting for the lock's end),
    # and the server never restarted.
    wait_for(lambda: psql(db, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dumpall'") == "0",
             timeout=20, what="pg_dumpall killed")
    assert psql(db, "SELECT pg_postmaster_start_time()") == started
    assert lab.state(db) == "running"


def _large_dump(lab, postgres_image, rows: int) -> None:
    db = start_postgres(lab, postgres_image, "big", labels={})
    # ~300 bytes of hex text per row, in a few statements (one huge one would need the server's memory).
    psql(db, "CREATE TABLE big (id int, v text)")
    step = 500_000
    for start in range(0, rows, step):
        psql(db, f"INSERT INTO big SELECT i, repeat(md5(random()::text), 9) FROM generate_series({start + 1}, "
                 f"{min(rows, start + step)}) i")
    done = subprocess.run([sys.executable, "-c", RSS_WRAPPER, sys.executable, "-m", "sidecar", "backup", "big"],
                          cwd=REPO, env=lab.env(), capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    peak_kib = int(done.stderr.rsplit("MAXRSS=", 1)[1].split()[0])
    dumped = [r for r in done.stderr.splitlines() if '"dump read"' in r]
    assert dumped, done.stderr[-2000:]
    print(f"peak RSS {peak_kib / 1024:.1f} MiB; {dumped[-1]}")
    assert peak_kib < 150 * 1024


@pytest.mark.slow  # a large dump; the default run keeps the dump under load
def test_large_dump_streams_with_flat_memory(lab, postgres_image):
    _large_dump(lab, postgres_image, rows=600_000)  # ~180 MB of dump


@pytest.mark.slow
def test_1gb_dump_streams_with_flat_memory(lab, postgres_image):
    _large_dump(lab, postgres_image, rows=3_400_000)  # ~1 GB of dump


@pytest.mark.slow  # the hot-copy warning's logic is in the unit and actions tiers; this is the real-server check
def test_plan_warns_about_postgres_copied_hot(lab, postgres_image):
    start_postgres(lab, postgres_image, "hotdb", labels={"backup.strategy": "hot", "backup.preset": "postgres"})
    lab.container(postgres_image, name=f"{lab.project}-hot2", network_mode="none",
                  environment={"POSTGRES_PASSWORD": PASSWORD}, volumes={lab.volume("pgdata"): {
                      "bind": "/var/lib/postgresql/data", "mode": "rw"}},
                  labels={"com.docker.compose.project": lab.project, "com.docker.compose.service": "hot2",
                          "backup.enable": "true", "backup.strategy": "hot"})
    done = lab.cli("plan")
    assert done.returncode == 0, done.stderr[-2000:]
    warnings = [line for line in done.stdout.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "hot2 looks like PostgreSQL" in warnings[0] and "backup.preset=postgres" in warnings[0]
    hotdb = next(line for line in done.stdout.splitlines() if line.startswith("hotdb "))
    assert " preset:postgres " in hotdb  # never stopped: not `hot` (nor `stop`)
    # A user who never runs plan hears it from the run itself (issue 18); exit 0: the archive stands.
    done = lab.cli("backup", "hot2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "hot2: warning: hot copy of a live database (postgres, PostgreSQL)" in done.stderr
