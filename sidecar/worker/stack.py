"""The stack worker: archives a Compose project's definition (its files bind-mounted
read-only into the worker) into a partial file the sidecar created on the backup volume.

Each part comes as `--part SRC` (its path in the worker) with `--as ARC` (the path it is
stored at, relative to the project folder); `--optional ARC` may be missing. A part
bigger than `--max-bytes` (a folder: everything in it) is left out and said in a
`left_out` line, as is a part that is missing; the rest is written. Members are written by
Python's tarfile (PAX, numeric owners): a stack is a handful of small files. The archive
holds `.` first and every parent folder of a part before it, so it unpacks like a volume's.
Content never reaches a line of output: only names and sizes.
"""

from __future__ import annotations

import os
import stat
import tarfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import zstandard

from ..tarball import crypto
from ..tarball.archive import ZSTD_LEVEL, HashingFile, is_excluded
from .archive import ArchiveOutcome, read_keys

Emit = Callable[[dict], None]


@dataclass(frozen=True)
class Part:
    src: Path  # in the worker
    arc: str  # relative path in the archive
    optional: bool = False

    @classmethod
    def parse(cls, src: str, arc: str, optional: bool = False) -> "Part":
        arc = arc.strip("/")
        if not arc or arc.startswith("../") or "/../" in f"/{arc}/" or arc == "..":
            raise ValueError(f"part {arc!r} would be stored outside the stack folder")
        return cls(Path(src), arc, optional)

    @classmethod
    def parse_all(cls, srcs: list[str], arcs: list[str], optional: list[str]) -> tuple["Part", ...]:
        """`--part SRC` and `--as ARC` pair up in order; `--optional ARC` marks the ones that may be missing."""
        if len(srcs) != len(arcs):
            raise ValueError(f"{len(srcs)} --part but {len(arcs)} --as")
        return tuple(cls.parse(src, arc, arc in optional) for src, arc in zip(srcs, arcs))


@dataclass(frozen=True)
class StackJob:
    output: Path
    parts: tuple[Part, ...]
    max_bytes: int
    exclude: tuple[str, ...] = ()
    keys_file: Path | None = None


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file below a folder (symlinks not followed)."""
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                pass
    return total


def chosen(job: StackJob, emit: Emit) -> list[Part]:
    """The parts to write: present, not excluded, within the bound; the others said."""
    kept = []
    for part in job.parts:
        if is_excluded(part.arc, job.exclude):
            continue
        try:
            size = size_of(part.src)
        except FileNotFoundError:
            if not part.optional:
                emit({"event": "left_out", "part": part.arc, "reason": "missing"})
            continue
        if size > job.max_bytes:
            emit({"event": "left_out", "part": part.arc, "reason": "too big", "bytes": size})
            continue
        kept.append(part)
    return kept


def _members(part: Part, exclude: tuple[str, ...]) -> Iterator[tuple[Path, str]]:
    """(path in the worker, name in the archive) of a part and, for a folder, what is in it."""
    yield part.src, part.arc
    if not part.src.is_dir() or part.src.is_symlink():
        return
    for folder, dirs, files in os.walk(part.src):  # symlinked folders are listed, not followed
        base = Path(folder)
        rel = base.relative_to(part.src).as_posix()
        prefix = part.arc if rel == "." else f"{part.arc}/{rel}"
        dirs[:] = sorted(d for d in dirs if not is_excluded(f"{prefix}/{d}", exclude))
        for name in sorted(set(dirs) | set(files)):
            if not is_excluded(f"{prefix}/{name}", exclude):
                yield base / name, f"{prefix}/{name}"


def _escapes(info: tarfile.TarInfo) -> bool:
    """A symlink the checked extractor would refuse (absolute, or climbing with `..`)."""
    return info.issym() and (info.linkname.startswith("/") or ".." in info.linkname.split("/"))


def _info(tar: tarfile.TarFile, path: Path, arc: str) -> tarfile.TarInfo:
    info = tar.gettarinfo(str(path), arcname="./" + arc)
    info.uname = info.gname = ""
    return info


def write_tar(out: BinaryIO, parts: list[Part], exclude: tuple[str, ...], emit: Emit) -> int:
    """The tar stream of `parts` into `out`; returns the tar bytes."""
    counter = _Counting(out)
    written: set[str] = set()
    with tarfile.open(fileobj=counter, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        root = tarfile.TarInfo(".")
        root.type, root.mode, root.mtime = tarfile.DIRTYPE, 0o755, int(parts[0].src.stat().st_mtime) if parts else 0
        tar.addfile(root)
        for part in sorted(parts, key=lambda p: p.arc):
            folders = part.arc.split("/")[:-1]
            for i in range(1, len(folders) + 1):  # parents: plain folders, as the restored project needs them
                name = "/".join(folders[:i])
                if name not in written:
                    written.add(name)
                    info = tarfile.TarInfo("./" + name)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, root.mtime
                    tar.addfile(info)
            for path, arc in _members(part, exclude):
                if arc in written:
                    continue
                written.add(arc)
                info = _info(tar, path, arc)
                if _escapes(info):
                    emit({"event": "left_out", "part": arc, "reason": f"a symlink to {info.linkname}"})
                elif info.isreg():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                elif info.isdir() or info.issym():
                    tar.addfile(info)
                # sockets, devices, fifos: nothing a stack needs
    return counter.size


class _Counting:
    def __init__(self, out: BinaryIO):
        self._out, self.size = out, 0

    def write(self, data) -> int:
        self.size += len(data)
        return self._out.write(data)


def run_stack(job: StackJob, emit: Emit) -> ArchiveOutcome:
    """Write the stack archive (zstd, encrypted when a keys file says so) into job.output."""
    encryption = read_keys(job.keys_file) if job.keys_file is not None else None
    parts = chosen(job, emit)
    fd = os.open(job.output, os.O_WRONLY | os.O_TRUNC)  # no O_CREAT: the sidecar made it
    with os.fdopen(fd, "wb") as f:
        sink = HashingFile(f)
        with ExitStack() as stack:
            out = stack.enter_context(crypto.encrypting(sink, encryption)) if encryption is not None else sink
            compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(out, closefd=False)
            tar_bytes = write_tar(compressor, parts, job.exclude, emit)
            compressor.close()
        f.flush()
        os.fsync(f.fileno())
    emit({"event": "stored", "parts": [p.arc for p in parts]})
    return ArchiveOutcome(sink.sha.hexdigest(), sink.size, tar_bytes)
