"""The 3-2-1 rule end to end: archives copied to a real S3 server (SeaweedFS), an outage
that heals by itself, restore onto a host with an empty backup volume, and the same
rotation rules on disk and in the store."""

from __future__ import annotations

import hashlib
import re
import signal
import socket
import urllib.request

import pyrage
import pytest

from .s3server import ACCESS_KEY, SECRET_KEY
from .support import log_records, wait_for, without_node


def s3_env(s3_server, bucket: str, **extra: str) -> dict[str, str]:
    return {"S3_BUCKET": bucket, "S3_ENDPOINT_URL": s3_server.endpoint_url, "S3_PREFIX": "host1/stack",
            "S3_PATH_STYLE": "true", "S3_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, **extra}


def objects(s3_server, bucket: str) -> dict[str, dict]:
    client = s3_server.client()
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            found[item["Key"]] = item
    return found


def test_backup_is_copied_off_site_with_its_checksum(lab, s3_server, s3_bucket):
    env = s3_env(s3_server, s3_bucket, S3_PART_SIZE_MB="5")
    volume = lab.volume("data")
    lab.populate(volume, "echo hello > a.txt; dd if=/dev/urandom of=big bs=1M count=12 2>/dev/null")
    lab.workload("app", {"backup.enable": "true", "backup.strategy": "hot"}, {volume: "/data"})
    done = lab.cli("backup", "app", **env)
    assert done.returncode == 0, done.stderr

    [archive] = lab.archives()
    local_sha = archive.with_name(archive.name + ".sha256").read_text().split()[0]
    assert local_sha == hashlib.sha256(archive.read_bytes()).hexdigest()
    keys = objects(s3_server, s3_bucket)
    daily = f"host1/stack/daily/{archive.name}"
    # The first archive of a week and of a month is also the weekly and monthly: server-side copies.
    expected = {daily, daily.replace("daily", "weekly"), daily.replace("daily", "monthly")}
    assert expected <= set(keys), sorted(keys)
    client = s3_server.client()
    for key in expected:
        head = client.head_object(Bucket=s3_bucket, Key=key)
        assert head["Metadata"]["sha256"] == local_sha
        assert head["ContentLength"] == archive.stat().st_size
    # Bigger than the 5 MiB part size: it went up in parts.
    assert "-" in keys[daily]["ETag"]
    body = client.get_object(Bucket=s3_bucket, Key=daily)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == local_sha

    listed = lab.cli("list", "--remote", "--json", **env)
    assert listed.returncode == 0 and f'"daily/{archive.name}"' in listed.stdout and '"verified": true' in listed.stdout
    named = lab.cli("list", "--remote", "s3", **env)  # by destination name
    assert named.returncode == 0 and f"host1/stack/daily/{archive.name}" in named.stdout
    by_target = lab.cli("list", "app", "--remote", "--json", **env)
    assert by_target.returncode == 0 and f'"daily/{archive.name}"' in by_target.stdout and "images/" not in by_target.stdout
    # `list --remote NAME` with NAME not a destination: a target, as before destinations existed.
    assert lab.cli("list", "--remote", "app", "--json", **env).stdout == by_target.stdout
    plan = lab.cli("plan", "--json", **env)
    assert '"copies": 2' in plan.stdout and '"offsite": "verified' in plan.stdout
    assert SECRET_KEY not in done.stderr + plan.stdout + plan.stderr + listed.stdout


@pytest.mark.slow  # test_faults' store answering 500s then healing stays in the default run
def test_store_outage_heals_on_the_next_cycle(lab, s3_server, s3_bucket):
    env = s3_env(s3_server, s3_bucket, S3_ATTEMPTS="1", S3_SYNC_INTERVAL="1")
    volume = lab.volume("data")
    lab.populate(volume, "echo v1 > v.txt")
    app = lab.workload("app", {"backup.enable": "true", "backup.strategy": "stop"}, {volume: "/data"})

    s3_server.stop()
    try:
        done = lab.cli("backup", "app", **env)
        assert done.returncode == 0, done.stderr  # the local backup succeeded
        assert "off-site copy failed" in done.stderr
        [archive] = lab.archives()
        assert archive.exists() and lab.state(app) == "running"
        plan = lab.cli("plan", "--json", **env)
        assert '"offsite": "missing"' in plan.stdout and '"copies": 1' in plan.stdout
    finally:
        s3_server.start()

    daemon, log = lab.start_cli("run", log_name="daemon.log", **env)
    key = f"host1/stack/daily/{archive.name}"
    wait_for(lambda: key in objects(s3_server, s3_bucket), timeout=60, what="the daemon's sync to upload it")
    wait_for(lambda: any(r["message"] == "off-site copy verified" and r.get("path") == f"daily/{archive.name}"
                         for r in log_records(log)), timeout=30, what="the upload to be logged")
    # The metrics follow: two copies, and an off-site timestamp for the volume.
    def scrape():
        with urllib.request.urlopen(f"http://127.0.0.1:{lab.metrics_port}/metrics", timeout=5) as r:
            return without_node(r.read().decode())

    wait_for(lambda: 'backup_sidecar_copies{target="app"} 2.0' in scrape(), timeout=30, what="copies to be 2")
    offsite = re.search(r'backup_sidecar_offsite_last_success_timestamp_seconds\{destination="s3",target="app",'
                        r'volume="data"\} (\S+)', scrape())
    assert offsite and float(offsite.group(1)) > 0
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    assert archive.exists()  # the local archive was never touched


def test_restore_from_s3_onto_an_empty_backup_volume(lab, s3_server, s3_bucket, tmp_path):
    env = s3_env(s3_server, s3_bucket)
    volume = lab.volume("data")
    lab.populate(volume, "mkdir -p d/e; echo one > d/e/f; ln -s e/f d/link; chown 1000:1000 d/e/f")
    original = lab.manifest(volume)
    lab.workload("app", {"backup.enable": "true", "backup.strategy": "stop"}, {volume: "/data"})
    assert lab.cli("backup", "app", **env).returncode == 0

    # A new host: nothing on its backup volume, the same store.
    new_host = tmp_path / "new-host-backups"
    new_host.mkdir()
    lab.populate(volume, "rm -rf -- * .[!.]* ..?* || true")
    local_only = lab.cli("restore", "app", "--volume", "data", BACKUP_DIR=str(new_host), **env)
    assert local_only.returncode == 2 and "no archive" in local_only.stderr
    unknown = lab.cli("restore", "app", "--volume", "data", "--from", "nas", BACKUP_DIR=str(new_host), **env)
    assert unknown.returncode == 64 and "no off-site destination named 'nas'; configured: s3" in unknown.stderr
    done = lab.cli("restore", "app", "--volume", "data", "--from", "s3", BACKUP_DIR=str(new_host), **env)
    assert done.returncode == 0, done.stderr
    assert lab.manifest(volume) == original
    [fetched] = list(new_host.glob("daily/*.tar.zst"))
    assert fetched.with_name(fetched.name + ".sha256").exists()


def test_only_the_off_site_copy_encrypted(lab, s3_server, s3_bucket, tmp_path):
    identity = pyrage.x25519.Identity.generate()
    key_file = tmp_path / "key.txt"
    key_file.write_text(f"{identity}\n")
    env = s3_env(s3_server, s3_bucket, BACKUP_AGE_RECIPIENTS=str(identity.to_public()), BACKUP_ENCRYPT_LOCAL="false")
    volume = lab.volume("data")
    lab.populate(volume, "echo secret-marker > s.txt")
    lab.workload("app", {"backup.enable": "true", "backup.strategy": "hot"}, {volume: "/data"})
    assert lab.cli("backup", "app", **env).returncode == 0
    [archive] = lab.archives()
    assert archive.name.endswith(".tar.zst")  # plain on the backup volume
    key = f"host1/stack/daily/{archive.name}.age"
    body = s3_server.client().get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    assert body.startswith(b"age-encryption.org/v1") and b"secret-marker" not in body
    assert not list((lab.backup_dir / ".sidecar").rglob("outgoing/*"))  # the encrypted temp is gone

    new_host = tmp_path / "new-host"
    new_host.mkdir()
    lab.populate(volume, "rm s.txt")
    done = lab.cli("restore", "app", "--volume", "data", "--from", "s3", BACKUP_DIR=str(new_host),
                   BACKUP_AGE_IDENTITY_FILE=str(key_file), **env)
    assert done.returncode == 0, done.stderr
    assert "./s.txt" in lab.manifest(volume)


@pytest.mark.slow  # a secrets grep (the secrets group)
def test_an_endpoint_password_is_in_no_output_nor_log(lab, s3_server, s3_bucket):
    """Issue 11's secrets grep for S3_ENDPOINT_URL=http://user:secretpw@HOST:PORT: the real
    CLI, debug logs, against the real store and against an endpoint that does not answer."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    live = s3_server.endpoint_url.replace("://", "://user:secretpw@", 1)
    volume = lab.volume("data")
    lab.populate(volume, "echo hello > a.txt")
    lab.workload("app", {"backup.enable": "true", "backup.strategy": "hot"}, {volume: "/data"})
    said = []
    for endpoint in (live, f"http://user:secretpw@127.0.0.1:{dead}"):
        env = s3_env(s3_server, s3_bucket, S3_ENDPOINT_URL=endpoint, S3_ATTEMPTS="2", LOG_LEVEL="debug")
        for args in (("backup", "app"), ("sync",), ("list", "--remote"), ("prune", "--dry-run"),
                     ("restore", "app", "--volume", "data", "--from", "s3", "--force")):
            done = lab.cli(*args, **env)
            said.append(f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}")
    text = "\n".join(said)
    assert "127.0.0.1" in text and "secretpw" not in text, text[-3000:]
