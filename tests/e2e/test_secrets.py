"""Issue 11's secrets grep: a sidecar configured with every kind of secret (S3 keys, a
password in S3_ENDPOINT_URL, an age passphrase read from a _FILE, notification URLs with a
password and a token, ping URLs with a check's uuid, a push token and a password, and a
bad ping label) runs every command, the daemon for a cycle, against a working store and
receiver and against ones that fail; no secret (as written, URL-encoded, or base64 as in
an Authorization header) appears in any output, log line, the metrics endpoint or the
state folder."""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import subprocess
import threading
import urllib.request
from urllib.parse import quote

import pytest

from .s3server import REGION
from .support import log_records, wait_for
from .test_notify import WebhookReceiver
from tests.fakes.ping_receiver import PingReceiver

ACCESS_KEY = "AKIDsecretKeyId42XYZ"
SECRET_KEY = "wJalr/Secret+Key=Value42"
ENDPOINT_USER = "epUser7"
ENDPOINT_PASSWORD = "ep!Pa55*word"
PASSPHRASE = "age pass-phrase/Secret+42"
HOOK_PASSWORD = "HookPa55w0rdX"
HOOK_TOKEN = "HOOKTOKEN9d8c7b6a"
DEAD_PASSWORD = "DeadHookPa55Y"
PING_CHECK = "7d1e0c2b-3a4f-4b5c-9d8e-0f1a2b3c4d5e"
PUSH_TOKEN = "kumaPushTok3nZ"
PUSH_PASSWORD = "PushPa55wordQ"


def forms(secret: str) -> set[str]:
    """A secret as written, URL-encoded (two ways) and base64 (Basic auth)."""
    return {secret, quote(secret, safe=""), quote(secret), base64.b64encode(secret.encode()).decode()}


SECRETS = {name: forms(value) for name, value in {
    "access key": ACCESS_KEY, "secret key": SECRET_KEY, "endpoint password": ENDPOINT_PASSWORD,
    "passphrase": PASSPHRASE, "hook password": HOOK_PASSWORD, "hook token": HOOK_TOKEN,
    "dead hook password": DEAD_PASSWORD, "ping check": PING_CHECK, "push token": PUSH_TOKEN,
    "push password": PUSH_PASSWORD}.items()}


def found_secrets(text: str) -> list[str]:
    return [f"{name} ({form!r})" for name, shapes in SECRETS.items() for form in shapes if form in text]


