"""A destination on any rclone remote (SFTP, WebDAV, Azure, Dropbox, Google Drive, ... more
than 70 backends), driving the `rclone` binary as a child process, configured the rclone
way: the remote is defined in a mounted rclone.conf (`RCLONE_CONFIG`) or by
`RCLONE_CONFIG_<NAME>_<KEY>` variables, which settings.py hands over (with their _FILE
forms read) and which reach the child through its environment, never its command line.

Layout: the remote folder mirrors the backup volume: "daily/NAME" and beside it
"daily/NAME.sha256" (sha256sum's format, as on the backup volume). The checksum file is
written after the archive and removed before it: it marks a complete copy, so an upload
cut off half-way is neither listed nor restored, and the next sync sends it again.

Verification of an upload (decided per remote from `rclone backend features`):
  1. the local file is hashed first and must match the given sha256;
  2. `copyto` sends it straight from the archive file (no second temporary copy; rclone
     checks a hash it shares with the remote itself);
  3. afterwards `lsjson --stat --hash` must show the same size and, when the backend has
     a hash (sha256, else md5, else sha1: SFTP servers give md5), the value our bytes
     give; a backend without any hash (WebDAV) is checked by size;
  4. the .sha256 file is read back and must name our digest. Every download is checked
     against it byte for byte, so on a backend without a hash the content is verified
     when it matters (restore) and by `list`'s size check in between.

Retries and timeouts: rclone's own (`--retries`, `--low-level-retries`, `--contimeout`,
`--timeout`: defaults below unless RCLONE_RETRIES etc. are set), each retry logged as a
warning; a command that moves no archive has a wall-clock limit besides. Failures become
DestinationError, DestinationUnreachable when the remote did not answer: rclone's exit
code 5 (temporary) or a network error in its output (it exits 1 when it cannot connect
at all, so the exit code alone does not tell).

Secrets: every value of an rclone option named like a secret (pass, token, key, ...), in
the variables or in rclone.conf, plain and revealed (rclone "obscures" passwords with a
published key), is replaced by "***" in every message and log record that leaves here.
"""

from __future__ import annotations

import base64
import binascii
import configparser
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Callable, Sequence

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..core.config import RcloneConfig
from ..core.errors import ChecksumMismatch, DestinationError, DestinationUnreachable
from ..core.fsutil import fsync_dir
from ..core.naming import PARTIAL_SUFFIX
from ..core.values import userinfo_parts
from .base import RemoteObject

logger = logging.getLogger(__name__)

READ_SIZE = 1 << 20
CHECKSUM_SUFFIX = ".sha256"
HASH_PREFERENCE = ("sha256", "md5", "sha1")  # the first the backend has is checked after an upload
# Flags we set unless the user set rclone's own variable for them.
DEFAULT_FLAGS = (("RCLONE_RETRIES", "--retries", "3"), ("RCLONE_LOW_LEVEL_RETRIES", "--low-level-retries", "5"),
                 ("RCLONE_CONTIMEOUT", "--contimeout", "15s"), ("RCLONE_TIMEOUT", "--timeout", "60s"))
# Besides RCLONE_*, what the child needs from our environment (proxies rclone honours).
PASSED_ENV = ("PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy",
              "https_proxy", "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR")
EXIT_TEMPORARY = 5  # rclone: "temporary error (one that more retries might fix)"
NOT_FOUND_EXITS = (3, 4)  # directory not found, file not found
# Go's network errors as rclone prints them: the remote did not answer.
_NETWORK = re.compile(r"connection refused|i/o timeout|no route to host|network is unreachable|connection reset"
                      r"|no such host|server misbehaving|context deadline exceeded|TLS handshake timeout"
                      r"|broken pipe|unexpected EOF|timed out|503 Service Unavailable|502 Bad Gateway"
                      r"|504 Gateway Timeout", re.I)
_NOT_FOUND = re.compile(r"(directory|file|object) not found", re.I)  # an answer, not a failure to retry
# rclone option names whose values are secret (passwords, tokens, keys, signed URLs).
_SECRET_OPTION = re.compile(r"pass|secret|token|credentials|sas_url|pem|bearer|cookie|(^|_)key$|account_key"
                            r"|api_key|auth", re.I)
