"""The extract worker: `python -m sidecar.worker.extract` restores one archive from the
backup volume (mounted read-only) into a volume mounted read-write, with the checked
extractor (sidecar/tarball/extract.py): the code that checks each member is the code that writes
it, in one read of the archive file (decrypted, decompressed and hashed as it is read).

The sidecar verified the archive before it stopped anything and passes the SHA-256 it
read (`--sha256`): the worker refuses a file whose bytes differ (swapped or changed since),
and a checksum file beside it that says otherwise. Decryption keys come in a 0600 file
on the backup volume that the sidecar removes once the worker has ended (`--keys-file`;
never in the environment or arguments, which `docker inspect` shows).

`--staged` (a volume's restore: one worker for all of it, started before anything stops)
first verifies the whole archive (the checksum file beside it, every member by the same
parser and policy, data spliced to /dev/null: sidecar.tarball.extract.verify) and says `verified`
(the summary and what the tree takes once written, `expanded`), then waits for the sidecar's
lines on stdin (sidecar/worker/__init__.py, COMMANDS): `room` compares `expanded` with the
free space of `--into`, plus what its current contents take with `--replacing` (they are
removed before the restore), and says `room` (`fits`, `free`, `needed`); `go` writes, reading
the archive a second time and refusing it unless it has the SHA-256 the first read had;
`quit` (or the end of stdin) ends it having written nothing.

`--one-pass` (a volume's restore when the volume has no nested mounts; PROTOCOL 8) reads the
archive ONCE: it says `ready` and waits; on `go` (the target stopped) it writes into a staging
folder inside --into with the same checks and writer (sidecar/tarball/staging.py) and says
`staged`; on `swap` it puts the staged tree in place of the old one and says `result`; on
`quit`, or on any refusal or error before the swap, the staging folder is removed and the
volume is as it was. When the volume cannot hold the old and the new tree at once (ENOSPC
while staging) it says `fallback` (with the reason) and goes on as `--staged` does (verify,
room, go), emptying --into itself before the write.

`--list` (PROTOCOL 11: what the sidecar needs to know of an archive before it restores, or to
show it) writes nothing and mounts no volume but the backup volume, read-only: it reads the
archive with the same parser and policy (`--only` too) and says one `member` record per
accepted member (name, kind, mode, owner, times, sizes, link; each bounded by the parser:
MAX_PATH, MAX_SYMLINK_TARGET), --into left untouched, then `result` with the summary and `expanded`. The sidecar
decides from those records; it parses no archive itself.

`--stream dump|files|canonical` (PROTOCOL 12: a preset's dump fed to its app's client, an
image export to `docker load`) mounts only the backup volume, read-only, like `--list`: it
checks the whole archive (a dump's shape too: parts FILE.NNNNNN in order, one FILE) and says
`verified` (`file`, `bytes`); on the sidecar's `go` it reads the archive again and writes the
dump's bytes (`dump`), that dump's tar as files and folders in headers we write (`files`), or
the archive's canonical tar (`canonical`) to stdout, the last piece only once the archive's
end and hash were accepted, then says `result`. The data has stdout to itself: every record
goes to stderr (data_channel), and the engine's attach frames keep the two apart.

Output: JSON lines like `python -m sidecar.worker`'s: `started` just before the first
write (a worker that ends without it wrote nothing), `progress` (tar bytes so far),
`warning`, `error` (with `refused`: the archive is damaged or unsafe) and `result`.
Exit codes are sidecar.tarball.extract's: EXIT_OK, EXIT_REFUSED, EXIT_FAILED.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import logging
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pyrage

from ..core.errors import ArchiveError, ChecksumMismatch, SidecarError
from ..tarball import staging
from ..tarball.extract import (DISK_BLOCK, EXIT_FAILED, EXIT_OK, EXIT_REFUSED, ArchiveFile, DumpShape, Kind, Member,
                               Summary, canonical_tar, dump_data, extract, files_tar, open_archive, verify)
from ..core.keys import DecryptionKeys
from ..core.members import chosen, member_path
from . import COMMANDS, ON_ORPHAN, PROTOCOL
from .cli import emit

MODULE = ("python", "-m", "sidecar.worker.extract")
# What `--stream` sends on stdout (its records go to stderr): a preset's dump, its parts
# joined (`dump`); that dump, a tar itself, as regular files and folders in headers we write
# (`files`: files_tar); the archive's canonical tar (`canonical`: an image export for `docker load`).
STREAMS = ("dump", "files", "canonical")
EXIT_QUIT = 3  # --staged: the sidecar said quit; nothing was written
COMMAND_TIMEOUT = 3600.0  # seconds a staged worker waits for each of the sidecar's lines


def write_keys(path: Path, keys: DecryptionKeys) -> None:
    """The sidecar's half: a 0600 file created new. Raises ValueError for identities that
    cannot be written down (SSH keys: pyrage cannot serialise them)."""
    identities = []
    for identity in keys.identities:
        if not isinstance(identity, pyrage.x25519.Identity):
            raise ValueError("SSH identities cannot be handed to a worker container")
        identities.append(str(identity))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"identities": identities, "passphrase": keys.passphrase}, f)


def read_keys(path: Path) -> DecryptionKeys:
    data = json.loads(path.read_text())
    identities = tuple(pyrage.x25519.Identity.from_str(i) for i in data.get("identities") or ())
    return DecryptionKeys(identities, data.get("passphrase"))


class _Progress:
    def __init__(self, interval: float):
        self.interval = interval
        self._last = time.monotonic()

    def __call__(self, tar_bytes: int) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            emit({"event": "progress", "tar_bytes": tar_bytes})


class _EmitWarnings(logging.Handler):
    """The extractor's warnings (stripped setuid bits, xattrs left out) as `warning` lines."""

    def emit(self, record: logging.LogRecord) -> None:
        fields = {k: v for k, v in record.__dict__.items() if k in ("member", "xattr", "error")}
        emit({"event": "warning", "message": record.getMessage(), **fields})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sidecar.worker.extract")
    parser.add_argument("--archive", type=Path)
    parser.add_argument("--into", type=Path, required=True)
    parser.add_argument("--list", action="store_true", help="write nothing: one `member` record per accepted member")
    parser.add_argument("--stream", choices=STREAMS, help="write nothing: verify, then on go stream this on stdout")
    parser.add_argument("--skip", action="append", default=[], help="a folder below --into left out (read-only)")
    parser.add_argument("--only", action="append", help="a glob: only regular files it matches may be written")
    parser.add_argument("--staged", action="store_true", help="verify first, then wait for room/go/quit on stdin")
    parser.add_argument("--one-pass", action="store_true",
                        help="on go, write once into a staging folder in --into, then swap it in on swap")
    parser.add_argument("--replacing", action="store_true",
                        help="with --staged or --one-pass: --into is emptied (or swapped) before the write")
    parser.add_argument("--sha256", help="the SHA-256 the sidecar verified; the file must still have it")
    parser.add_argument("--keys-file", type=Path)
    parser.add_argument("--progress-interval", type=float, default=1.0)
    parser.add_argument("--path", type=member_path, help="restore only this file or folder (relative to the volume)")
    parser.add_argument("--dump-parts", action="store_true",
                        help="write only a dump's parts (FILE.NNNNNN; with --path: those of FILE)")
    parser.add_argument("--leave-root", action="store_true",
                        help="leave out the root entry (--into keeps its own owner and mode)")
    return parser


