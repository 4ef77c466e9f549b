"""A Compose project's stack archived by a worker container (`python -m sidecar.worker
stack`, sidecar/worker/stack.py): the sidecar never reads host paths itself.

The worker gets the project's working folder bind-mounted read-only at STACK_ROOT/project
and each file outside it (a secret kept elsewhere, a compose file given by `-f /abs/...`)
read-only at STACK_ROOT/outside/N, plus the backup volume as every archive worker does. It
is told which of those paths to store under which name; it measures them and leaves out
what is missing or over the size bound, saying so in `left_out` lines (names and sizes,
never content). Publishing (checksum, rename) is WorkerArchive's.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

from ..docker.engine import Engine
from ..core.model import Compression, Mount, WorkerMount, WorkerSpec
from ..core.stacks import OUTSIDE, Stack
from .base import ArchiveRequest, WorkerSettings
from .worker import CAPABILITIES, PYTHON, STORE_LABEL, TARGET_LABEL, WorkerArchive, WorkerSite, _Plan
from ..worker import record_of

STACK_ROOT = "/stack"


@dataclass(frozen=True)
class LeftOut:
    relpath: str  # as stored (relative to the project folder)
    host_path: str
    reason: str  # "missing", "too big", "a symlink to ..."
    size: int | None = None


def stack_mounts(stack: Stack) -> tuple[tuple[WorkerMount, ...], list[dict]]:
    """The worker's read-only binds and its `--part` values."""
    mounts = [WorkerMount("bind", stack.working_dir, f"{STACK_ROOT}/project")]
    parts = []
    for part in stack.parts:
        if part.relpath.startswith(OUTSIDE + "/"):
            inside = f"{STACK_ROOT}/outside/{len(mounts)}"
            mounts.append(WorkerMount("bind", part.host_path, inside))
        else:
            inside = posixpath.join(f"{STACK_ROOT}/project", part.relpath)
        parts.append({"src": inside, "arc": part.relpath, "optional": part.optional})
    return tuple(mounts), parts


class StackArchive(WorkerArchive):
    """One stack archive: open (partial file), read (the worker), finish (checksum, rename)."""

    def __init__(self, engine: Engine, request: ArchiveRequest, site: WorkerSite, stack: Stack, max_bytes: int):
        mounts, self._parts = stack_mounts(stack)
        super().__init__(engine, request, _Plan(site.image, site.store, mounts))
        self.stack, self.max_bytes = stack, max_bytes
        self.left_out: list[LeftOut] = []
        self.stored: tuple[str, ...] = ()

    def _spec(self, keys_path: Path | None, root: str, mounts: tuple[WorkerMount, ...],
              special: str | None = None) -> WorkerSpec:  # (special: a mirror's; a stack has none)
        request, plan = self.request, self.plan
        command = [*PYTHON, "stack", "--output", plan.store.inside(self.partial_path),
                   f"--max-bytes={self.max_bytes}"]
        for part in self._parts:
            command += [f"--part={part['src']}", f"--as={part['arc']}"]
            command += [f"--optional={part['arc']}"] if part["optional"] else []
        command += [f"--exclude={pattern}" for pattern in self.stack.exclude]
        if keys_path is not None:
            command.append(f"--keys-file={plan.store.inside(keys_path)}")
        timeout = request.worker.timeout if request.worker is not None else WorkerSettings.timeout
        return WorkerSpec(plan.image, tuple(command), "stack", plan.mounts + (plan.store.mount,),
                          labels={STORE_LABEL: plan.store.key, TARGET_LABEL: request.target}, user="0",
                          capabilities=CAPABILITIES, timeout=timeout)

    def on_line(self, line: str, progress) -> bool:
        record = record_of(line)
        if not record:
            return False
        event = record.get("event")
        if event == "left_out":
            relpath = str(record.get("part"))
            self.left_out.append(LeftOut(relpath, self._host_path(relpath), str(record.get("reason")),
                                         record.get("bytes")))
            return True
        if event == "stored":
            self.stored = tuple(str(p) for p in record.get("parts") or ())
            return True
        return super().on_line(line, progress)

    def _host_path(self, relpath: str) -> str:
        """The host path a stored name came from (a file inside a part: below the part's path)."""
        for part in sorted(self.stack.parts, key=lambda p: -len(p.relpath)):
            if relpath == part.relpath or relpath.startswith(part.relpath + "/"):
                return part.host_path + relpath[len(part.relpath):]
        return posixpath.join(self.stack.working_dir, relpath)


def stack_request(final_path: Path, stack: Stack, container_id: str, file_mode: int, encryption,
                  worker: WorkerSettings) -> ArchiveRequest:
    return ArchiveRequest(container_id, Mount("bind", stack.working_dir, "stack"), final_path, Compression.ZSTD,
                          file_mode, encryption, stack.exclude, worker, stack.project)