_ENV_OPTION = re.compile(r"RCLONE_CONFIG_(?P<remote>[A-Z0-9_.-]+?)_(?P<option>[A-Z0-9]+(?:_[A-Z0-9]+)*)$")
# rclone's obscure key (lib/obscure): public by design, it only keeps passwords from a glance.
_OBSCURE_KEY = bytes.fromhex("9c935b48730a554d6bfd7c63c886a92bd390198eb8128afbf4de162b8b95f638")
_MIN_SECRET = 4  # shorter values would mask ordinary words in messages


def reveal(value: str) -> str | None:
    """The plain text of an rclone-obscured value, or None when it is not one."""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(raw) < 16:
        return None
    decryptor = Cipher(algorithms.AES(_OBSCURE_KEY), modes.CTR(raw[:16])).decryptor()
    try:
        plain = (decryptor.update(raw[16:]) + decryptor.finalize()).decode()
    except UnicodeDecodeError:
        return None
    return plain if plain.isprintable() else None


def secret_values(env: dict[str, str], config_text: str | None) -> tuple[str, ...]:
    """What must never be shown: secret-named options of every remote (a crypt remote's
    errors can quote the remote it wraps), as written, revealed, and as URL user info;
    longest first, so a secret containing another is masked whole."""
    found: set[str] = set()

    def add(option: str, value: str) -> None:
        value = value.strip()
        if not value or value.lower() in ("true", "false"):
            return
        candidates = set(userinfo_parts(value))
        if _SECRET_OPTION.search(option):
            candidates |= {value, reveal(value) or ""}
            try:  # an OAuth token is JSON: its pieces may be quoted alone
                token = json.loads(value)
            except ValueError:
                token = None
            if isinstance(token, dict):
                candidates |= {str(v) for v in token.values()}
        found.update(c for c in candidates if len(c) >= _MIN_SECRET)

    for name, value in env.items():
        if name == "RCLONE_CONFIG_PASS":  # the password of an encrypted rclone.conf
            add("pass", value)
        elif (match := _ENV_OPTION.fullmatch(name)) is not None:
            add(match["option"].lower(), value)
    if config_text:
        parser = configparser.RawConfigParser(strict=False, interpolation=None)
        try:
            parser.read_string(config_text)
        except configparser.Error:
            parser = None  # an encrypted or broken file: rclone reports it
        for section in parser.sections() if parser is not None else ():
            for option, value in parser.items(section):
                add(option, value)
    return tuple(sorted(found, key=len, reverse=True))


class _Reader(threading.Thread):
    """Reads rclone's log (JSON lines on stderr) while it runs: progress and retries become
    our log records, errors are kept for the message."""

    def __init__(self, stream: IO[bytes], on_record: Callable[[dict], None]):
        super().__init__(daemon=True)
        self.stream = stream
        self.on_record = on_record
        self.lines: list[str] = []

    def run(self) -> None:
        for raw in iter(self.stream.readline, b""):
            line = raw.decode("utf-8", "replace").strip()
            try:
                record = json.loads(line) if line.startswith("{") else None
            except ValueError:
                record = None
            if not isinstance(record, dict):
                if line:
                    self.lines.append(line)
                continue
            if record.get("level") in ("error", "critical") and "stats" not in record:
                self.lines.append(str(record.get("msg", "")))
            self.on_record(record)