def run(args: argparse.Namespace, commands: "queue.Queue[str]" = COMMANDS, data_fd: int = 1) -> dict | None:
    """The restore; None when a staged worker was told to quit (nothing written)."""
    keys = read_keys(args.keys_file) if args.keys_file is not None else None
    with open_archive(args.archive, require_checksum=args.sha256 is None) as archive:
        expected = args.sha256 or archive.expected_sha256
        if archive.expected_sha256 is not None and expected != archive.expected_sha256:
            raise ChecksumMismatch(f"{archive.name}: its checksum file changed since the sidecar verified it")
        archive = dataclasses.replace(archive, expected_sha256=expected)
        if args.stream is not None:
            return _stream(args.stream, archive, keys, commands, data_fd)
        if args.list:
            began = time.monotonic()
            check = verify(archive, keys, args.only, on_member=_emit_member)
            return {**_counts(check), "expanded": check.expanded, "protocol": PROTOCOL,
                    "seconds": round(time.monotonic() - began, 3)}
        if args.one_pass:
            emit({"event": "ready", "protocol": PROTOCOL})
            if _next(commands, ("go", "quit"), "started") != "go":
                return None
            staged = _one_pass(args, archive, keys, commands)
            if staged is not False:
                return staged
            emptying = True  # the fallback: verify, room, then empty and write (the two-pass path)
        else:
            emptying = False
        if args.staged or args.one_pass:
            began = time.monotonic()
            check = verify(archive, keys, args.only)
            emit({"event": "verified", "protocol": PROTOCOL, **_counts(check), "expanded": check.expanded,
                  "seconds": round(time.monotonic() - began, 3)})
            if not _wait_for_go(args.into, check.expanded, args.replacing, commands):
                return None
            archive = dataclasses.replace(archive, expected_sha256=check.sha256)
            if emptying:
                staging.empty(args.into)
        emit({"event": "started"})
        began = time.monotonic()
        keep = chosen(args.path, args.dump_parts, root=not args.leave_root)
        filtered = args.path is not None or args.dump_parts or args.leave_root
        summary = extract(archive, args.into, keys, _Progress(args.progress_interval), args.skip, args.only,
                          select=(lambda member: keep(member.name)) if filtered else None)
    return {**_counts(summary), "seconds": round(time.monotonic() - began, 3)}


