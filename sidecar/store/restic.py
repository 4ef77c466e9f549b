"""A restic repository driven through restic itself, as a child process (BACKUP_FORMAT=restic).

What restic stores is restic's business: this module never reads the repository's files.
It runs `restic --json ...` with the password in a 0600 file created for that child and
removed when it ends (`RESTIC_PASSWORD_FILE`, `RESTIC_FROM_PASSWORD_FILE` for `copy` and
`init`'s source repository): never an argument (`ps` shows those) nor in the child's
environment (`/proc/PID/environ`). The file is in the repository's `secrets_dir` (the
sidecar's `.sidecar/workers`, whose stale `*.keys` recovery removes; else the temporary
folder). It parses the JSON through sidecar/core/snapshots.py and turns a failure into
ResticError with restic's own words.

The local repository is `BACKUP_DIR/restic` (0700); `ensure` creates it on first use under
a file lock, so two processes never both run `init`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from sidecar.core.config import LocalConfig, RcloneConfig, S3Config
from sidecar.core.errors import ResticError
from sidecar.core.values import without_userinfo
from sidecar.core.errors import ArchiveError
from sidecar.core.snapshots import (
    BackupSummary,
    Forgotten,
    Snapshot,
    parse_backup_line,
    parse_forget,
    parse_snapshots,
    summary_of,
)

logger = logging.getLogger(__name__)

REPO_FOLDER = "restic"  # under BACKUP_DIR
BINARY = "restic"
TIMEOUT = 24 * 3600.0  # seconds one restic command may run (a first backup of a large volume)
_TAIL = 2000  # characters of restic's stderr kept for a message
# A password in our own view of a child's environment -> the variable naming its file instead.
SECRET_FILES = {"RESTIC_PASSWORD": "RESTIC_PASSWORD_FILE", "RESTIC_FROM_PASSWORD": "RESTIC_FROM_PASSWORD_FILE"}


@dataclass(frozen=True)
class RunResult:
    stdout: str
    stderr: str
    seconds: float


@dataclass(frozen=True)
class LockInfo:
    id: str
    hostname: str
    pid: int
    exclusive: bool
    time: str


class Repository:
    """One restic repository: a local folder or any location restic accepts (`s3:...`)."""

    def __init__(self, location: str, password: str, env: Mapping[str, str] | None = None,
                 binary: str = BINARY, secrets_dir: Path | None = None):
        if not password:
            raise ResticError(f"restic repository {location}: no password (set RESTIC_PASSWORD_FILE or "
                              "RESTIC_PASSWORD)")
        self.location, self._password, self._env, self.binary = location, password, dict(env or {}), binary
        self.secrets_dir = secrets_dir

    def __repr__(self) -> str:  # never the password
        return f"Repository({self.location!r})"

    @property
    def local_path(self) -> Path | None:
        """The folder, for a local repository (None: a remote one)."""
        return Path(self.location) if self.location.startswith("/") else None

    @property
    def password(self) -> str:
        return self._password

    def environment(self) -> dict[str, str]:
        """The child's environment as this process sees it: ours without restic's own
        variables, plus the password (moved into a file when a child starts: _spawn)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
        env.update(self._env)
        env["RESTIC_PASSWORD"] = self._password
        return env

    def run(self, *args: str, stdin: Iterable[bytes] | None = None, timeout: float = TIMEOUT,
            on_line=None) -> RunResult:
        """`restic -r LOCATION --no-cache ARGS`; raises ResticError when it fails. `stdin`:
        chunks written to its standard input (a dump); `on_line`: called with each stdout
        line as it comes (the result then has no stdout)."""
        started = time.monotonic()
        with self._spawn(list(args), stdin is not None) as (proc, errors, reader):
            out: list[bytes] = []
            writer = None
            if stdin is not None:
                failure: list[BaseException] = []
                writer = threading.Thread(target=_feed, args=(proc, stdin, failure), daemon=True)
                writer.start()
            for raw in proc.stdout:
                if on_line is not None:
                    on_line(raw.decode("utf-8", "replace").rstrip("\n"))
                else:
                    out.append(raw)
            if writer is not None:
                writer.join()
                if failure:  # the dump's source failed: restic must not keep a snapshot of half a dump
                    proc.kill()
                    proc.wait()
                    raise failure[0]
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise ResticError(f"restic {args[0]} on {self.location} ran past {timeout:g} s and was killed")
            reader.join()
        stderr = b"".join(errors).decode("utf-8", "replace")
        if code != 0:
            raise ResticError(f"restic {args[0]} on {self.location} failed (exit {code}): "
                              f"{stderr.strip()[-_TAIL:] or 'no output'}")
        return RunResult(b"".join(out).decode("utf-8", "replace"), stderr, time.monotonic() - started)

    @contextlib.contextmanager
    def _spawn(self, args: list[str], stdin: bool) -> Iterator[tuple[subprocess.Popen, list[bytes],
                                                                     threading.Thread]]:
        """`restic -r LOCATION --no-cache ARGS` started, its stderr read by a thread into the
        list; killed and reaped on the way out if it still runs."""
        argv = [self.binary, "-r", self.location, "--no-cache", *args]
        with secret_files(self.environment(), self.secrets_dir) as env:
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            except OSError as exc:
                raise ResticError(f"restic cannot run ({exc.strerror}): install restic (Debian's package `restic`) "
                                  "or use BACKUP_FORMAT=archive") from exc
            try:
                errors: list[bytes] = []
                reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
                reader.start()
                yield proc, errors, reader
            finally:
                _reap(proc)

    # --- the repository ---------------------------------------------------------------
    def exists(self) -> bool:
        local = self.local_path
        if local is not None:
            return (local / "config").is_file()
        try:
            self.run("cat", "config", timeout=300)
        except ResticError:
            return False
        return True

    def ensure(self, lock_dir: Path, chunker_from: "Repository | None" = None) -> bool:
        """Create the repository when there is none (True: it was created). `chunker_from`:
        a repository whose chunker parameters the new one takes, so deduplication holds
        across `restic copy`. `lock_dir`: where the lock file that serialises `init` lives."""
        lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(lock_dir / "restic-init.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.exists():
                return False
            local = self.local_path
            if local is not None:
                local.parent.mkdir(parents=True, exist_ok=True)
                local.mkdir(mode=0o700, exist_ok=True)
                os.chmod(local, 0o700)
            args = ["init"]
            env = {}
            if chunker_from is not None:
                args += ["--copy-chunker-params", "--from-repo", chunker_from.location]
                env = {**chunker_from._env, "RESTIC_FROM_PASSWORD": chunker_from._password}
            _with_env(self, env).run(*args, timeout=600)
            logger.info("restic repository created", extra={"repository": self.location})
            return True

    def snapshots(self, tag: str | None = None, host: str | None = None) -> list[Snapshot]:
        args = ["snapshots", "--json"] + (["--tag", tag] if tag else []) + (["--host", host] if host else [])
        return parse_snapshots(self.run(*args, timeout=600).stdout)

    def backup(self, args: list[str], stdin: Iterable[bytes] | None = None) -> BackupSummary:
        """`restic backup --json ARGS` here (a dump on stdin); returns its summary."""
        found: list[BackupSummary] = []

        def line(text: str) -> None:
            record = parse_backup_line(text)
            summary = summary_of(record) if record is not None else None
            if summary is not None:
                found.append(summary)

        self.run("backup", "--json", *args, stdin=stdin, on_line=line)
        if not found:
            raise ResticError(f"restic backup on {self.location} printed no summary")
        return found[-1]

    def dump(self, snapshot: str, path: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """`restic dump SNAPSHOT PATH`: one file's bytes, streamed as restic writes them.
        Raises ResticError (after the last chunk) when restic fails: the reader must
        not keep what it took before that."""
        with self._spawn(["--no-lock", "dump", snapshot, path], False) as (proc, errors, reader):
            while chunk := proc.stdout.read(chunk_size):
                yield chunk
            code = proc.wait()
            reader.join()
        if code != 0:
            stderr = b"".join(errors).decode("utf-8", "replace").strip()
            raise ResticError(f"restic dump {snapshot[:8]} {path} on {self.location} failed (exit {code}): "
                              f"{stderr[-_TAIL:] or 'no output'}")

    def forget(self, tags: Sequence[str], host: str, keep_args: tuple[str, ...], prune: bool = False) -> Forgotten:
        """One `restic forget` of the snapshots matching any of `tags` (each a `--tag`: one
        per target item, so one restic start and key derivation for all of them) by the
        keep rules, per group of host and tags; what it kept and removed."""
        args = ["forget", "--json", *(arg for tag in tags for arg in ("--tag", tag)), "--host", host,
                "--group-by", "host,tags", *keep_args]
        result = self.run(*args, *(["--prune"] if prune else []))
        try:
            return parse_forget(result.stdout)
        except ArchiveError as err:
            raise ResticError(f"restic forget on {self.location}: {err}") from err

    def prune(self) -> RunResult:
        return self.run("prune")

    def check(self, subset: str | None = None) -> RunResult:
        return self.run("check", *([f"--read-data-subset={subset}"] if subset else []))

    def unlock(self) -> RunResult:
        """Removes stale locks only (restic's default: locks whose process is gone on this
        host, or older than 30 minutes); a live lock of another host stays."""
        return self.run("unlock", timeout=600)

    def locks(self) -> list["LockInfo"]:
        """The repository's locks as restic reads them (without taking one)."""
        ids = self.run("list", "locks", "--no-lock", timeout=600).stdout.split()
        found = []
        for lock_id in ids:
            try:
                doc = json.loads(self.run("cat", "lock", lock_id, "--no-lock", timeout=600).stdout)
            except (ResticError, ValueError):
                continue  # removed meanwhile (its run ended), or not a lock restic can read
            found.append(LockInfo(lock_id, str(doc.get("hostname") or ""), int(doc.get("pid") or 0),
                                  bool(doc.get("exclusive")), str(doc.get("time") or "")))
        return found

    def stats(self, mode: str = "raw-data") -> dict:
        result = self.run("stats", "--json", "--mode", mode, timeout=3600)
        try:
            return json.loads(result.stdout)
        except ValueError as exc:
            raise ResticError(f"restic stats on {self.location} printed no JSON: {result.stdout[:200]!r}") from exc

    def copy_from(self, source: "Repository", tag: str | None = None, snapshot: str | None = None) -> RunResult:
        """`restic copy`: snapshots of `source` (with `tag`, or the one `snapshot`) this
        repository lacks; only blobs it lacks travel."""
        env = {**source._env, "RESTIC_FROM_PASSWORD": source._password}
        return _with_env(self, env).run("copy", "--from-repo", source.location, *(["--tag", tag] if tag else []),
                                        *([snapshot] if snapshot else []))


def destination_repository(config: S3Config | RcloneConfig | LocalConfig, password: str,
                           secrets_dir: Path | None = None) -> Repository:
    """The repository of its own that a destination holds (`restic` under its root):
    `s3:ENDPOINT/BUCKET/PREFIX/restic` with the S3 settings' keys, `rclone:REMOTE:PATH/restic`
    with the RCLONE_* variables, `ROOT/restic` on a mounted disk."""
    if isinstance(config, S3Config):
        endpoint = (config.endpoint_url or "https://s3.amazonaws.com").rstrip("/")
        if "@" in endpoint.split("//", 1)[-1].split("/", 1)[0]:
            raise ResticError(f"S3_ENDPOINT_URL={without_userinfo(endpoint)!r} carries credentials in the URL, which "
                              "restic does not read: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead")
        path = "/".join(p for p in (config.bucket, config.prefix, REPO_FOLDER) if p)
        env = {}
        if config.access_key_id and config.secret_access_key:
            env.update(AWS_ACCESS_KEY_ID=config.access_key_id, AWS_SECRET_ACCESS_KEY=config.secret_access_key)
        if config.region:
            env["AWS_DEFAULT_REGION"] = config.region
        return Repository(f"s3:{endpoint}/{path}", password, env, secrets_dir=secrets_dir)
    if isinstance(config, RcloneConfig):
        path = "/".join(p for p in (config.path, REPO_FOLDER) if p)
        return Repository(f"rclone:{config.remote}:{path}", password, dict(config.env), secrets_dir=secrets_dir)
    return Repository(str(Path(config.root) / REPO_FOLDER), password, secrets_dir=secrets_dir)


def _with_env(repo: Repository, extra: Mapping[str, str]) -> Repository:
    return Repository(repo.location, repo._password, {**repo._env, **extra}, repo.binary, repo.secrets_dir)


@contextlib.contextmanager
def secret_files(env: Mapping[str, str], folder: Path | None) -> Iterator[dict[str, str]]:
    """`env` with each password (SECRET_FILES) moved into a 0600 file of `folder` (None:
    the temporary folder), named `restic-ID.keys`, removed on the way out."""
    out, made = dict(env), []
    try:
        for variable, file_variable in SECRET_FILES.items():
            secret = out.pop(variable, None)
            if secret is None:
                continue
            where = folder if folder is not None else Path(tempfile.gettempdir())
            where.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = where / f"restic-{uuid.uuid4().hex}.keys"
            made.append(path)  # before it exists: removed whatever happens next
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secret)
            out[file_variable] = str(path)
        yield out
    finally:
        for path in made:
            path.unlink(missing_ok=True)


def _feed(proc: subprocess.Popen, chunks: Iterable[bytes], failure: list[BaseException]) -> None:
    try:
        for chunk in chunks:
            proc.stdin.write(chunk)
    except BrokenPipeError:
        pass  # restic ended early: its exit code says why
    except BaseException as exc:  # the source's error (a failed dump, a cancel) goes to the caller
        failure.append(exc)
        proc.kill()  # before stdin closes: an end of input would make restic save half a dump
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()


def _reap(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def repository_bytes(path: Path) -> int:
    """Disk use of a local repository (its files' sizes)."""
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total