class RcloneDestination:
    """One folder of an rclone remote; named after the remote ("nas" for nas:backups/host1)."""

    def __init__(self, config: RcloneConfig, sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self.name = config.remote
        self._base = "/".join(p for p in config.path.split("/") if p)
        self._env = dict(config.env)
        self._secrets = secret_values(self._env, _config_text(self._env))
        self._hash: str | None | bool = False  # False: not asked yet
        self._guard = threading.Lock()

    # --- names -----------------------------------------------------------------------
    def key(self, relpath: str) -> str:
        rel = "/".join(p for p in relpath.split("/") if p)
        if not rel or any(p in (".", "..") for p in rel.split("/")):
            raise DestinationError(f"{self.name}: {relpath!r} is not a valid archive path (expected e.g. daily/NAME)",
                                   destination=self.name)
        return f"{self.config.remote}:{self._base + '/' if self._base else ''}{rel}"

    def describe(self, relpath: str = "") -> str:
        if relpath:
            return self.key(relpath)
        return f"{self.config.remote}:{self._base + '/' if self._base else ''}"

    # --- operations --------------------------------------------------------------------
    def check(self) -> None:
        """The remote is defined, answers, and its folder can be listed (or does not exist yet)."""
        self.hash_type()
        self._run(["lsjson", "--max-depth", "1", "--no-mimetype", self.describe()], "check", self.describe(),
                  allow_missing=True)
        logger.info("rclone remote reachable", extra={"phase": "check", "destination": self.name,
                                                      "remote": self.describe(), "hash": self.hash_type()})

    def hash_type(self) -> str | None:
        """The hash this remote's backend checks uploads with (None: size only)."""
        with self._guard:
            known = self._hash
        if known is not False:
            return known
        out = self._run(["backend", "features", self.describe()], "check", self.describe())
        try:
            hashes = [str(h).lower() for h in json.loads(out).get("Hashes") or []]
        except (ValueError, AttributeError):
            hashes = []
        chosen = next((h for h in HASH_PREFERENCE if h in hashes), None)
        with self._guard:
            self._hash = chosen
        return chosen

    def upload(self, path: Path, relpath: str, sha256: str) -> RemoteObject:
        """Send a finished archive straight from its file; verified (see the module docstring)."""
        key = self.key(relpath)
        sha256 = sha256.lower()
        started = time.monotonic()
        kind = self.hash_type()
        try:
            size = path.stat().st_size
            local, backend_hash = _hash_file(path, kind)
        except OSError as exc:
            raise DestinationError(f"{self.name}: upload of {path} to {key}: cannot read the file: {exc.strerror}",
                                   operation="upload", destination=self.name, key=key) from None
        if local != sha256:
            raise ChecksumMismatch(f"{path}: SHA-256 is {local}, expected {sha256}; not uploading it")
        self._delete_keys([key + CHECKSUM_SUFFIX])  # a replaced archive is incomplete until its checksum is back
        self._run(["copyto", "--ignore-times", *self._stats_flags(), str(path), key], "upload", key,
                  size=size, transfer=True)
        self._put_checksum(relpath, sha256)
        obj = self._verify("upload", relpath, size, sha256, kind, backend_hash)
        logger.info("archive uploaded", extra={"phase": "upload", "destination": self.name, "key": key,
                                               "bytes": size, "hash": kind or "size",
                                               "seconds": round(time.monotonic() - started, 3)})
        return obj

    def copy(self, src_relpath: str, dst_relpath: str) -> RemoteObject:
        """A promotion: server-side where the backend can, else streamed through rclone."""
        src = self.head(src_relpath)
        src_key, dst_key = self.key(src_relpath), self.key(dst_relpath)
        if src is None or src.sha256 is None:
            raise DestinationError(f"{self.name}: copy of {src_key} failed: the source (with its checksum) does not "
                                   "exist", operation="copy", destination=self.name, key=src_key)
        kind = self.hash_type()
        src_hash = self._stat(src_key, "copy", kind)
        self._delete_keys([dst_key + CHECKSUM_SUFFIX])
        self._run(["copyto", "--ignore-times", *self._stats_flags(), src_key, dst_key], "copy", dst_key,
                  size=src.size, transfer=True)
        self._put_checksum(dst_relpath, src.sha256)
        expected = (src_hash or {}).get("hashes", {}).get(kind) if kind else None
        obj = self._verify("copy", dst_relpath, src.size, src.sha256, kind, expected)
        logger.info("archive copied", extra={"phase": "copy", "destination": self.name, "key": dst_key,
                                             "source": src_key, "bytes": obj.size})
        return obj

    def list(self, under: str = "") -> list[RemoteObject]:
        """Complete copies (the archive and its .sha256) whose relpath starts with `under`;
        sha256 is None (reading every checksum file would cost a request each)."""
        out = self._run(["lsjson", "-R", "--files-only", "--no-mimetype", self.describe()], "list",
                        self.describe(), allow_missing=True)
        items = {i["Path"]: i for i in _json_list(out) if not i.get("IsDir")}
        found = []
        for rel, item in sorted(items.items()):
            if rel.endswith(CHECKSUM_SUFFIX) or rel.endswith(PARTIAL_SUFFIX) or rel + CHECKSUM_SUFFIX not in items:
                continue
            if rel.startswith(under.lstrip("/")):
                found.append(RemoteObject(rel, self.key(rel), int(item.get("Size", 0)),
                                          _time(item.get("ModTime")), None))
        logger.debug("rclone listing", extra={"phase": "list", "destination": self.name, "objects": len(found)})
        return found

    def head(self, relpath: str) -> RemoteObject | None:
        key = self.key(relpath)
        item = self._stat(key, "head")
        if item is None:
            return None
        return RemoteObject(relpath, key, item["size"], item["modified"], self._read_checksum(relpath, "head"))

    def download(self, relpath: str, dest: Path, file_mode: int = 0o600) -> RemoteObject:
        """Fetch through `dest.partial`, hashing while writing; `dest` appears only when the
        bytes match the copy's .sha256."""
        key = self.key(relpath)
        expected = self._read_checksum(relpath, "download")
        if expected is None:
            raise DestinationError(f"{self.name}: download of {key}: there is no {CHECKSUM_SUFFIX} beside it; refusing "
                                   "a download that cannot be verified", operation="download",
                                   destination=self.name, key=key)
        item = self._stat(key, "download")
        if item is None:
            raise DestinationError(f"{self.name}: download of {key}: the archive does not exist",
                                   operation="download", destination=self.name, key=key)
        partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        started = time.monotonic()
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, file_mode)
            with os.fdopen(fd, "wb") as out:
                os.fchmod(out.fileno(), file_mode)
                sha, size = self._stream(["cat", key], key, out, item["size"])
                out.flush()
                os.fsync(out.fileno())
            if sha != expected:
                raise ChecksumMismatch(f"{key}: downloaded SHA-256 is {sha}, its {CHECKSUM_SUFFIX} says {expected}")
            os.replace(partial, dest)
            fsync_dir(dest.parent)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        logger.info("archive downloaded", extra={"phase": "download", "destination": self.name, "key": key,
                                                 "bytes": size, "seconds": round(time.monotonic() - started, 3),
                                                 "path": str(dest)})
        return RemoteObject(relpath, key, size, item["modified"], sha)

    def delete(self, relpaths: Sequence[str]) -> None:
        """Delete copies, each checksum file first (the copy stops counting as complete);
        missing ones count as deleted."""
        keys = [self.key(r) for r in relpaths]
        self._delete_keys([k + CHECKSUM_SUFFIX for k in keys])
        self._delete_keys(keys)
        logger.info("archives deleted", extra={"phase": "delete", "destination": self.name, "objects": len(keys)})

    # --- internals -----------------------------------------------------------------------
    def _verify(self, phase: str, relpath: str, size: int, sha256: str, kind: str | None,
                expected_hash: str | None) -> RemoteObject:
        key = self.key(relpath)
        item = self._stat(key, phase, kind)
        problems = []
        if item is None:
            problems.append("the copy is missing")
        else:
            if item["size"] != size:
                problems.append(f"size is {item['size']}, expected {size}")
            got = item["hashes"].get(kind) if kind else None
            if kind and expected_hash and got != expected_hash:
                problems.append(f"the remote's {kind} is {got!r}, our bytes give {expected_hash}")
        written = self._read_checksum(relpath, phase)
        if written != sha256:
            problems.append(f"{CHECKSUM_SUFFIX} reads {written!r}, expected {sha256}")
        if problems:
            raise DestinationError(self._scrub(f"{self.name}: {phase} to {key} failed verification: "
                                               f"{'; '.join(problems)}"),
                                   operation=phase, destination=self.name, key=key)
        return RemoteObject(relpath, key, item["size"], item["modified"], sha256)

    def _stat(self, key: str, phase: str, kind: str | None = None) -> dict | None:
        args = ["lsjson", "--stat", "--no-mimetype", key]
        if kind:
            args[1:1] = ["--hash", "--hash-type", kind]
        out = self._run(args, phase, key, allow_missing=True)
        if not out.strip():
            return None
        try:
            item = json.loads(out)
        except ValueError:
            return None
        if not isinstance(item, dict) or item.get("IsDir"):
            return None
        hashes = {str(k).lower(): str(v).lower() for k, v in (item.get("Hashes") or {}).items()}
        return {"size": int(item.get("Size", -1)), "modified": _time(item.get("ModTime")), "hashes": hashes}

    def _read_checksum(self, relpath: str, phase: str) -> str | None:
        key = self.key(relpath) + CHECKSUM_SUFFIX
        out = self._run(["cat", key], phase, key, allow_missing=True).decode("utf-8", "replace").strip()
        digest = out.split()[0].lower() if out else ""
        return digest if re.fullmatch(r"[0-9a-f]{64}", digest) else None

    def _put_checksum(self, relpath: str, sha256: str) -> None:
        key = self.key(relpath) + CHECKSUM_SUFFIX
        line = f"{sha256}  {relpath.rsplit('/', 1)[-1]}\n".encode()
        self._run(["rcat", key], "upload", key, stdin=line)

    def _delete_keys(self, keys: list[str]) -> None:
        """One `rclone delete` of the listed files (read from stdin), relative to the root."""
        if not keys:
            return
        prefix = self.describe()
        names = "".join(k[len(prefix):] + "\n" for k in keys)
        self._run(["delete", "--files-from-raw", "-", prefix], "delete", prefix, stdin=names.encode(),
                  allow_missing=True)

    def _stats_flags(self) -> list[str]:
        return ["--stats", f"{self.config.progress_interval:g}s", "--stats-log-level", "NOTICE"]

    def _command(self, args: list[str]) -> tuple[list[str], dict[str, str]]:
        binary = shutil.which(self.config.binary) or self.config.binary
        flags = [flag for var, name, value in DEFAULT_FLAGS if var not in self._env for flag in (name, value)]
        env = {k: v for k, v in os.environ.items() if k in PASSED_ENV}
        env.update(self._env)
        return [binary, *args, *flags, "--use-json-log", "--log-level", "NOTICE"], env

    def _run(self, args: list[str], phase: str, key: str, *, stdin: bytes | None = None, size: int | None = None,
             transfer: bool = False, allow_missing: bool = False) -> bytes:
        """Run one rclone command; its stdout. Not found (exit 3 or 4) gives b"" when allowed."""
        command, env = self._command(args)
        logger.debug("rclone", extra={"phase": phase, "destination": self.name, "command": " ".join(args)})
        try:
            proc = subprocess.Popen(command, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        except OSError as exc:
            raise DestinationError(f"{self.name}: cannot run {self.config.binary!r} ({exc.strerror}): install rclone "
                                   "(the image has it unless built with WITH_RCLONE=false)", operation=phase,
                                   destination=self.name, key=key) from None
        reader = _Reader(proc.stderr, lambda record: self._on_record(record, phase, key, size))
        reader.start()
        timer = None if transfer else threading.Timer(self.config.command_timeout, proc.kill)
        if timer is not None:
            timer.start()
        try:
            if stdin is not None:  # small (a checksum line, names to delete): written before reading
                try:
                    proc.stdin.write(stdin)
                    proc.stdin.close()
                except BrokenPipeError:
                    pass  # rclone gave up early: its exit code and log say why
            out = proc.stdout.read()
            proc.stdout.close()
            proc.wait()
        except BaseException:  # interrupted (shutdown): no rclone left running on its own
            proc.kill()
            proc.wait()
            raise
        finally:
            if timer is not None:
                timer.cancel()
            reader.join(10)
            proc.stderr.close()
        if proc.returncode == 0:
            return out
        if allow_missing and proc.returncode in NOT_FOUND_EXITS:
            return b""
        raise self._error(phase, key, proc.returncode, reader.lines, timed_out=proc.returncode < 0)

    def _stream(self, args: list[str], key: str, out: IO[bytes], total: int) -> tuple[str, int]:
        """Run a command whose stdout is an archive: written to `out`, hashed and counted,
        with progress lines of our own count."""
        command, env = self._command(args)
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env)
        reader = _Reader(proc.stderr, lambda record: self._on_record(record, "download", key, total))
        reader.start()
        sha, size, shown = hashlib.sha256(), 0, time.monotonic()
        try:
            while block := proc.stdout.read(READ_SIZE):
                sha.update(block)
                out.write(block)
                size += len(block)
                if time.monotonic() - shown >= self.config.progress_interval:
                    shown = time.monotonic()
                    logger.info("download progress", extra={"phase": "download", "destination": self.name,
                                                            "key": key, "bytes": size, "total_bytes": total})
        except BaseException:  # a full disk, a shutdown: stop rclone too
            proc.kill()
            raise
        finally:
            proc.stdout.close()
            proc.wait()
            reader.join(10)
            proc.stderr.close()
        if proc.returncode != 0:
            raise self._error("download", key, proc.returncode, reader.lines)
        return sha.hexdigest(), size

    def _on_record(self, record: dict, phase: str, key: str, size: int | None) -> None:
        stats = record.get("stats")
        if isinstance(stats, dict):
            done, total = stats.get("bytes", 0), stats.get("totalBytes") or size
            if total and done < total:
                logger.info(f"{phase} progress", extra={"phase": phase, "destination": self.name, "key": key,
                                                        "bytes": done, "total_bytes": total,
                                                        "bytes_per_second": round(stats.get("speed") or 0)})
            return
        message = str(record.get("msg", ""))
        if message.startswith("Attempt ") and "failed" in message and not _NOT_FOUND.search(message):
            logger.warning("rclone attempt failed; retrying", extra={
                "phase": phase, "destination": self.name, "key": key, "error": self._scrub(message.strip())})

    def _error(self, phase: str, key: str, code: int, lines: list[str], timed_out: bool = False) -> DestinationError:
        said = [line for line in lines if line and not line.startswith("NOTICE")]
        text = self._scrub("; ".join(dict.fromkeys(_plain(line) for line in said[-3:])) or "no explanation")
        if timed_out:
            text = f"no answer within {self.config.command_timeout:g} s; {text}"
        unreachable = timed_out or code == EXIT_TEMPORARY or bool(_NETWORK.search(text))
        hint = ""
        if "didn't find section in config file" in text:
            hint = (f"; define the remote {self.name!r} in the rclone.conf RCLONE_CONFIG names, or with "
                    f"RCLONE_CONFIG_{self.name.upper()}_TYPE and its other RCLONE_CONFIG_{self.name.upper()}_* "
                    "variables")
        elif "is it obscured" in text:
            hint = "; rclone expects passwords obscured: store the output of `rclone obscure PASSWORD`"
        error = DestinationUnreachable if unreachable else DestinationError
        return error(f"{self.name}: {phase} of {key} failed (rclone exit {code}): {text}{hint}",
                     operation=phase, destination=self.name, key=key)

    def _scrub(self, text: str) -> str:
        """`text` without the remote's secrets: every message leaving here goes through this."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _plain(line: str) -> str:
    """A log line without rclone's "2026/12/02 02:34:33 " date prefix."""
    return re.sub(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d ", "", line).strip()


def _config_text(env: dict[str, str]) -> str | None:
    """The rclone.conf the child will read (RCLONE_CONFIG, else rclone's default place)."""
    path = env.get("RCLONE_CONFIG") or os.path.join(os.path.expanduser("~"), ".config", "rclone", "rclone.conf")
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def _hash_file(path: Path, kind: str | None) -> tuple[str, str | None]:
    """(SHA-256, the backend's hash kind or None) of a file in one read."""
    sha = hashlib.sha256()
    other = hashlib.new(kind) if kind and kind != "sha256" else None
    with open(path, "rb") as f:
        while block := f.read(READ_SIZE):
            sha.update(block)
            if other is not None:
                other.update(block)
    if kind == "sha256":
        return sha.hexdigest(), sha.hexdigest()
    return sha.hexdigest(), other.hexdigest() if other is not None else None


def _json_list(out: bytes) -> list[dict]:
    try:
        items = json.loads(out) if out.strip() else []
    except ValueError:
        return []
    return [i for i in items if isinstance(i, dict) and "Path" in i] if isinstance(items, list) else []


def _time(value) -> datetime:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return datetime.fromtimestamp(0, timezone.utc)
