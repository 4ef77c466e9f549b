"""Arguments of `python -m sidecar.worker` and its JSON-lines output."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from dataclasses import asdict
from pathlib import Path

from ..core.errors import SidecarError
from ..core.model import Compression
from . import PROTOCOL
from .archive import ArchiveJob, probe, run_archive
from ..mirror.worker import MirrorJob, MirrorRefused, run_mirror
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
    try:
        outcome = run_mirror(job, emit)
    except MirrorRefused as exc:
        emit({"event": "refused", "message": str(exc)})
        return 1
    except (SidecarError, OSError) as exc:
        emit({"event": "error", "message": f"{type(exc).__name__}: {exc}"})
        return 1
    if outcome is not None:
        emit({"event": "result", "protocol": PROTOCOL, **asdict(outcome)})
    return 0


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
