"""The archive worker: native GNU `tar` of a volume mounted at `root`, piped through `zstd`
(or `gzip`), then hashed (SHA-256) and, when configured, age-encrypted in Python while
written into a partial file the sidecar created on the backup volume.

Members are named `./...` relative to the volume's root with the root entry `.` first,
in the engine's archive API's order (by name, each folder's contents after it), which
also decides which of a set of hard links carries the data, so restore and the checks read both alike. tar
runs with --sparse (holes stay holes), --xattrs (kept where the filesystem has them),
--numeric-owner and PAX headers (long and non-UTF-8 names, sub-second times); atime
and ctime are left out, as the engine leaves them out.

Excludes keep the sidecar's semantics (archive.is_excluded: the relative path, the base
name or any parent folder matches): the tree is walked here with that matcher and tar
archives exactly the listed names (--no-recursion). A hard link whose first occurrence
is excluded is left out too, as the engine-API path's filter does.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from ..tarball import crypto
from ..tarball.archive import HashingFile, is_excluded
from ..tarball.streams import Heartbeat
from ..core.errors import ArchiveError
from ..core.keys import EncryptionConfig
from ..core.model import Compression
from .frames import Frame, Framer, load_index
from .special import HeaderPatcher, load_special, patch_stream

READ_SIZE = 1 << 20
PIPE_BYTES = 1 << 20  # the compressor's pipe to this process (see _widen)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
CHECKPOINT_RECORDS = 1024  # tar reports its progress every 1024 records of 10 KiB
GNU_TAR_EXIT_CHANGED = 1  # "some files differed": changed or vanished while read (hot backups)

COMPRESSORS: dict[Compression, tuple[str, ...] | None] = {
    Compression.ZSTD: ("zstd", "-3", "-T0", "-q", "-c"),  # the level ArchiveWriter uses
    Compression.GZIP: ("gzip", "-6", "-n", "-c"),
    Compression.NONE: None,
}

_PROGRESS = re.compile(r"^tar: (?:W: )?(\d+) \(")
_TOTAL = re.compile(r"^Total bytes written: (\d+)")

Emit = Callable[[dict], None]


@dataclass(frozen=True)
class ArchiveJob:
    root: Path  # the volume, mounted read-only
    output: Path  # an existing (partial) file: its owner and mode are the sidecar's
    compression: Compression
    exclude: tuple[str, ...] = ()
    keys_file: Path | None = None  # JSON encryption settings; read once, then removed
    progress_interval: float = 1.0
    special: Path | None = None  # a staging mirror's special.json: headers patched (worker/special.py)
    frames: Path | None = None  # a staging mirror's folder: zstd frames reused from its last archive (frames.py)


@dataclass(frozen=True)
class ArchiveOutcome:
    sha256: str
    size: int  # bytes written to the file
    tar_bytes: int  # bytes of tar produced
    frames: tuple[Frame, ...] = ()  # the zstd frames written (a framed archive: frames.py)
    reused: int = 0  # of which taken from the previous archive


def tar_command(root: Path, listed: bool) -> list[str]:
    argv = ["tar", "--create", "--file=-", f"--directory={root}", "--format=posix",
            "--pax-option=delete=atime,delete=ctime", "--sort=name", "--sparse", "--xattrs", "--numeric-owner",
            "--totals", f"--checkpoint={CHECKPOINT_RECORDS}", "--checkpoint-action=echo=%T"]
    if listed:
        return argv + ["--no-recursion", "--null", "--verbatim-files-from", "--files-from=-"]
    return argv + ["."]


def read_keys(path: Path) -> EncryptionConfig:
    """The encryption settings the sidecar left for this worker; the file is removed at once."""
    try:
        data = json.loads(path.read_text())
    finally:
        path.unlink(missing_ok=True)
    return EncryptionConfig(recipients=tuple(data.get("recipients") or ()), passphrase=data.get("passphrase"),
                            work_factor=int(data["work_factor"]))


def write_keys(path: Path, config: EncryptionConfig) -> None:
    """The counterpart of read_keys, for the sidecar: a 0600 file created new."""
    data = {"recipients": list(config.recipients), "passphrase": config.passphrase,
            "work_factor": config.work_factor}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)


def listing(root: Path, patterns: tuple[str, ...]) -> Iterator[bytes]:
    """NUL-terminated `./name` entries of every member to archive, in tar's --sort=name
    order (a folder, then its entries by name, each folder's contents right after it).

    An excluded folder is still walked, without listing anything, for its hard links:
    where such a file comes first, its links elsewhere are left out (as the filter of the
    engine-API path leaves them out)."""
    yield b".\0"
    first_seen: dict[tuple[int, int], bool] = {}  # (dev, inode) of a hard-linked file -> included
    stack = [(_sorted_entries(root, ""), False)]
    while stack:
        entries, hidden = stack[-1]
        item = next(entries, None)
        if item is None:
            stack.pop()
            continue
        rel, entry = item
        st = entry.stat(follow_symlinks=False)
        is_dir = entry.is_dir(follow_symlinks=False)
        keep = not hidden and not is_excluded(rel, patterns)
        if not is_dir and st.st_nlink > 1:
            keep = first_seen.setdefault((st.st_dev, st.st_ino), keep) and keep
        if keep:
            yield b"./" + os.fsencode(rel) + b"\0"
        if is_dir:
            stack.append((_sorted_entries(root, rel), not keep))


def _sorted_entries(root: Path, folder: str) -> Iterator[tuple[str, os.DirEntry]]:
    with os.scandir(root / folder if folder else root) as it:
        entries = sorted(it, key=lambda e: os.fsencode(e.name))  # bytes, as tar and the engine sort
    for entry in entries:
        yield (f"{folder}/{entry.name}" if folder else entry.name), entry


class _TarWatcher:
    """Reads tar's stderr: progress checkpoints, the total, and any other line (warnings)."""

    def __init__(self, stream: BinaryIO, emit: Emit):
        self.done = 0
        self.total: int | None = None
        self.messages: list[str] = []
        self._stream, self._emit = stream, emit
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for raw in self._stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if m := _PROGRESS.match(line):
                self.done = int(m.group(1))
            elif m := _TOTAL.match(line):
                self.total = int(m.group(1))
            elif line:
                self.messages.append(line)
                self._emit({"event": "tar", "line": line})


def run_archive(job: ArchiveJob, emit: Emit) -> ArchiveOutcome:
    """Write the archive into job.output (flushed to disk); raises ArchiveError."""
    encryption = read_keys(job.keys_file) if job.keys_file is not None else None
    framed = job.frames is not None and encryption is None and job.compression is Compression.ZSTD
    fd = os.open(job.output, os.O_WRONLY | os.O_TRUNC)  # no O_CREAT: the sidecar made it
    frames: tuple[Frame, ...] = ()
    reused = 0
    with os.fdopen(fd, "wb") as f:
        sink = HashingFile(f)
        with ExitStack() as stack:
            out = stack.enter_context(crypto.encrypting(sink, encryption)) if encryption is not None else sink
            if framed:
                tar_bytes, framer = _pipe_framed(job, out, emit)
                frames, reused = tuple(framer.frames), framer.reused
            else:
                tar_bytes = _pipe(job, out, emit)
        f.flush()
        os.fsync(f.fileno())
    return ArchiveOutcome(sink.sha.hexdigest(), sink.size, tar_bytes, frames, reused)


def _start_tar(job: ArchiveJob, stack: ExitStack, emit: Emit) -> tuple[subprocess.Popen, "_TarWatcher"]:
    """GNU tar of job.root on a pipe (killed on the way out), its stderr watched, the
    listing fed when there are excludes, progress said every job.progress_interval."""
    listed = bool(job.exclude)
    tar = stack.enter_context(subprocess.Popen(
        tar_command(job.root, listed), stdin=subprocess.PIPE if listed else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    stack.callback(_kill, tar)
    watcher = _TarWatcher(tar.stderr, emit)
    watcher.thread.start()
    if listed:
        threading.Thread(target=_feed, args=(tar.stdin, job.root, job.exclude), daemon=True).start()
    beat = Heartbeat(job.progress_interval, lambda: watcher.done, emit)
    stack.callback(beat.stop)
    return tar, watcher


def _tar_ended(job: ArchiveJob, tar_code: int, watcher: "_TarWatcher", emit: Emit) -> int:
    """tar's exit judged; returns the tar bytes. Raises ArchiveError."""
    if tar_code not in (0, GNU_TAR_EXIT_CHANGED) or watcher.total is None:
        detail = "; ".join(watcher.messages[-5:]) or "no message"
        raise ArchiveError(f"tar of {job.root} failed (exit {tar_code}): {detail}")
    if tar_code == GNU_TAR_EXIT_CHANGED:
        emit({"event": "warning", "message": "files changed while they were read (hot backup)"})
    return watcher.total


def _pipe_framed(job: ArchiveJob, out, emit: Emit) -> tuple[int, Framer]:
    """tar -> the header walker (special members patched) -> zstd frames, each compressed here
    or taken from the mirror's previous archive (frames.py) -> out."""
    assert job.frames is not None
    framer = Framer(out, load_index(job.frames))
    patcher = HeaderPatcher(load_special(job.special) if job.special is not None else {}, framer.member)
    try:
        with ExitStack() as stack:
            tar, watcher = _start_tar(job, stack, emit)
            _widen(tar.stdout)
            while chunk := tar.stdout.read(READ_SIZE):
                for part in patcher.feed(chunk):
                    framer.write(part)
            tar_code = tar.wait()
            watcher.thread.join()
        framer.close()
    except BaseException:
        framer.abort()
        raise
    return _tar_ended(job, tar_code, watcher, emit), framer


def _pipe(job: ArchiveJob, out, emit: Emit) -> int:
    """tar | compressor -> out; returns the tar bytes."""
    compressor = COMPRESSORS[job.compression]
    special = load_special(job.special) if job.special is not None else {}
    patching: list[BaseException] = []  # what the header filter's thread raised
    filtering: threading.Thread | None = None
    with ExitStack() as stack:
        tar, watcher = _start_tar(job, stack, emit)
        source = tar.stdout
        comp = None
        if compressor is not None:
            comp = stack.enter_context(subprocess.Popen(compressor, stdin=subprocess.PIPE if special else tar.stdout,
                                                        stdout=subprocess.PIPE))
            stack.callback(_kill, comp)
            if special:  # tar -> the header filter -> the compressor
                filtering = threading.Thread(target=_filter, args=(tar, comp.stdin, special, patching),
                                             daemon=True)
                filtering.start()
            else:
                tar.stdout.close()  # the compressor holds it now; tar sees EPIPE if it dies
            source = comp.stdout
        elif special:
            source = _Patched(tar.stdout, special)
        _widen(tar.stdout if comp is None or special else None, source)
        while chunk := source.read(READ_SIZE):
            out.write(chunk)
        tar_code = tar.wait()
        comp_code = comp.wait() if comp is not None else 0
        if filtering is not None:
            filtering.join()
        watcher.thread.join()
    if patching:
        raise ArchiveError(f"the tar headers of {job.root}'s set-id files and devices: {patching[0]}")
    if comp_code != 0 and tar_code in (0, GNU_TAR_EXIT_CHANGED):
        raise ArchiveError(f"{compressor[0]} failed (exit {comp_code})")
    return _tar_ended(job, tar_code, watcher, emit)


def _widen(*pipes) -> None:
    """Pipes of PIPE_BYTES instead of 64 KiB: the compressor (multi-threaded) writes ahead
    while this process hashes and writes a chunk, instead of waiting for each read."""
    for pipe in pipes:
        if pipe is None or not hasattr(pipe, "fileno"):
            continue
        try:
            fcntl.fcntl(pipe.fileno(), F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass  # above /proc/sys/fs/pipe-max-size for this user: the default stays


def _filter(tar: subprocess.Popen, sink: BinaryIO, special: dict[bytes, tuple[int, int]],
            failed: list[BaseException]) -> None:
    try:
        patch_stream(tar.stdout, sink, special)
    except BrokenPipeError:
        _kill(tar)  # the compressor ended early: its exit code says why
    except (ArchiveError, OSError, ValueError) as exc:
        failed.append(exc)
        _kill(tar)  # nobody reads it any more


class _Patched:
    """tar's stdout with the special members' headers patched (no compressor)."""

    def __init__(self, source: BinaryIO, special: dict[bytes, tuple[int, int]]):
        self._source, self._patcher = source, HeaderPatcher(special)

    def read(self, size: int) -> bytes:
        while chunk := self._source.read(size):
            out = b"".join(self._patcher.feed(chunk))
            if out:
                return out
        return b""


def _feed(pipe: BinaryIO, root: Path, patterns: tuple[str, ...]) -> None:
    try:
        for entry in listing(root, patterns):
            pipe.write(entry)
    except (BrokenPipeError, OSError):
        pass  # tar ended early: its exit code says why
    finally:
        try:
            pipe.close()
        except OSError:
            pass


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()




def probe() -> dict:
    """What this image offers the sidecar: GNU tar and the compressors."""
    found = {}
    for tool in ("tar", "zstd", "gzip", "restic"):
        try:
            text = subprocess.run([tool, "version" if tool == "restic" else "--version"], capture_output=True, text=True, check=False).stdout
        except OSError:
            text = ""
        found[tool] = text.splitlines()[0] if text else None
    found["gnu_tar"] = bool(found["tar"] and "GNU tar" in found["tar"])
    found["time"] = time.time()
    return found
