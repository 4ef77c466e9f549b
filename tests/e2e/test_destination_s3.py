"""The "s3" destination (sidecar.destinations.s3) against a real S3 server (SeaweedFS from
tests/e2e/s3server.py): uploads verified by the store, multipart, server-side copy,
paginated listing, verified download, botocore's standard retries while the store is down
or answers 5xx (injected through botocore's event hooks), delete, and no credentials in
any error or log record."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import socket
import traceback
from pathlib import Path

import botocore.awsrequest
import pytest

from sidecar.tarball.archive import read_checksum, sha256_file, write_checksum
from sidecar.core.config import S3Config
from sidecar.destinations import Destination, create
from sidecar.destinations.s3 import S3Destination
from sidecar.core.errors import ChecksumMismatch, DestinationError, DestinationUnreachable

MiB = 1024 * 1024
PREFIX = "backups/host1"
NAME = "app_data_2026-11-26_daily.tar.zst"
ACCESS_KEY = "AKIASIDECARTEST0KEY1"
SECRET_KEY = "sEcReT/sidecar+TEST-0123456789abcdefghij"


def make_archive(root: Path, relpath: str, size: int) -> tuple[Path, str]:
    """A file with random bytes and its NAME.sha256 beside it, as a backup writes them."""
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, MiB))
            f.write(block)
            left -= len(block)
    write_checksum(path, sha256_file(path))
    return path, read_checksum(path)


class Sleeps:
    """An injected sleep: records the delays and returns at once."""

    def __init__(self):
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def count_calls(store: S3Destination, *operations: str) -> dict[str, int]:
    counts = {op: 0 for op in operations}

    def hook(model, **kwargs):
        if model.name in counts:
            counts[model.name] += 1

    store.client.meta.events.register("before-call.s3", hook)
    return counts


@pytest.fixture
def make_store(s3_server, s3_bucket):
    def make(sleep=None, **overrides) -> S3Destination:
        fields = dict(bucket=s3_bucket, prefix=PREFIX, endpoint_url=s3_server.endpoint_url, region="us-east-1",
                      path_style=True, part_size=5 * MiB, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY,
                      attempts=3, connect_timeout=2, read_timeout=10)
        fields.update(overrides)
        return S3Destination(S3Config(**fields), sleep=sleep or Sleeps())
    return make


def test_the_s3_kind_is_registered_and_is_a_destination(s3_server, s3_bucket):
    store = create("s3", S3Config(bucket=s3_bucket, endpoint_url=s3_server.endpoint_url, region="us-east-1",
                                  path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY))
    assert isinstance(store, S3Destination) and isinstance(store, Destination) and store.name == "s3"
    assert store.describe() == f"s3://{s3_bucket}/" and store.describe("daily/x") == f"s3://{s3_bucket}/daily/x"


def test_upload_lands_under_the_prefix_with_its_sha256_and_round_trips(make_store, s3_server, s3_bucket, tmp_path):
    path, digest = make_archive(tmp_path / "backups", f"daily/{NAME}", 300_000)
    store = make_store(prefix="/backups//host1/", storage_class="STANDARD_IA")
    calls = count_calls(store, "PutObject", "UploadPart")

    obj = store.upload(path, f"daily/{NAME}", digest)

    assert (obj.key, obj.relpath, obj.size, obj.sha256) == (f"{PREFIX}/daily/{NAME}", f"daily/{NAME}", 300_000, digest)
    assert calls == {"PutObject": 1, "UploadPart": 0}
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=f"{PREFIX}/daily/{NAME}", ChecksumMode="ENABLED")
    assert head["ContentLength"] == path.stat().st_size
    assert head["Metadata"]["sha256"] == (tmp_path / "backups/daily" / (NAME + ".sha256")).read_text().split()[0]
    # The store computed the same SHA-256 from the bytes it received, and kept the class.
    assert head["ChecksumSHA256"] == base64.b64encode(bytes.fromhex(digest)).decode()
    assert head["StorageClass"] == "STANDARD_IA"

    dest = tmp_path / "restore" / "daily" / NAME
    got = store.download(f"daily/{NAME}", dest, file_mode=0o640)
    assert dest.read_bytes() == path.read_bytes()
    assert got.sha256 == digest and got.size == 300_000
    assert dest.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in dest.parent.iterdir()) == [NAME]
    assert store.head(f"daily/{NAME}").sha256 == digest
    assert store.head("daily/missing.tar.zst") is None


def test_multipart_upload_and_download_round_trip(make_store, s3_server, s3_bucket, tmp_path):
    size = 12 * MiB + 12345
    path, digest = make_archive(tmp_path, f"daily/{NAME}", size)
    store = make_store(max_concurrency=2)
    calls = count_calls(store, "PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload")

    obj = store.upload(path, f"daily/{NAME}", digest)

    assert calls == {"PutObject": 0, "CreateMultipartUpload": 1, "UploadPart": 3, "CompleteMultipartUpload": 1}
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=obj.key, ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-3")
    assert head["ChecksumSHA256"].endswith("-3")  # composite: checked by upload() against our parts
    assert (obj.size, head["Metadata"]["sha256"]) == (size, digest)
    dest = tmp_path / "back" / NAME
    store.download(f"daily/{NAME}", dest)
    assert sha256_file(dest) == digest and dest.stat().st_size == size


def test_upload_refuses_a_file_that_does_not_match_its_checksum(make_store, tmp_path):
    path, digest = make_archive(tmp_path, f"daily/{NAME}", 1000)
    store = make_store()
    calls = count_calls(store, "PutObject")
    with pytest.raises(ChecksumMismatch, match="not uploading"):
        store.upload(path, f"daily/{NAME}", hashlib.sha256(b"something else").hexdigest())
    assert calls["PutObject"] == 0
    assert store.head(f"daily/{NAME}") is None


def test_copy_is_server_side_and_keeps_content_and_sha256(make_store, s3_server, s3_bucket, tmp_path):
    path, digest = make_archive(tmp_path, f"daily/{NAME}", 6 * MiB)
    store = make_store()
    store.upload(path, f"daily/{NAME}", digest)
    weekly = f"weekly/{NAME.replace('_daily', '_weekly')}"
    calls = count_calls(store, "CopyObject", "UploadPartCopy", "PutObject", "UploadPart", "GetObject")

    obj = store.copy(f"daily/{NAME}", weekly)

    assert calls == {"CopyObject": 1, "UploadPartCopy": 0, "PutObject": 0, "UploadPart": 0, "GetObject": 0}
    assert (obj.relpath, obj.key, obj.size, obj.sha256) == (weekly, f"{PREFIX}/{weekly}", 6 * MiB, digest)
    body = s3_server.client().get_object(Bucket=s3_bucket, Key=f"{PREFIX}/{weekly}")["Body"].read()
    assert body == path.read_bytes()
    with pytest.raises(DestinationError, match="source does not exist"):
        store.copy("daily/missing.tar.zst", "weekly/missing.tar.zst")


def test_list_pages_through_and_stays_inside_the_prefix(make_store, s3_server, s3_bucket, tmp_path):
    store = make_store()
    expected = []
    for i in range(7):
        rel = f"{'daily' if i < 5 else 'weekly'}/app_data_2026-11-0{i + 1}_daily.tar.zst"
        path, digest = make_archive(tmp_path, rel, 10 + i)
        store.upload(path, rel, digest)
        expected.append((rel, 10 + i))
    raw = s3_server.client()
    for key in ("other/daily/x.tar.zst", f"{PREFIX}-other/daily/y.tar.zst", "backups/z.tar.zst"):
        raw.put_object(Bucket=s3_bucket, Key=key, Body=b"not ours")
    raw.put_object(Bucket=s3_bucket, Key=f"{PREFIX}/daily/", Body=b"")  # a folder marker
    calls = count_calls(store, "ListObjectsV2")

    found = store.list(page_size=3)

    assert calls["ListObjectsV2"] == 3  # 8 keys under the prefix (with the marker), 3 a page
    assert sorted((o.relpath, o.size) for o in found) == sorted(expected)
    assert all(o.key == f"{PREFIX}/{o.relpath}" and o.sha256 is None and o.last_modified.tzinfo for o in found)
    assert [o.relpath for o in store.list("weekly/")] == [r for r, _ in expected[5:]]
    assert len(store.list("daily/", page_size=2)) == 5
    assert store.list("monthly/") == []
    # Without a prefix every object of the bucket is listed.
    unprefixed = make_store(prefix="")
    assert {o.relpath for o in unprefixed.list()} >= {"other/daily/x.tar.zst", f"{PREFIX}/{expected[0][0]}"}


def test_download_refuses_bytes_that_do_not_match_the_sha256_metadata(make_store, s3_server, s3_bucket, tmp_path):
    store = make_store()
    raw = s3_server.client()
    data = os.urandom(3 * MiB)
    wrong = hashlib.sha256(data + b"!").hexdigest()
    raw.put_object(Bucket=s3_bucket, Key=f"{PREFIX}/daily/{NAME}", Body=data, Metadata={"sha256": wrong})
    dest_dir = tmp_path / "restore"
    dest_dir.mkdir()

    with pytest.raises(ChecksumMismatch) as info:
        store.download(f"daily/{NAME}", dest_dir / NAME)
    assert wrong in str(info.value) and hashlib.sha256(data).hexdigest() in str(info.value)
    assert f"s3://{s3_bucket}/{PREFIX}/daily/{NAME}" in str(info.value)
    assert list(dest_dir.iterdir()) == []  # neither the file nor its partial

    raw.put_object(Bucket=s3_bucket, Key=f"{PREFIX}/daily/unverifiable.tar.zst", Body=data)
    with pytest.raises(DestinationError, match="no sha256 metadata"):
        store.download("daily/unverifiable.tar.zst", dest_dir / "unverifiable.tar.zst")
    with pytest.raises(DestinationError, match="NoSuchKey"):
        store.download("daily/missing.tar.zst", dest_dir / "missing.tar.zst")
    assert list(dest_dir.iterdir()) == []


def test_upload_retries_while_the_store_is_down_and_succeeds_once_it_is_back(make_store, s3_server, s3_bucket,
                                                                             tmp_path, caplog):
    path, digest = make_archive(tmp_path, f"daily/{NAME}", 200_000)
    sleeps = Sleeps()
    store = make_store(sleep=sleeps, attempts=4, connect_timeout=1)
    caplog.set_level(logging.WARNING, logger="sidecar.destinations.s3")
    s3_server.stop()
    try:
        with pytest.raises(DestinationUnreachable) as info:
            store.upload(path, f"daily/{NAME}", digest)
        with pytest.raises(DestinationUnreachable, match=f"bucket '{s3_bucket}'.*{s3_server.endpoint_url}"):
            store.check()
    finally:
        s3_server.start()
    message = str(info.value)
    assert "upload" in message and f"s3://{s3_bucket}/{PREFIX}/daily/{NAME}" in message
    assert "after 4 attempts" in message and s3_server.endpoint_url in message
    retries = [r for r in caplog.records if r.name == "sidecar.destinations.s3" and r.levelno == logging.WARNING]
    upload_retries = [r for r in retries if r.phase == "upload"]
    assert [r.attempt for r in upload_retries] == [1, 2, 3]
    assert all(r.key == f"{PREFIX}/daily/{NAME}" and r.bytes == 200_000 for r in upload_retries)
    assert [r.delay_seconds for r in upload_retries] == [round(d, 3) for d in sleeps.delays[:3]]
    # botocore's standard mode: truncated exponential backoff with full jitter, attempt n
    # waiting up to 50 ms x 2**(n-1) for a connection error (1 s x 2**(n-1) when throttled).
    for n, delay in enumerate(sleeps.delays[:3], start=1):
        assert 0 <= delay <= 0.05 * 2 ** (n - 1)

    caplog.clear()
    obj = store.upload(path, f"daily/{NAME}", digest)
    assert obj.sha256 == digest and obj.size == 200_000
    store.check()


class _Raw:
    def __init__(self, body: bytes):
        self._body = body

    def stream(self, **kwargs):
        yield self._body


def _fail_first(store: S3Destination, operation: str, status: int, code: str, times: int) -> list[int]:
    """Answer the first `times` requests of `operation` with an S3 error, without sending them."""
    seen = []

    def before_send(request, **kwargs):
        seen.append(1)
        if len(seen) <= times:
            body = f"<Error><Code>{code}</Code><Message>injected {code}</Message></Error>".encode()
            return botocore.awsrequest.AWSResponse(request.url, status, {"Content-Type": "application/xml"}, _Raw(body))
        return None

    store.client.meta.events.register(f"before-send.s3.{operation}", before_send)
    return seen


@pytest.mark.parametrize("status, code", [(503, "SlowDown"), (500, "InternalError"), (400, "RequestTimeout")])
def test_throttling_and_server_errors_are_retried(make_store, tmp_path, caplog, status, code):
    path, digest = make_archive(tmp_path, f"daily/{NAME}", 1000)
    store = make_store(attempts=3)
    seen = _fail_first(store, "PutObject", status, code, times=2)
    caplog.set_level(logging.WARNING, logger="sidecar.destinations.s3")
    assert store.upload(path, f"daily/{NAME}", digest).sha256 == digest
    assert len(seen) == 3
    assert [(r.attempt, code in r.error) for r in caplog.records] == [(1, True), (2, True)]


def test_server_errors_through_every_attempt_mean_unreachable(make_store, tmp_path):
    path, digest = make_archive(tmp_path, f"daily/{NAME}", 1000)
    store = make_store(attempts=3)
    seen = _fail_first(store, "PutObject", 503, "ServiceUnavailable", times=3)
    with pytest.raises(DestinationUnreachable, match="after 3 attempts.*ServiceUnavailable"):
        store.upload(path, f"daily/{NAME}", digest)
    assert len(seen) == 3


def test_access_denied_is_not_retried(make_store, tmp_path, caplog):
    path, digest = make_archive(tmp_path, f"daily/{NAME}", 1000)
    store = make_store(attempts=5)
    seen = _fail_first(store, "PutObject", 403, "AccessDenied", times=1)
    caplog.set_level(logging.WARNING, logger="sidecar.destinations.s3")
    with pytest.raises(DestinationError, match="AccessDenied: injected AccessDenied") as info:
        store.upload(path, f"daily/{NAME}", digest)
    assert len(seen) == 1 and caplog.records == []
    assert not isinstance(info.value, DestinationUnreachable)  # the store answered: it is reachable


def test_check_names_a_missing_bucket(make_store, s3_server):
    make_store().check()
    with pytest.raises(DestinationError, match="bucket 'no-such-bucket-here'.*does not exist"):
        make_store(bucket="no-such-bucket-here").check()


def test_credentials_never_appear_in_errors_or_logs(make_store, s3_server, s3_bucket, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # botocore's and s3transfer's records too
    path, digest = make_archive(tmp_path, f"daily/{NAME}", 1000)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nobody = s.getsockname()[1]  # nothing listens here once the socket is closed
    errors: list[Exception] = []
    stores = [make_store(bucket="no-such-bucket-here"), make_store(),
              make_store(endpoint_url=f"http://127.0.0.1:{nobody}", connect_timeout=1)]
    for store in stores:
        for action in (store.check, lambda: store.upload(path, f"daily/{NAME}", digest),
                       lambda: store.download("daily/missing.tar.zst", tmp_path / "x"),
                       lambda: store.copy("daily/missing.tar.zst", "weekly/y"),
                       lambda: store.delete([f"daily/{NAME}"])):
            try:
                action()
            except DestinationError as exc:
                errors.append(exc)
    assert len(errors) >= 10  # the missing bucket and the dead endpoint fail everything
    assert any("after 3 attempts" in str(e) for e in errors)  # retries were logged as well
    for exc in errors:
        text = f"{exc} {exc!r} {exc.__dict__}"
        assert SECRET_KEY not in text and ACCESS_KEY not in text
    for record in caplog.records:
        text = f"{record.getMessage()} {record.__dict__}"
        assert SECRET_KEY not in text, record
        if record.name.startswith("sidecar"):
            assert ACCESS_KEY not in text, record
    assert any(r.name == "sidecar.destinations.s3" and r.levelno == logging.WARNING for r in caplog.records)
    assert SECRET_KEY not in repr(stores[1].config) and ACCESS_KEY not in repr(stores[1].config)


def test_delete_removes_objects_in_batches(make_store, tmp_path):
    store = make_store()
    rels = [f"daily/app_data_2026-11-0{i}_daily.tar.zst" for i in range(1, 4)]
    for rel in rels:
        path, digest = make_archive(tmp_path, rel, 100)
        store.upload(path, rel, digest)
    calls = count_calls(store, "DeleteObjects")

    store.delete([rels[0], rels[2], "daily/never-there.tar.zst"])

    assert [o.relpath for o in store.list()] == [rels[1]]
    assert store.head(rels[0]) is None and store.head(rels[2]) is None
    assert calls["DeleteObjects"] == 1
    store.delete([f"daily/gone-{i}.tar.zst" for i in range(1001)] + [rels[1]])
    assert calls["DeleteObjects"] == 3  # 1000 keys a request
    assert store.list() == []
    store.delete([])
    assert calls["DeleteObjects"] == 3


def test_an_endpoint_password_appears_in_no_error_traceback_or_log(make_store, s3_server, tmp_path, caplog):
    """botocore quotes the endpoint URL, user:password@ included, in its errors; our errors
    chain to those, so the scrubbing must reach the whole chain a traceback prints."""
    caplog.set_level(logging.DEBUG, logger="sidecar")
    path, digest = make_archive(tmp_path, f"daily/{NAME}", 1000)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nobody = s.getsockname()[1]
    live = s3_server.endpoint_url.replace("://", "://user:secretpw@", 1)
    errors: list[Exception] = []
    for store in (make_store(endpoint_url=live), make_store(endpoint_url=live, bucket="no-such-bucket-here"),
                  make_store(endpoint_url=f"http://user:secretpw@127.0.0.1:{nobody}", connect_timeout=1)):
        for action in (store.check, lambda: store.upload(path, f"daily/{NAME}", digest),
                       lambda: store.download("daily/missing.tar.zst", tmp_path / "x"), store.list):
            try:
                action()
            except DestinationError as exc:
                errors.append(exc)
    assert len(errors) >= 6 and any(isinstance(e, DestinationUnreachable) for e in errors)
    for exc in errors:
        text = "".join(traceback.format_exception(exc)) + repr(exc.__dict__)
        assert "secretpw" not in text, text
    for record in caplog.records:
        assert "secretpw" not in f"{record.getMessage()} {record.__dict__}", record
