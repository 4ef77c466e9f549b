"""Stopping or pausing a container for a backup or restore, and always putting it back.

The journal entry is written before the container is touched and removed only after it
runs again, so a sidecar killed in between restarts it on its next start
(`run_recovery`). A container its owner had stopped is never started. A restore that
failed after emptying a volume leaves its container stopped on purpose (`leave_stopped`):
the journal then says "left-stopped", which recovery reports and never acts on.
"""

from __future__ import annotations

import enum
import logging
import time
from types import TracebackType

from ..errors import ContainerNotFound, EngineError, SidecarError
from ..model import ContainerInfo, ContainerState
from ..storage import JournalEntry
from .context import Context

logger = logging.getLogger(__name__)

_RESTORE_ATTEMPTS = 3


class InterruptionKind(enum.StrEnum):
    """How a container was interrupted; the value is what the journal stores."""

    STOPPED = "stopped"
    PAUSED = "paused"
    # Stopped by a restore that failed after emptying the volume: starting it would run the
    # app on an empty or partial volume. Recovery reports it and leaves it stopped.
    LEFT_STOPPED = "left-stopped"


class Interruption:
    """Context manager: stops (or pauses) on enter, starts (or unpauses) on exit, on
    every path. A failure to put the container back is raised only when no other error
    is already on its way out; otherwise it is logged."""

    def __init__(self, ctx: Context, container: ContainerInfo, action: InterruptionKind, target: str,
                 stop_timeout: int = 10):
        self.ctx = ctx
        self.container = container
        self.action = action
        self.target = target
        self.stop_timeout = stop_timeout
        self.started_at: float | None = None
        self.seconds = 0.0
        self._left = False

    def __enter__(self) -> "Interruption":
        c = self.container
        self.ctx.journal.add(JournalEntry(c.id, c.name, self.action.value, self.target, time.time()))
        self.started_at = time.monotonic()
        try:
            if self.action is InterruptionKind.STOPPED:
                self.ctx.engine.stop(c.id, timeout=self.stop_timeout)
            else:
                self.ctx.engine.pause(c.id)
        except BaseException:
            self._put_back(raise_errors=False)
            raise
        phase = "stop" if self.action is InterruptionKind.STOPPED else "pause"
        logger.info(f"container {self.action}", extra=self._fields(phase=phase))
        return self

    def __exit__(self, exc_type, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._left:
            if self.started_at is not None:
                self.seconds = time.monotonic() - self.started_at
            return
        self._put_back(raise_errors=exc_type is None)

    def leave_stopped(self, reason: str) -> None:
        """Do not put the container back on the way out, and journal why, so a restarted
        sidecar does not start it either."""
        leave_stopped(self.ctx, self.container, self.target, reason)
        self._left = True

    def _put_back(self, raise_errors: bool) -> None:
        try:
            put_back(self.ctx, self.container.id, self.action, self.target)
        except SidecarError as err:
            logger.error("could not put the container back; it stays in the journal and is retried "
                         "on the next start", extra=self._fields(phase="restart", error=str(err)))
            if raise_errors:
                raise
        finally:
            if self.started_at is not None:
                self.seconds = time.monotonic() - self.started_at

    def _fields(self, **more) -> dict:
        return {"target": self.target, "container": self.container.name, **more}


def leave_stopped(ctx: Context, container: ContainerInfo, target: str, reason: str) -> None:
    """Journal a container as deliberately left stopped (see InterruptionKind.LEFT_STOPPED)."""
    ctx.journal.add(JournalEntry(container.id, container.name, InterruptionKind.LEFT_STOPPED.value, target,
                                 time.time()))
    logger.error("container left stopped: it would start on an empty or partial volume", extra={
        "target": target, "container": container.name, "phase": "restore", "error": reason})


def is_left_stopped(ctx: Context, container_id: str) -> bool:
    return any(e.container_id == container_id and e.action == InterruptionKind.LEFT_STOPPED.value
               for e in ctx.journal.entries())


def put_back(ctx: Context, container_id: str, action: InterruptionKind | str, target: str) -> bool:
    """Start (or unpause) a container the sidecar interrupted, then forget it in the
    journal. Returns True when something had to be done. Retries engine errors a few times.
    `action` may be the journal's string."""
    action = InterruptionKind(action)
    if action is InterruptionKind.LEFT_STOPPED:
        raise ValueError("a container left stopped is never put back by the journal")
    last: EngineError | None = None
    for attempt in range(_RESTORE_ATTEMPTS):
        try:
            state = ctx.engine.state(container_id)
            acted = False
            if action is InterruptionKind.STOPPED and state not in (ContainerState.RUNNING, ContainerState.RESTARTING):
                if state is ContainerState.PAUSED:
                    ctx.engine.unpause(container_id)
                else:
                    ctx.engine.start(container_id)
                acted = True
            elif action is InterruptionKind.PAUSED and state is ContainerState.PAUSED:
                ctx.engine.unpause(container_id)
                acted = True
            ctx.journal.remove(container_id)
            return acted
        except ContainerNotFound:
            ctx.journal.remove(container_id)
            logger.warning("interrupted container no longer exists", extra={"target": target,
                                                                            "container": container_id[:12]})
            return False
        except EngineError as err:
            last = err
            time.sleep(0.5 * (attempt + 1))  # short backoff between engine retries
    assert last is not None
    raise last