def _stream(kind: str, archive: ArchiveFile, keys: DecryptionKeys | None, commands: "queue.Queue[str]",
            data_fd: int) -> dict | None:
    """`--stream` (PROTOCOL 12): the whole archive checked first (a dump's shape too) and
    `verified` said (its dump `file`, the `bytes` to come, the SHA-256 read); on `go` it is
    read again, refused unless it has that SHA-256, and `kind`'s bytes are written to
    `data_fd`, the last piece only once the whole archive was accepted; `quit`: nothing is
    sent (None)."""
    began = time.monotonic()
    if kind == "dump":  # the data skipped, as verify skips it: only the shape and the sizes are needed
        shape = DumpShape(archive.name)
        check = verify(archive, keys, on_member=shape)
        shape.finish()
        size = shape.size
    else:
        done: list[Summary] = []
        stream, shape = _streamed(kind, archive, keys, done.append)
        size = sum(len(chunk) for chunk in stream)
        check = done[0]
    emit({"event": "verified", "protocol": PROTOCOL, **_counts(check), "file": shape.file if shape else None,
          "bytes": size, "seconds": round(time.monotonic() - began, 3)})
    if _next(commands, ("go", "quit"), "the archive was verified") != "go":
        return None
    emit({"event": "started"})
    began = time.monotonic()
    done = []
    stream, _shape = _streamed(kind, dataclasses.replace(archive, expected_sha256=check.sha256), keys, done.append)
    sent, held = 0, b""
    for chunk in stream:
        if held:
            _write_all(data_fd, held)
            sent += len(held)
        held = chunk
    if sent + len(held) != size:
        raise ArchiveError(f"{archive.name}: read {sent + len(held)} bytes the second time, {size} the first")
    _write_all(data_fd, held)
    return {**_counts(done[0]), "bytes": size, "seconds": round(time.monotonic() - began, 3)}


