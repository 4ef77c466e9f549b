"""Arguments of `python -m sidecar.worker` and its JSON-lines output."""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
from dataclasses import asdict, replace
from pathlib import Path

from ..core.errors import SidecarError
from ..core.model import Compression
from . import COMMANDS, PROTOCOL
from .archive import ArchiveJob, probe, run_archive
from ..mirror.diff import Seen
from ..mirror.worker import SPECIAL, TREE, MirrorJob, MirrorRefused, mirror_pass
from . import frames, reuse
from .restic import run_restic
from .stack import Part, StackJob, run_stack

_emit_lock = threading.Lock()


def emit(record: dict) -> None:
    with _emit_lock:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sidecar.worker")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("probe", help="say what this image offers")
    archive = sub.add_parser("archive", help="archive a mounted volume into an existing partial file")
    archive.add_argument("--root", type=Path, required=True)
    archive.add_argument("--output", type=Path, required=True)
    archive.add_argument("--compression", choices=[c.value for c in Compression], required=True)
    archive.add_argument("--exclude", action="append", default=[])
    archive.add_argument("--keys-file", type=Path)
    archive.add_argument("--progress-interval", type=float, default=1.0)
    archive.add_argument("--special", type=Path, help="a staging mirror's special.json: set-id bits and devices")
    mirror = sub.add_parser("mirror", help="bring a staging mirror on the backup volume up to date with a volume")
    mirror.add_argument("--root", type=Path, required=True)
    mirror.add_argument("--mirror", type=Path, required=True)
    mirror.add_argument("--no-room-check", action="store_true")
    mirror.add_argument("--go", action="store_true", help="wait for the sidecar's go file before the pass")
    mirror.add_argument("--wait-timeout", type=float, default=3600.0)
    mirror.add_argument("--progress-interval", type=float, default=1.0)
    mirror.add_argument("--exclude", action="append", default=[])
    mirror.add_argument("--hold", action="store_true", help="one worker for the whole backup: the first pass, then "
                        "the stopped pass on `go` and the mirror's archive on `archive` (lines on stdin)")
    mirror.add_argument("--output", type=Path, help="--hold: the archive's existing partial file")
    mirror.add_argument("--compression", choices=[c.value for c in Compression], default=Compression.ZSTD.value)
    mirror.add_argument("--keys-file", type=Path, help="--hold: the encryption settings, written before `archive`")
    stack = sub.add_parser("stack", help="archive a Compose project's files (bind-mounted read-only) into a partial file")
    stack.add_argument("--output", type=Path, required=True)
    stack.add_argument("--part", action="append", default=[], help="a file or folder to store (path in the worker)")
    stack.add_argument("--as", dest="arcs", action="append", default=[], help="the path the --part of the same rank "
                       "is stored at, relative to the project folder")
    stack.add_argument("--optional", action="append", default=[], help="a stored path that may be missing")
    stack.add_argument("--max-bytes", type=int, required=True)
    stack.add_argument("--exclude", action="append", default=[])
    stack.add_argument("--keys-file", type=Path)
    restic = sub.add_parser("restic", help="run restic on a repository of the backup volume (ARGS after --)")
    restic.add_argument("--repo", type=Path, help="the repository's folder restic writes to (its owner is kept)")
    restic.add_argument("--store", type=Path, help="the backup volume's root in the worker, when mounted read-write")
    restic.add_argument("--go", type=Path, help="hold restic backup at its gate until this folder's go file says go")
    restic.add_argument("--wait-timeout", type=float, default=3600.0)
    restic.add_argument("--empty", type=Path, help="a restore: empty this folder (not itself) before restic runs")
    restic.add_argument("--staged", action="store_true",
                        help="a restore: say `staged`, then wait for `go SNAPSHOT_ID` (appended to ARGS) on stdin")
    restic.add_argument("args", nargs="*")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "probe":
        emit({"event": "probe", "protocol": PROTOCOL, **probe()})
        return 0
    if args.command == "mirror":
        return _mirror(args)
    if args.command == "stack":
        return _stack(args)
    if args.command == "restic":
        try:
            return run_restic(args.repo, args.store, list(args.args), emit, args.go, args.wait_timeout,
                              args.empty, args.staged)
        except OSError as exc:
            emit({"event": "error", "message": f"restic: {exc}"})
            return 1
    job = ArchiveJob(args.root, args.output, Compression(args.compression), tuple(args.exclude), args.keys_file,
                     args.progress_interval, args.special)
    try:
        outcome = run_archive(job, emit)
    except (SidecarError, OSError, ValueError) as exc:  # ValueError: unreadable key settings
        emit({"event": "error", "message": str(exc)})
        return 1
    emit({"event": "result", "protocol": PROTOCOL, "sha256": outcome.sha256, "size": outcome.size,
          "tar_bytes": outcome.tar_bytes})
    return 0