@pytest.mark.slow  # about 3 minutes: some twenty CLI runs
def test_no_secret_in_any_output_log_metric_or_state(lab, s3_server, s3_bucket, tmp_path):
    webhook = WebhookReceiver()
    pings = PingReceiver()
    dead = WebhookReceiver()
    dead.close()  # a port nothing answers on
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_text(PASSPHRASE + "\n")
    endpoint = s3_server.endpoint_url.replace("://", f"://{ENDPOINT_USER}:{quote(ENDPOINT_PASSWORD, safe='')}@", 1)
    hook = f"json://hook:{HOOK_PASSWORD}@127.0.0.1:{webhook.port}/notify/{HOOK_TOKEN}"
    dead_hook = f"json://hook:{DEAD_PASSWORD}@127.0.0.1:{dead.port}/notify/{HOOK_TOKEN}"
    env = {"S3_BUCKET": s3_bucket, "S3_ENDPOINT_URL": endpoint, "S3_PREFIX": "secrets", "S3_PATH_STYLE": "true",
           "S3_REGION": REGION, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
           "BACKUP_AGE_PASSPHRASE_FILE": str(passphrase_file), "NOTIFY_URLS": f"{hook},{dead_hook}",
           "NOTIFY_ON": "always", "NOTIFY_TIMEOUT": "3", "LOG_LEVEL": "DEBUG", "LOG_FORMAT": "json",
           "S3_ATTEMPTS": "2", "BACKUP_PING_URL": f"hc+http://127.0.0.1:{pings.port}/ping/{PING_CHECK}",
           "BACKUP_PING_TIMEOUT": "2"}
    volume = lab.volume("data")
    lab.populate(volume, "echo hello > a.txt")
    push = f"kuma+http://kuma:{PUSH_PASSWORD}@127.0.0.1:{pings.port}/api/push/{PUSH_TOKEN}?status=up&msg=OK&ping="
    lab.workload("app", {"backup.enable": "true", "backup.strategy": "stop", "backup.ping": push}, {volume: "/data"})
    lab.workload("badping", {"backup.enable": "true", "backup.ping": f"ftp://127.0.0.1/{PUSH_TOKEN}"},
                 {lab.volume("other"): "/data"})  # skipped: its label is reported, not quoted
    said: list[str] = []
    try:
        def cli(*args: str, **extra: str) -> int:
            done = lab.cli(*args, **{**env, **extra})
            said.append(f"$ {' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}")
            return done.returncode

        assert cli("backup", "app") == 0, said[-1]
        wait_for(lambda: webhook.requests, what="the success notification")
        for args in (("list",), ("list", "--remote"), ("plan",), ("plan", "--json"), ("sync",),
                     ("prune", "--dry-run"), ("restore", "app", "--volume", "data", "--force"),
                     ("restore", "app", "--volume", "data", "--force", "--from", "s3")):
            assert cli(*args) == 0, said[-1]
        # The failures: a wrong passphrase, a store that does not answer, a refusing receiver.
        wrong = tmp_path / "wrong"
        wrong.write_text("not the " + PASSPHRASE[::-1])
        assert cli("restore", "app", "--volume", "data", "--force", BACKUP_AGE_PASSPHRASE_FILE=str(wrong)) != 0
        webhook.status = pings.status = 500
        closed = s3_server.endpoint_url.rsplit(":", 1)[0] + f":{dead.port}"
        unreachable = closed.replace("://", f"://{ENDPOINT_USER}:{quote(ENDPOINT_PASSWORD, safe='')}@", 1)
        for args in (("backup", "app"), ("sync",), ("list", "--remote"), ("plan",)):
            cli(*args, S3_ENDPOINT_URL=unreachable, S3_ATTEMPTS="1")
        assert cli("backup", "app", S3_ENDPOINT_URL="not a url " + unreachable) == 64
        webhook.status = pings.status = 200
        assert cli("backup", "app", BACKUP_PING_URL=f"hc+http://127.0.0.1:{dead.port}/ping/{PING_CHECK}") == 0

        daemon, log = lab.start_cli("run", log_name="daemon.log", **env, S3_SYNC_INTERVAL="1",
                                    BACKUP_DEFAULT_SCHEDULE="* * * * * */5")
        wait_for(lambda: any(r["message"] == "backup finished" for r in log_records(log)), timeout=120,
                 what="a scheduled backup")
        wait_for(lambda: any(r["message"].startswith("sync") or "off-site" in r["message"]
                             for r in log_records(log)), timeout=60, what="a sync cycle")
        with urllib.request.urlopen(f"http://127.0.0.1:{lab.metrics_port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        said.append("metrics:\n" + metrics)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
        said.append("daemon:\n" + log.read_text(errors="replace"))
    finally:
        webhook.close()
        pings.close()
    for path in (lab.backup_dir / ".sidecar").rglob("*"):
        if path.is_file():
            said.append(f"{path}:\n" + path.read_text(errors="replace"))

    text = "\n".join(said)
    assert "backup_sidecar_" in text and "127.0.0.1" in text  # the checks saw real output
    assert len(webhook.requests) >= 3
    # The secrets were in use: the receiver got the password, the store the archive, encrypted.
    auth = base64.b64encode(f"hook:{HOOK_PASSWORD}".encode()).decode()
    assert all(r["headers"]["Authorization"] == f"Basic {auth}" for r in webhook.requests)
    assert all(r["path"] == f"/notify/{HOOK_TOKEN}" for r in webhook.requests)
    # The ping URLs were in use: the check's uuid and the push token reached the receiver.
    assert any(r.path.startswith(f"/ping/{PING_CHECK}/") for r in pings.requests)
    assert any(r.path == f"/api/push/{PUSH_TOKEN}" for r in pings.requests)
    assert lab.archives() and all(a.name.endswith(".age") for a in lab.archives())
    assert not found_secrets(text), (found_secrets(text), text[-4000:])


RESTIC_PASSWORD = "restic Pw/Secret+Key=81"


class ProcessWatch:
    """Samples, until stopped, every process's arguments (`ps`) and every running
    container's command and environment (`docker inspect`: what a worker was given)."""

    def __init__(self, client):
        self.client, self.seen, self._stop = client, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ps = subprocess.run(["ps", "-eww", "-o", "args="], capture_output=True, text=True)
            self.seen.append(ps.stdout)
            with contextlib.suppress(Exception):
                for container in self.client.api.containers():
                    info = self.client.api.inspect_container(container["Id"])
                    self.seen.append(json.dumps([info["Config"].get("Env"), info["Config"].get("Cmd"),
                                                 info.get("Args"), info["Config"].get("Labels")]))
            self._stop.wait(0.05)

    def stop(self) -> str:
        self._stop.set()
        self._thread.join(10)
        return "\n".join(self.seen)


@pytest.mark.slow  # about 5 minutes on a loaded machine: some fifteen CLI runs with restic workers
def test_no_restic_password_in_any_output_log_metric_notification_or_process_list(
        lab, docker_client, worker_image, tmp_path):
    """backup.format=restic: the repository's password given as RESTIC_PASSWORD and as
    RESTIC_PASSWORD_FILE; backups (restic in workers), list, plan, restores (local and from
    a second disk's repository), a check that passes and one that fails (notified), prune,
    the daemon's metrics. Its value never shows in any of those, in the state folder, in a
    process's arguments or in a worker container's command, environment or labels."""
    webhook = WebhookReceiver()
    secret = tmp_path / "restic-password"
    secret.write_text(RESTIC_PASSWORD + "\n")
    disk = tmp_path / "disk"
    disk.mkdir()
    volume = lab.volume("data")
    lab.populate(volume, "echo hello > a.txt; dd if=/dev/urandom of=b.bin bs=64k count=16 2>/dev/null")
    lab.workload("app", {"backup.enable": "true", "backup.strategy": "stop", "backup.schedule": "@monthly"},
                 {volume: "/data"})
    base = {"BACKUP_WORKER_IMAGE": worker_image, "BACKUP_FORMAT": "restic", "BACKUP_PRUNE_DRY_RUN": "true",
            "BACKUP_DESTINATIONS": str(disk), "LOG_LEVEL": "DEBUG", "LOG_FORMAT": "json",
            "NOTIFY_URLS": f"json://127.0.0.1:{webhook.port}/notify", "NOTIFY_ON": "always", "NOTIFY_TIMEOUT": "5"}
    by_env, by_file = {**base, "RESTIC_PASSWORD": RESTIC_PASSWORD}, {**base, "RESTIC_PASSWORD_FILE": str(secret)}
    said: list[str] = []
    watch = ProcessWatch(docker_client)
    try:
        def cli(*args: str, env: dict) -> int:
            done = lab.cli(*args, **env)
            said.append(f"$ {' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}")
            return done.returncode

        assert cli("backup", "app", env=by_env) == 0, said[-1]
        lab.populate(volume, "echo again > a.txt")
        assert cli("backup", "app", env=by_file) == 0, said[-1]
        for args in (("list",), ("list", "--json"), ("plan",), ("plan", "--json"),
                     ("restore", "app", "--volume", "data", "--force"),
                     ("restore", "app", "--volume", "data", "--force", "--from", "local"),
                     ("restore", "app", "--volume", "data", "--path", "a.txt"),
                     ("check", "--read-data-subset", "100%"), ("prune",)):
            assert cli(*args, env=by_file) == 0, said[-1]
        pack = max((p for p in (lab.backup_dir / "restic" / "data").rglob("*") if p.is_file()),
                   key=lambda p: p.stat().st_size)
        pack.chmod(0o600)
        damaged = bytearray(pack.read_bytes())
        damaged[len(damaged) // 2] ^= 0xFF
        pack.write_bytes(bytes(damaged))
        assert cli("check", "--read-data-subset", "100%", env=by_env) == 1, said[-1]
        wait_for(lambda: any("restic check" in r["body"].get("title", "") and "failed" in r["body"].get("title", "")
                             for r in webhook.requests), what="the failed check's notification")
        assert cli("backup", "app", env={**by_env, "RESTIC_PASSWORD": "not the " + RESTIC_PASSWORD[::-1]}) != 0

        daemon, log = lab.start_cli("run", log_name="daemon.log", **by_file)
        metrics = wait_for(lambda: _scrape_text(lab.metrics_port), timeout=60, what="the metrics endpoint")
        said.append("metrics:\n" + metrics)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
        said.append("daemon:\n" + log.read_text(errors="replace"))
    finally:
        seen = watch.stop()
        webhook.close()
    said.append("notifications:\n" + json.dumps([r["body"] for r in webhook.requests]))
    said.append("processes:\n" + seen)
    for path in (lab.backup_dir / ".sidecar").rglob("*"):
        if path.is_file():
            said.append(f"{path}:\n" + path.read_text(errors="replace"))
    text = "\n".join(said)
    # The checks saw real output: restic's workers ran (the sampler saw them), metrics, notifications.
    assert "--password-file" in seen  # a restic worker was seen while it ran
    assert "backup_sidecar_restic_repository_bytes" in text and len(webhook.requests) >= 3
    assert not list((lab.backup_dir / ".sidecar").rglob("*.keys"))
    leaked = [form for form in forms(RESTIC_PASSWORD) if form in text]
    assert not leaked, (leaked, text[-4000:])


def _scrape_text(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()
    except OSError:
        return None