def _streamed(kind: str, archive: ArchiveFile, keys: DecryptionKeys | None,
              on_done: Callable[[Summary], None]) -> tuple[Iterator[bytes], DumpShape | None]:
    if kind == "canonical":
        return canonical_tar(archive, keys, on_done), None
    shape = DumpShape(archive.name)
    data = dump_data(archive, keys, shape, on_done)
    if kind == "dump":
        return data, shape
    return _drained(files_tar(data, f"the tar in {archive.name}"), data), shape


def _drained(stream: Iterator[bytes], inner: Iterator[bytes]) -> Iterator[bytes]:
    """`stream`, then the rest of the archive it reads from: its end and its hash checked."""
    yield from stream
    for _ in inner:
        pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _one_pass(args: argparse.Namespace, archive: ArchiveFile, keys: DecryptionKeys | None,
              commands: "queue.Queue[str]") -> dict | None | bool:
    """`--one-pass`, on the go: the archive read once, written into a staging folder in
    --into (sidecar/tarball/staging.py), `staged`; then the swap on `swap` (the result), or
    the staging folder removed on `quit` (None). False: the volume cannot hold the old and
    the new tree at once (staging removed, `fallback` said): the caller takes the two-pass path."""
    emit({"event": "started"})
    began = time.monotonic()
    before = os.stat(args.into)
    folder = staging.make_staging(args.into)
    swapped, lock = False, threading.Lock()

    def discard() -> None:
        """The volume as it was, its root's times included (also run by the thread that
        sees the sidecar gone, while the writer may still create names in the folder)."""
        with lock:
            if swapped:
                return
            for _attempt in range(3):
                with contextlib.suppress(OSError):
                    staging.remove(args.into, folder.name)
                    break
            with contextlib.suppress(OSError):
                os.utime(args.into, ns=(before.st_atime_ns, before.st_mtime_ns))

    ON_ORPHAN.append(discard)
    try:
        try:
            summary = extract(archive, folder, keys, _Progress(args.progress_interval), (), args.only,
                              select=_Budget(args.into, folder.name, args.replacing))
        except OSError as exc:
            if exc.errno not in staging.NO_ROOM:
                raise
            emit({"event": "fallback", "reason": f"the volume cannot hold the old and the new contents at once "
                                                 f"({exc.strerror}); verifying, then emptying it before the write"})
            return False
        written = round(time.monotonic() - began, 3)
        emit({"event": "staged", **_counts(summary), "seconds": written})
        if _next(commands, ("swap", "quit"), "staged") != "swap":
            return None
        began = time.monotonic()
        with lock:
            swapped = True  # from here on a failure is the swap's: what is left stays for a human to see
        try:
            staging.swap(args.into, folder.name, summary.root)
        except staging.SwapFailed:
            raise
        except OSError:  # before anything moved: the volume as it was, the staging folder removed
            with lock:
                swapped = False
            raise
        return {**_counts(summary), "seconds": written, "swap_seconds": round(time.monotonic() - began, 3)}
    finally:
        ON_ORPHAN.remove(discard)
        discard()