def _mirror(args: argparse.Namespace) -> int:
    job = MirrorJob(args.root, args.mirror, not args.no_room_check, args.go, args.wait_timeout, args.progress_interval,
                    tuple(args.exclude))
    if args.hold:
        if args.output is None:
            emit({"event": "error", "message": "mirror --hold needs --output"})
            return 2
        return held(job, args, COMMANDS)
    return 0 if _pass(job, emit)[0] is not None else 1


def _pass(job: MirrorJob, out, previous: dict[str, Seen] | None = None) -> tuple[dict | None, dict[str, Seen]]:
    """One pass, its outcome said on `out`: the outcome ({} when there was no room), or None
    when it failed (said too); and the manifest it wrote (for the next pass of this worker)."""
    try:
        outcome, manifest = mirror_pass(job, out, previous)
    except MirrorRefused as exc:
        out({"event": "refused", "message": str(exc)})
        return None, {}
    except (SidecarError, OSError) as exc:
        out({"event": "error", "message": f"{type(exc).__name__}: {exc}"})
        return None, {}
    if outcome is None:
        return {}, {}
    record = {"event": "result", "protocol": PROTOCOL, **asdict(outcome)}
    out(record)
    return record, manifest


def held(job: MirrorJob, args: argparse.Namespace, commands: "queue.Queue[str]") -> int:
    """The whole backup of a volume through its mirror in one worker (PROTOCOL 9): the first
    pass (stage `first`), `ready`, then on the sidecar's `go` (the container is down) the
    stopped pass (stage `stopped`), then on `archive` (the container runs again) the
    mirror's archive into --output (stage `archive`). Every line carries its stage. Any
    other word, or none within --wait-timeout, ends the worker; so does the end of stdin
    (watch_parent)."""
    def staged(stage: str):
        return lambda record: emit({**record, "stage": stage})

    first, manifest = _pass(replace(job, go=False), staged("first"))
    if not first:  # failed, or no room (said): the sidecar reads the volume itself
        return 1 if first is None else 0
    stopped = staged("stopped")
    stopped({"event": "ready"})
    if not _wait_for(commands, "go", job.wait_timeout, stopped):
        return 1
    if _pass(replace(job, go=False, stopped=True, check_room=False), stopped, manifest)[0] is None:
        return 1
    archive = staged("archive")
    if not _wait_for(commands, "archive", job.wait_timeout, archive):
        return 1
    compression = Compression(args.compression)
    keys = reuse.keys_fingerprint(args.keys_file)
    state = reuse.state_of(job.mirror, compression, job.exclude, keys) if keys is not None else None
    try:
        found = reuse.previous(job.mirror, state)
        if found is not None and reuse.copy_previous(found, args.output):
            framed = frames.load_index(job.mirror)
            if framed is not None and framed.path == found.path:  # the copy has the same frames
                frames.save_index(job.mirror, args.output, list(framed.frames.values()))
            if args.keys_file is not None:
                args.keys_file.unlink(missing_ok=True)  # not needed: removed as the archive would
            reuse.remember(job.mirror, state, args.output, found.sha256, found.tar_bytes)
            archive({"event": "result", "protocol": PROTOCOL, "sha256": found.sha256, "size": found.size,
                     "tar_bytes": found.tar_bytes, "reused": Path(found.path).name})
            return 0
        reuse.forget(job.mirror)  # until this archive is whole
        outcome = run_archive(ArchiveJob(job.mirror / TREE, args.output, compression, job.exclude, args.keys_file,
                                         job.progress_interval, job.mirror / SPECIAL, frames=job.mirror), archive)
        if outcome.frames:
            frames.save_index(job.mirror, args.output, list(outcome.frames))
        else:
            frames.forget_index(job.mirror)
        reuse.remember(job.mirror, state, args.output, outcome.sha256, outcome.tar_bytes)
    except (SidecarError, OSError, ValueError) as exc:
        archive({"event": "error", "message": str(exc)})
        return 1
    archive({"event": "result", "protocol": PROTOCOL, "sha256": outcome.sha256, "size": outcome.size,
             "tar_bytes": outcome.tar_bytes, "frames": len(outcome.frames), "frames_reused": outcome.reused})
    return 0


def _wait_for(commands: "queue.Queue[str]", word: str, timeout: float, out) -> bool:
    try:
        said = commands.get(timeout=timeout)
    except queue.Empty:
        out({"event": "error", "message": f"no {word} from the sidecar within {timeout:g} s"})
        return False
    if said != word:
        out({"event": "error", "message": f"the sidecar called the backup off ({said or 'an empty line'})"})
        return False
    return True


def _stack(args: argparse.Namespace) -> int:
    try:
        job = StackJob(args.output, Part.parse_all(args.part, args.arcs, args.optional), args.max_bytes,
                       tuple(args.exclude), args.keys_file)
        outcome = run_stack(job, emit)
    except (SidecarError, OSError, ValueError) as exc:  # ValueError: a part stored outside
        emit({"event": "error", "message": f"{type(exc).__name__}: {exc}"})
        return 1
    emit({"event": "result", "protocol": PROTOCOL, "sha256": outcome.sha256, "size": outcome.size,
          "tar_bytes": outcome.tar_bytes})
    return 0
