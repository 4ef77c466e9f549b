"""The off-site copy of archives in S3 (AWS or any S3-compatible store: MinIO, B2, Wasabi,
R2, SeaweedFS): upload with the store checking every byte, server-side copy for
promotions, listing, verified download, batch delete. A storage layer: no Docker, no
settings; the caller passes an S3Config.

Objects live at "{prefix}/{relpath}", relpath being the archive's path under BACKUP_DIR
("daily/NAME"). Each carries its SHA-256 in the user metadata "sha256" (the same digest as
the NAME.sha256 file), so a download is checked against the digest written at backup time.

What "verified" means for an upload:
  1. the local file is hashed first and must match the given sha256 (an archive that no
     longer matches its checksum file is never sent off-site);
  2. every request carries x-amz-checksum-sha256 (ChecksumAlgorithm="SHA256"): the store
     refuses a part or object whose bytes arrived different (BadDigest);
  3. afterwards HeadObject must show the same size and the same "sha256" metadata, and,
     when the store reports its own SHA-256 checksum, exactly the value our bytes give
     (the plain digest for a single PUT; for a multipart upload the composite one:
     SHA-256 of the parts' digests, "-N").
Stores that refuse flexible checksums can be used with `checksum_algorithm=None`: steps 1
and 3 (size and metadata) still apply.

Retries: botocore's own "standard" retry mode (S3_ATTEMPTS attempts per request:
connection errors, timeouts, HTTP 5xx, throttling, with its capped exponential backoff
and jitter). We only wrap its decision to log each retry as a warning and to do the
waiting through an injectable sleep. A multipart upload that fails is aborted by
s3transfer and the next sync starts over; if the store is unreachable even the abort
fails, and the parts stay on the store until a lifecycle rule
(AbortIncompleteMultipartUpload) removes them.

Errors: every failure becomes DestinationError, DestinationUnreachable when the store did
not answer or kept failing through every attempt (decided from botocore's typed errors,
never from message text), ChecksumMismatch for a file or download whose bytes do not
match; each names the operation, bucket, key and endpoint with the store's explanation,
and never the credentials.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Callable, Sequence, TypeVar
from urllib.parse import urlsplit, urlunsplit

import boto3
import boto3.exceptions
import boto3.s3.transfer
import botocore.config
import botocore.exceptions
import botocore.retries.standard
from s3transfer.utils import ChunksizeAdjuster

from ..core.config import S3Config
from ..core.errors import ChecksumMismatch, DestinationError, DestinationUnreachable
from ..core.fsutil import fsync_dir
from ..core.naming import PARTIAL_SUFFIX
from ..core.values import userinfo_parts
from .base import RemoteObject

logger = logging.getLogger(__name__)

T = TypeVar("T")

READ_SIZE = 1 << 20
MAX_COPY_OBJECT = 5 * 1024**3  # larger objects are copied part by part (UploadPartCopy)
DELETE_BATCH = 1000  # DeleteObjects' limit
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_RETRY_HANDLER_ID = "retry-config-s3"  # the unique id botocore registers its retry handler under
# Phases of requests that are not about one object (retry log records name the phase).
_BUCKET_PHASES = {"HeadBucket": "check", "ListObjectsV2": "list", "DeleteObjects": "delete"}


def _explain(exc: BaseException) -> str:
    """The store's explanation of a failure, without request details."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {}) or {}
        code = str(error.get("Code", "") or "")
        message = str(error.get("Message", "") or "")
        status = (exc.response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode")
        if code and not code.isdigit():
            text = f"{code}: {message}" if message else code
        else:
            text = message or code or "no explanation"
        return f"{text} (HTTP {status})" if status else text
    return str(exc) or type(exc).__name__


def _status(exc: BaseException) -> int | None:
    if isinstance(exc, botocore.exceptions.ClientError):
        return (exc.response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode")
    return None


def _code(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str((exc.response.get("Error", {}) or {}).get("Code", "") or "")
    return ""


def _unwrap(exc: BaseException) -> BaseException:
    # boto3's upload_file turns a ClientError into S3UploadFailedError (chained implicitly).
    if isinstance(exc, boto3.exceptions.S3UploadFailedError):
        inner = exc.__cause__ or exc.__context__
        if inner is not None:
            return inner
    return exc


def _unreachable(exc: BaseException) -> bool:
    """The store did not answer, or kept answering "not now", through every attempt."""
    if isinstance(exc, botocore.exceptions.SSLError):
        return False  # a certificate problem: the store answers, the configuration is wrong
    if isinstance(exc, (botocore.exceptions.ConnectionError,  # refused, connect timeout, proxy
                        botocore.exceptions.HTTPClientError)):  # read timeout, connection closed
        return True
    status = _status(exc) or 0
    return status >= 500 or status == 429


def _attempts_made(exc: BaseException) -> int | None:
    if isinstance(exc, botocore.exceptions.ClientError):
        retries = (exc.response.get("ResponseMetadata", {}) or {}).get("RetryAttempts")
        return retries + 1 if isinstance(retries, int) else None
    return None


def _remember_key(params, context, **_kwargs) -> None:
    """botocore event hook: keep the request's object key where the retry hook sees it."""
    context["sidecar_key"] = params.get("Key", "") if isinstance(params, dict) else ""


def _safe_endpoint(url: str) -> str:
    """The endpoint without any user:password@ part."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _scrub_chain(exc: BaseException | None, scrub: Callable[[str], str]) -> None:
    """Scrub the messages of an exception and of those it chains to, in place: botocore
    quotes the endpoint URL (with its user:password@) in its errors, and our errors keep
    them as their cause, which a traceback prints."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.args = tuple(scrub(a) if isinstance(a, str) else a for a in exc.args)
        kwargs = getattr(exc, "kwargs", None)  # BotoCoreError formats its message from these
        if isinstance(kwargs, dict):
            exc.kwargs = {k: scrub(v) if isinstance(v, str) else v for k, v in kwargs.items()}
        exc = exc.__cause__ or exc.__context__


def _expected_checksum(path: Path, size: int, part_size: int) -> tuple[str, str]:
    """(hex SHA-256 of the file, the SHA-256 checksum the store should report) in one read.
    s3transfer sends a file of `part_size` or more as parts of `part_size` (adjusted to
    S3's limits), whose checksum is the SHA-256 of the parts' digests with "-N"."""
    whole = hashlib.sha256()
    multipart = size >= part_size
    chunk = ChunksizeAdjuster().adjust_chunksize(part_size, size) if multipart else max(size, 1)
    part = hashlib.sha256()
    in_part = 0
    digests: list[bytes] = []
    with open(path, "rb") as f:
        while block := f.read(min(READ_SIZE, chunk - in_part)):
            whole.update(block)
            part.update(block)
            in_part += len(block)
            if in_part == chunk:
                digests.append(part.digest())
                part, in_part = hashlib.sha256(), 0
    if in_part or not digests:
        digests.append(part.digest())
    if not multipart:
        return whole.hexdigest(), base64.b64encode(whole.digest()).decode()
    composite = base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode()
    return whole.hexdigest(), f"{composite}-{len(digests)}"


class S3Destination:
    """One bucket (and prefix) of an S3 store, the "s3" destination. Thread-safe: boto3
    clients are."""

    name = "s3"

    def __init__(self, config: S3Config, sleep: Callable[[float], None] = time.sleep):
        if (config.access_key_id is None) != (config.secret_access_key is None):
            raise DestinationError("S3 credentials: give both the access key id and the secret, or neither "
                                   "(to use the environment, a profile or an instance role)", destination="s3")
        if config.part_size < 5 * 1024 * 1024:
            raise DestinationError(f"S3 part size {config.part_size} is too small: S3 needs at least 5 MiB "
                                   "(5242880)", destination="s3")
        if config.attempts < 1 or config.max_concurrency < 1:
            raise DestinationError("S3 attempts and max_concurrency must be at least 1", destination="s3")
        self.config = config
        self._sleep = sleep
        self._base = "/".join(p for p in config.prefix.split("/") if p)
        self._where = (f"endpoint {_safe_endpoint(config.endpoint_url)}" if config.endpoint_url
                       else f"AWS S3 ({config.region or 'default region'})")
        self._secrets = [s for s in (config.secret_access_key, config.access_key_id) if s and len(s) >= 4]
        # The endpoint's user:password@ whole, then its pieces (any length: they are a password).
        self._secrets += list(userinfo_parts(config.endpoint_url or ""))
        self._secrets.sort(key=len, reverse=True)  # a secret containing another is masked whole
        self._inflight: dict[str, tuple[str, int | None]] = {}  # key -> (phase, bytes), for retry logs
        self._tries: dict[str, int] = {}  # key ("" for bucket requests) -> attempts of its last failure
        self._guard = threading.Lock()
        options = dict(
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            retries={"mode": "standard", "total_max_attempts": config.attempts},
            s3={"addressing_style": "path" if config.path_style else "auto"},
            max_pool_connections=max(10, config.max_concurrency * 2),
            user_agent_extra="backup-sidecar",
        )
        if config.checksum_algorithm is None and "request_checksum_calculation" in botocore.config.Config.OPTION_DEFAULTS:
            # botocore >= 1.36 adds CRC32 checksums by default, which some stores refuse.
            options.update(request_checksum_calculation="when_required", response_checksum_validation="when_required")
        session = boto3.session.Session()  # not the shared default session: not thread-safe
        #: The boto3 client (tests hook its events).
        self.client = session.client(
            "s3",
            endpoint_url=config.endpoint_url,
            region_name=config.region,
            aws_access_key_id=config.access_key_id,
            aws_secret_access_key=config.secret_access_key,
            config=botocore.config.Config(**options),
        )
        self._log_retries()
        self._transfer = boto3.s3.transfer.TransferConfig(
            multipart_threshold=config.part_size,
            multipart_chunksize=config.part_size,
            max_concurrency=config.max_concurrency,
            use_threads=config.max_concurrency > 1,
        )
        # Copies up to 5 GiB are one CopyObject (keeps the checksum); larger ones go part
        # by part, s3transfer carrying the metadata over.
        self._copy_transfer = boto3.s3.transfer.TransferConfig(
            multipart_threshold=MAX_COPY_OBJECT,
            multipart_chunksize=max(config.part_size, 256 * 1024 * 1024),
            max_concurrency=config.max_concurrency,
            use_threads=config.max_concurrency > 1,
        )

    # --- names -----------------------------------------------------------------------
    def key(self, relpath: str) -> str:
        rel = "/".join(p for p in relpath.split("/") if p)
        if not rel or any(p in (".", "..") for p in rel.split("/")):
            raise DestinationError(f"S3: {relpath!r} is not a valid archive path (expected e.g. daily/NAME)")
        return f"{self._base}/{rel}" if self._base else rel

    def relpath(self, key: str) -> str:
        return key[len(self._base) + 1:] if self._base else key

    def url(self, relpath: str) -> str:
        return f"s3://{self.config.bucket}/{self.key(relpath)}"

    def describe(self, relpath: str = "") -> str:
        if not relpath:
            return f"s3://{self.config.bucket}/{self._base + '/' if self._base else ''}"
        return self.url(relpath)

    # --- operations --------------------------------------------------------------------
    def check(self) -> None:
        """The bucket exists and these credentials may use it."""
        def op() -> None:
            self.client.head_bucket(Bucket=self.config.bucket)

        try:
            self._call("check", None, op)
        except DestinationError as exc:
            cause = exc.__cause__
            status = _status(cause) if cause is not None else None
            hint = {404: "the bucket does not exist",
                    403: "access denied: check the credentials and the bucket's policy",
                    301: "the bucket is in another region: set the region"}.get(status or 0)
            if hint:
                raise type(exc)(self._scrub(f"{exc}; {hint}"), operation="check",
                                destination=self.name) from cause
            raise
        logger.info("S3 bucket reachable", extra={"phase": "check", "bucket": self.config.bucket})

    def upload(self, path: Path, relpath: str, sha256: str) -> RemoteObject:
        """Send a finished archive; returns the object once verified (see the module
        docstring). Raises ChecksumMismatch when the file does not match `sha256`."""
        key = self.key(relpath)
        sha256 = sha256.lower()
        started = time.monotonic()
        try:
            size = path.stat().st_size
            local, expected_checksum = _expected_checksum(path, size, self.config.part_size)
        except OSError as exc:
            raise DestinationError(f"S3 upload of {path} to {self.url(relpath)}: cannot read the file: {exc.strerror}",
                              operation="upload", destination=self.name, key=key) from exc
        if local != sha256:
            raise ChecksumMismatch(f"{path}: SHA-256 is {local}, expected {sha256}; not uploading it")
        extra: dict = {"Metadata": {"sha256": sha256}}
        if self.config.checksum_algorithm:
            extra["ChecksumAlgorithm"] = self.config.checksum_algorithm
        if self.config.storage_class:
            extra["StorageClass"] = self.config.storage_class

        def op() -> None:
            self.client.upload_file(str(path), self.config.bucket, key, ExtraArgs=extra, Config=self._transfer)

        self._call("upload", key, op, size=size)
        obj = self._head(key, "upload", checksum=True)
        problems = []
        if obj is None:
            problems.append("the object is missing")
        else:
            remote, checksum = obj
            if remote.size != size:
                problems.append(f"size is {remote.size}, the file has {size}")
            if remote.sha256 != sha256:
                problems.append(f"sha256 metadata is {remote.sha256!r}, expected {sha256}")
            if self.config.checksum_algorithm == "SHA256" and checksum is not None and checksum != expected_checksum:
                problems.append(f"the store's SHA-256 checksum is {checksum}, our bytes give {expected_checksum}")
        if problems:
            raise DestinationError(self._scrub(f"S3 upload of {path} to {self.url(relpath)} ({self._where}) "
                                          f"failed verification: {'; '.join(problems)}"),
                              operation="upload", destination=self.name, key=key)
        seconds = time.monotonic() - started
        logger.info("archive uploaded to S3", extra={
            "phase": "upload", "bucket": self.config.bucket, "key": key, "bytes": size,
            "seconds": round(seconds, 3), "multipart": size >= self.config.part_size})
        return remote

    def copy(self, src_relpath: str, dst_relpath: str) -> RemoteObject:
        """Server-side copy keeping the metadata (promotions: no second upload). Objects
        over 5 GiB are copied part by part."""
        src_key, dst_key = self.key(src_relpath), self.key(dst_relpath)
        started = time.monotonic()
        src = self.head(src_relpath)
        if src is None:
            raise DestinationError(f"S3 copy of {self.url(src_relpath)} ({self._where}) failed: the source does not exist",
                              operation="copy", destination=self.name, key=src_key)
        extra: dict = {"MetadataDirective": "COPY"}
        if self.config.storage_class:
            extra["StorageClass"] = self.config.storage_class

        def op() -> None:
            self.client.copy({"Bucket": self.config.bucket, "Key": src_key}, self.config.bucket, dst_key,
                             ExtraArgs=extra, Config=self._copy_transfer)

        self._call("copy", dst_key, op, size=src.size)
        found = self._head(dst_key, "copy")
        dst = found[0] if found else None
        if dst is None or dst.size != src.size or dst.sha256 != src.sha256:
            got = "nothing" if dst is None else f"size {dst.size}, sha256 {dst.sha256!r}"
            raise DestinationError(f"S3 copy of {self.url(src_relpath)} to {self.url(dst_relpath)} ({self._where}) "
                              f"failed verification: expected size {src.size}, sha256 {src.sha256!r}; found {got}",
                              operation="copy", destination=self.name, key=dst_key)
        logger.info("archive copied in S3", extra={
            "phase": "copy", "bucket": self.config.bucket, "key": dst_key, "source": src_key,
            "bytes": dst.size, "seconds": round(time.monotonic() - started, 3)})
        return dst

    def head(self, relpath: str) -> RemoteObject | None:
        found = self._head(self.key(relpath), "head")
        return found[0] if found else None

    def list(self, under: str = "", page_size: int = 1000) -> list[RemoteObject]:
        """Objects whose relpath starts with `under` ("daily/" for a folder), in key order;
        sha256 is None (listings carry no metadata)."""
        base = f"{self._base}/" if self._base else ""
        prefix = base + under.lstrip("/")

        def op() -> list[RemoteObject]:
            found = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.config.bucket, Prefix=prefix,
                                           PaginationConfig={"PageSize": page_size}):
                for item in page.get("Contents", []) or []:
                    key = item["Key"]
                    if key.endswith("/") or not key.startswith(base) or key == base:
                        continue  # folder markers some tools create
                    found.append(RemoteObject(self.relpath(key), key, int(item["Size"]),
                                              item["LastModified"], None))
            return found

        found = self._call("list", prefix or "(all)", op)
        logger.debug("S3 listing", extra={"phase": "list", "bucket": self.config.bucket, "key": prefix,
                                          "objects": len(found)})
        return found

    def download(self, relpath: str, dest: Path, file_mode: int = 0o600) -> RemoteObject:
        """Fetch an object to `dest` through `dest.partial`, hashing while writing; the file
        appears only when its SHA-256 matches the object's metadata."""
        key = self.key(relpath)
        partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
        started = time.monotonic()

        def op() -> RemoteObject:
            response = self.client.get_object(Bucket=self.config.bucket, Key=key)
            body = response["Body"]
            try:
                expected = (response.get("Metadata", {}) or {}).get("sha256", "").lower()
                if not _SHA256_RE.match(expected):
                    raise DestinationError(f"S3 download of {self.url(relpath)} ({self._where}): the object has no "
                                      f"sha256 metadata; refusing a download that cannot be verified",
                                      operation="download", destination=self.name, key=key)
                sha = hashlib.sha256()
                size = 0
                dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, file_mode)
                try:
                    os.fchmod(fd, file_mode)
                    with os.fdopen(fd, "wb", closefd=False) as out:
                        for chunk in body.iter_chunks(READ_SIZE):
                            sha.update(chunk)
                            size += len(chunk)
                            out.write(chunk)
                        out.flush()
                        os.fsync(fd)
                finally:
                    os.close(fd)
            finally:
                body.close()
            if sha.hexdigest() != expected:
                raise ChecksumMismatch(f"{self.url(relpath)}: downloaded SHA-256 is {sha.hexdigest()}, the "
                                       f"object's sha256 metadata says {expected}")
            return RemoteObject(relpath, key, size, response["LastModified"], expected)

        try:
            obj = self._call("download", key, op, cleanup=lambda: _unlink(partial))
            os.replace(partial, dest)
            fsync_dir(dest.parent)
        except BaseException:
            _unlink(partial)
            raise
        logger.info("archive downloaded from S3", extra={
            "phase": "download", "bucket": self.config.bucket, "key": key, "bytes": obj.size,
            "seconds": round(time.monotonic() - started, 3), "path": str(dest)})
        return obj

    def delete(self, relpaths: Sequence[str]) -> None:
        """Delete objects (missing ones count as deleted); every refusal is reported."""
        keys = [self.key(r) for r in relpaths]
        errors: list[str] = []
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start:start + DELETE_BATCH]

            def op(batch=batch) -> list[dict]:
                response = self.client.delete_objects(
                    Bucket=self.config.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
                return response.get("Errors", []) or []

            for item in self._call("delete", batch[0] if len(batch) == 1 else f"{len(batch)} keys from {batch[0]}", op):
                errors.append(f"{item.get('Key')}: {item.get('Code')}: {item.get('Message')}")
        if errors:
            shown = "; ".join(errors[:10]) + (f"; and {len(errors) - 10} more" if len(errors) > 10 else "")
            raise DestinationError(self._scrub(f"S3 delete in bucket {self.config.bucket!r} ({self._where}) failed for "
                                          f"{len(errors)} of {len(keys)} objects: {shown}"),
                              operation="delete", destination=self.name)
        logger.info("archives deleted from S3", extra={"phase": "delete", "bucket": self.config.bucket,
                                                       "objects": len(keys)})

    # --- internals -----------------------------------------------------------------------
    def _head(self, key: str, phase: str, checksum: bool = False) -> tuple[RemoteObject, str | None] | None:
        args = {"Bucket": self.config.bucket, "Key": key}
        if checksum and self.config.checksum_algorithm:
            args["ChecksumMode"] = "ENABLED"

        def op():
            try:
                return self.client.head_object(**args)
            except botocore.exceptions.ClientError as exc:
                if _status(exc) == 404 or _code(exc) in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise

        response = self._call(phase, key, op)
        if response is None:
            return None
        sha = (response.get("Metadata", {}) or {}).get("sha256")
        obj = RemoteObject(self.relpath(key), key, int(response["ContentLength"]), response["LastModified"],
                           sha.lower() if sha else None)
        return obj, response.get("ChecksumSHA256")

    def _call(self, phase: str, key: str | None, op: Callable[[], T], size: int | None = None,
              cleanup: Callable[[], None] | None = None) -> T:
        """Run one operation (botocore retries each of its requests) and turn a failure
        into DestinationError or DestinationUnreachable; bugs are re-raised as they are."""
        if key:
            with self._guard:
                self._inflight[key] = (phase, size)
        try:
            return op()
        except (DestinationError, ChecksumMismatch):
            raise
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, boto3.exceptions.Boto3Error,
                OSError) as exc:
            cause = _unwrap(exc)
            if cleanup is not None:
                cleanup()
            with self._guard:
                recorded = self._tries.pop(key or "", None) or self._tries.pop("", None)
            tries = _attempts_made(cause) or recorded or 1
            where = f"s3://{self.config.bucket}/{key}" if key else f"bucket {self.config.bucket!r}"
            after = f" after {tries} attempts" if tries > 1 else ""
            error = DestinationUnreachable if _unreachable(cause) else DestinationError
            _scrub_chain(exc, self._scrub)
            raise error(self._scrub(f"S3 {phase} of {where} ({self._where}) failed{after}: {_explain(cause)}"),
                        destination=self.name, operation=phase, key=key or "") from cause
        finally:
            if key:
                with self._guard:
                    self._inflight.pop(key, None)

    def _log_retries(self) -> None:
        """Put a logging wrapper around botocore's standard retry handler: each retry is a
        warning naming the phase, key, attempt and delay, and the wait goes through
        `self._sleep` (botocore then sleeps 0)."""
        events = self.client.meta.events
        events.register("before-parameter-build.s3", _remember_key)
        events.unregister("needs-retry.s3", unique_id=_RETRY_HANDLER_ID)
        handler = botocore.retries.standard.register_retry_handler(self.client, max_attempts=self.config.attempts)
        events.unregister("needs-retry.s3", unique_id=_RETRY_HANDLER_ID)
        events.register("needs-retry.s3", functools.partial(self._needs_retry, handler), unique_id=_RETRY_HANDLER_ID)

    def _needs_retry(self, handler, **kwargs) -> float | None:
        delay = handler.needs_retry(**kwargs)
        response, caught = kwargs.get("response"), kwargs.get("caught_exception")
        status = response[0].status_code if response is not None else None
        if caught is None and (status or 0) < 400:
            return delay
        key = ((kwargs.get("request_dict") or {}).get("context") or {}).get("sidecar_key", "")
        attempt = kwargs["attempts"]
        with self._guard:
            phase, size = self._inflight.get(key, (_BUCKET_PHASES.get(kwargs["operation"].name, "request"), None))
            if delay is None and attempt > 1:  # the last attempt failed: its count goes in the error
                self._tries[key if key in self._inflight else ""] = attempt
        if delay is None:
            return None
        if caught is not None:
            explanation = self._scrub(_explain(caught))
        else:
            error = (response[1] or {}).get("Error", {}) or {}
            explanation = self._scrub(f"{error.get('Code', '')}: {error.get('Message', '')} (HTTP {status})")
        extra = {"phase": phase, "bucket": self.config.bucket, "key": key or None, "attempt": attempt,
                 "attempts": self.config.attempts, "delay_seconds": round(delay, 3), "error": explanation}
        if size is not None:
            extra["bytes"] = size
        logger.warning("S3 request failed; retrying", extra=extra)
        self._sleep(delay)
        return 0  # waited already; botocore retries at once (None would mean "do not retry")

    def _scrub(self, text: str) -> str:
        """`text` without the credentials: every message leaving this destination goes through here."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