class _Budget:
    """The bound the two-pass path checks before emptying (`room`), as the members come: the
    room written so far (Policy.expanded's rule) against the free space when staging began,
    plus what the old contents take when they are replaced. Raises ENOSPC past it, before the
    member is written (a sparse file may declare far more than its data)."""

    def __init__(self, into: Path, staging_name: str, replacing: bool):
        self.into, self.staging_name, self.replacing = into, staging_name, replacing
        self.free = room(into, 0, False)
        self.counted_old = False
        self.total = 0

    def __call__(self, member: Member) -> bool:
        if member.kind is Kind.FILE or member.kind is Kind.DIR:
            self.total += -(-max(member.realsize, 1) // DISK_BLOCK) * DISK_BLOCK
        if self.total > self.free and self.replacing and not self.counted_old:
            self.counted_old = True
            self.free += usage(self.into, leave=(self.staging_name,))
        if self.total > self.free:
            raise OSError(errno.ENOSPC, f"the archive takes more than the {self.free} bytes free")
        return True


def _next(commands: "queue.Queue[str]", accepted: tuple[str, ...], after: str) -> str:
    """The sidecar's next line among `accepted` (the end of stdin is a quit)."""
    while True:
        try:
            command = commands.get(timeout=COMMAND_TIMEOUT)
        except queue.Empty:
            raise SidecarError(f"no word from the sidecar in {COMMAND_TIMEOUT:g} s after {after}")
        if command in accepted:
            return command


def _emit_member(member: Member) -> None:
    emit({"event": "member", "name": member.name, "kind": member.kind.value, "mode": member.mode,
          "uid": member.uid, "gid": member.gid, "mtime_ns": member.mtime_ns, "size": member.size,
          "realsize": member.realsize, "linkname": member.linkname})


def _counts(summary: Summary) -> dict:
    return {"members": summary.members, "tar_bytes": summary.tar_bytes, "sha256": summary.sha256,
            "stripped": summary.stripped}


def _wait_for_go(into: Path, needed: int, replacing: bool, commands: "queue.Queue[str]") -> bool:
    """The sidecar's lines after `verified`: True on `go`, False on `quit`."""
    while (command := _next(commands, ("room", "go", "quit"), "the archive was verified")) == "room":
        free = room(into, needed, replacing)
        emit({"event": "room", "fits": free >= needed, "free": free, "needed": needed})
    return command == "go"


def usage(into: Path, leave: tuple[str, ...] = ()) -> int:
    """Bytes the files and folders below `into` take (what emptying it frees), never
    following a symlink; `leave`: top-level names not counted."""
    total = 0
    for folder, dirs, files in os.walk(into):
        if folder == str(into):
            dirs[:] = [d for d in dirs if d not in leave]
            files = [f for f in files if f not in leave]
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
    return total


def room(into: Path, needed: int, replacing: bool) -> int:
    """The bytes `into` has free; with `replacing` and too few, plus what emptying it frees."""
    st = os.statvfs(into)
    free = st.f_bavail * st.f_frsize
    if free < needed and replacing:
        free += usage(into)
    return free


def data_channel() -> int:
    """`--stream`'s data goes to stdout and nothing else does: stdout is moved to a new
    descriptor (returned) and stderr takes its place, so records, warnings and a traceback
    all reach the sidecar on the engine's stderr stream, never among the data."""
    sys.stdout.flush()
    fd = os.dup(1)
    os.dup2(2, 1)
    return fd


def main(argv: list[str], commands: "queue.Queue[str]" = COMMANDS, data_fd: int | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.stream is not None and data_fd is None:
        data_fd = data_channel()
    if args.archive is None or (args.one_pass and args.skip):
        emit({"event": "error", "refused": False,
              "message": "--archive is required" if args.archive is None else "--one-pass cannot leave out --skip "
                                                                             "folders (a rename cannot cross mounts)"})
        return EXIT_FAILED
    ours, handler = logging.getLogger("sidecar"), _EmitWarnings(logging.WARNING)
    level = ours.level
    ours.addHandler(handler)
    ours.setLevel(logging.WARNING)
    try:
        result = run(args, commands, 1 if data_fd is None else data_fd)
    except ArchiveError as err:
        emit({"event": "error", "refused": True, "message": str(err), "kind": type(err).__name__})
        return EXIT_REFUSED
    except (SidecarError, OSError, ValueError) as err:  # ValueError: an unreadable keys file
        emit({"event": "error", "refused": False, "message": str(err), "kind": type(err).__name__})
        return EXIT_FAILED
    finally:
        ours.removeHandler(handler)
        ours.setLevel(level)
    if result is None:
        return EXIT_QUIT
    emit({"event": "result", **result})
    return EXIT_OK


if __name__ == "__main__":
    from . import watch_parent

    watch_parent()
    sys.exit(main(sys.argv[1:]))
