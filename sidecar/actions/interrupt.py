"""Stopping or pausing a container for a backup or restore, and always putting it back
(and waiting until it is ready again: healthy, when it has a healthcheck).

The journal entry is written before the container is touched and removed only after it
runs again, so a sidecar killed in between restarts it on its next start
(`run_recovery`). A container its owner had stopped is never started. A restore that
failed after emptying a volume leaves its container stopped on purpose (`leave_stopped`):
the journal then says "left-stopped", which recovery reports and never acts on.

Someone else's stop wins over ours. The engine does not say who sent a request, but its
event log shows every stop request that found the container running: ours adds one
`kill` (the stop signal; a second one, SIGKILL, when the stop timeout ran out) and one
`stop`. More than that, between the journal entry and the put back, is someone else's
`docker stop`/`kill` (`docker-compose stop`/`down` included): the container is left
stopped, the journal forgets it, the run is aborted (`user_stop`). A stop sent to a
container that is already stopped leaves no trace at all (the engine answers 304, and
Compose does not even send it): when the sidecar is itself stopped by the engine with
its Compose project, it cannot know whether the stack is going down, so a target of its
own project is left to the journal instead of started (`stack_stopping`): the next start
puts it back unless someone started, stopped or removed it meanwhile.
"""

from __future__ import annotations

import collections
import enum
import logging
import threading
import time
from types import TracebackType
from typing import Sequence

from ..core.errors import BackupError, ContainerNotFound, EngineError, SidecarError
from ..core.model import ContainerEvent, ContainerInfo, ContainerState, Mount
from ..store.storage import JournalEntry
from ..core.swarm import ServiceMode, SwarmService, SwarmTask, someone_elses_change
from .context import Context

logger = logging.getLogger(__name__)

_RESTORE_ATTEMPTS = 3
# How often the engine's event log is read while a container is interrupted (seconds).
WATCH_INTERVAL = 0.5
# Only events after the journal entry count (the engine and the sidecar read one host
# clock): an earlier margin would count the previous run's own stop of a frequent schedule.
# A `docker stop` sent just before ours still shows, by its `stop` event at the end.
_EVENT_MARGIN = 0.0
_HARD_KILL = "9"
# Seconds past the stop timeout that a service scaled to 0 may take to shut its tasks down
# (and the least time given it to run again after the scale back).
SCALE_GRACE = 60.0


class LinkedEvent(threading.Event):
    """A cancel flag for one run: set by itself (someone else stopped the target) or
    through its parent (the sidecar shuts down). Only `is_set` looks at the parent."""

    def __init__(self, parent: threading.Event):
        super().__init__()
        self._parent = parent

    def is_set(self) -> bool:
        return super().is_set() or self._parent.is_set()


class InterruptionKind(enum.StrEnum):
    """How a container was interrupted; the value is what the journal stores."""

    STOPPED = "stopped"
    PAUSED = "paused"
    # Stopped by a restore that failed after emptying the volume: starting it would run the
    # app on an empty or partial volume. Recovery reports it and leaves it stopped.
    LEFT_STOPPED = "left-stopped"
    # A replicated Swarm service scaled to 0 (its "stop": stopping one task's container
    # would only make Swarm start another) and back to its replica count.
    SCALED = "scaled"


class Interruption:
    """Context manager: stops (or pauses) on enter, starts (or unpauses) on exit, on
    every path, and waits until the container is ready again (`ready_timeout`). A failure
    to put the container back is raised only when no other error is already on its way
    out; otherwise it is logged.

    While the container is interrupted the engine's events are watched: when someone
    else stops or removes it, `overruled` says so and `abort` (when given) is set, so the
    read in progress stops and lets go of the volume; on the way out it is left stopped."""

    def __init__(self, ctx: Context, container: ContainerInfo, action: InterruptionKind, target: str,
                 stop_timeout: int = 10, abort: threading.Event | None = None, ready_timeout: float = 0.0):
        self.ctx = ctx
        self.container = container
        self.action = action
        self.target = target
        self.stop_timeout = stop_timeout
        self.abort = abort
        self.ready_timeout = ready_timeout
        self.started_at: float | None = None
        self.seconds = 0.0
        self.overruled: str | None = None  # why the container was left stopped: someone else's stop
        self.ready: bool | None = None  # after the put back: healthy in time (None: no healthcheck, or not started)
        self._left = False
        self._since = 0.0
        self._stop_done = threading.Event()
        self._hard_killed = False  # our stop ran out of time and the engine sent SIGKILL
        self._watch_end = threading.Event()
        self._watcher: threading.Thread | None = None
        if action is InterruptionKind.STOPPED and container.replicated_task is not None:
            self.action = InterruptionKind.SCALED
        self._service: SwarmService | None = None  # SCALED: the service as it was before the scale-down
        self._version: int | None = None  # SCALED: its spec version after our scale-down

    def __enter__(self) -> "Interruption":
        if self.action is InterruptionKind.SCALED:
            return self._scale_down()
        c = self.container
        self._since = time.time()
        try:
            self.ctx.journal.add(JournalEntry(c.id, c.name, self.action.value, self.target, self._since))
        except OSError as exc:  # a full backup volume: never stop what could not be journalled
            raise BackupError(self.target, "stop", f"the journal cannot record {c.name} before it is "
                              f"{self.action} ({exc}); nothing was stopped") from exc
        self.started_at = time.monotonic()
        self._watcher = threading.Thread(target=self._watch, name=f"watch-{c.short_id}", daemon=True)
        self._watcher.start()
        try:
            if self.action is InterruptionKind.STOPPED:
                self._hard_killed = bool(self.ctx.engine.stop(c.id, timeout=self.stop_timeout))
            else:
                self.ctx.engine.pause(c.id)
        except BaseException:
            self._end_watch()
            self._put_back(raise_errors=False)
            raise
        finally:
            self._stop_done.set()
        phase = "stop" if self.action is InterruptionKind.STOPPED else "pause"
        logger.info(f"container {self.action}", extra=self._fields(
            phase=phase, seconds=round(time.monotonic() - self.started_at, 3)))  # the stop itself: its share of the window
        return self

    def __exit__(self, exc_type, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._end_watch()
        if self._left:
            if self.started_at is not None:
                self.seconds = time.monotonic() - self.started_at
            return
        self._put_back(raise_errors=exc_type is None)

    def _scale_down(self) -> "Interruption":
        """A replicated Swarm service: scale it to 0 and wait until no task of it runs."""
        task = self.container.replicated_task
        assert task is not None
        service = self.ctx.engine.service(task.service_id)
        if service.mode is not ServiceMode.REPLICATED or service.replicas is None:
            raise BackupError(self.target, "stop", f"Swarm service {service.name!r} is not replicated; nothing stopped")
        self._service = service
        self._since = time.time()
        self._journal_scale(None)
        self.started_at = time.monotonic()
        try:
            self._version = self.ctx.engine.scale_service(service.id, 0, version=service.version).version
            self._journal_scale(self._version)
            self._wait_tasks_ended(service, self.stop_timeout + SCALE_GRACE)
        except BaseException:
            self._put_back(raise_errors=False)
            raise
        finally:
            self._stop_done.set()
        self._watcher = threading.Thread(target=self._watch, name=f"watch-{service.id[:12]}", daemon=True)
        self._watcher.start()
        logger.info("service scaled to 0", extra=self._fields(phase="stop", service=service.name,
                                                               replicas=service.replicas))
        return self

    def _journal_scale(self, version: int | None) -> None:
        service = self._service
        assert service is not None
        try:
            self.ctx.journal.add(JournalEntry(service.id, service.name, InterruptionKind.SCALED.value, self.target,
                                              self._since, replicas=service.replicas, version=version))
        except OSError as exc:
            if version is not None:  # scaled already: the put back below still runs
                raise BackupError(self.target, "stop", f"the journal cannot record service {service.name}: {exc}") \
                    from exc
            raise BackupError(self.target, "stop", f"the journal cannot record service {service.name} before it "
                              f"is scaled to 0 ({exc}); nothing was stopped") from exc

    def _wait_tasks_ended(self, service: SwarmService, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            left = [t for t in self.ctx.engine.service_tasks(service.id) if not t.finished]
            if not left:
                return
            if time.monotonic() >= deadline:
                raise BackupError(self.target, "stop", f"Swarm service {service.name!r} still has {len(left)} "
                                  f"task(s) not shut down {timeout:.0f} s after it was scaled to 0 "
                                  f"(states: {', '.join(sorted(t.state for t in left))})")
            time.sleep(0.2)

    def leave_stopped(self, reason: str) -> None:
        """Do not put the container back on the way out, and journal why, so a restarted
        sidecar does not start it either."""
        leave_stopped(self.ctx, self.container, self.target, reason)
        self._left = True

    # --- someone else's stop -------------------------------------------------------------
    def _watch(self) -> None:
        while not self._watch_end.wait(WATCH_INTERVAL):
            if self._check():
                return

    def check(self) -> bool:
        """Reads the events since the journal entry now; True when someone else's stop was
        seen (then `overruled` says why and `abort` is set)."""
        return self._check()

    def _check(self) -> bool:
        if self.overruled is not None:
            return True
        if self.action is InterruptionKind.SCALED:
            return self._check_service()
        try:
            events = self.ctx.engine.container_events(self.container.id, self._since - _EVENT_MARGIN)
        except SidecarError as err:  # the engine is busy or gone: the put back finds out
            logger.debug("could not read the container's events", extra=self._fields(error=str(err)))
            return False
        reason = user_stop(events, self.action, stop_returned=self._stop_done.is_set(), hard_killed=self._hard_killed)
        if reason is None:
            return False
        self.overruled = reason
        if self.abort is not None:
            self.abort.set()
        return True

    def _check_service(self) -> bool:
        """Someone else's `docker service scale` or `docker service rm` wins, as a `docker
        stop` does for a container; their update of anything else is kept and the service
        scaled back as planned (see swarm.someone_elses_change)."""
        if self._version is None or self._service is None:
            return False
        try:
            now = self.ctx.engine.service(self._service.id)
        except ContainerNotFound:
            reason = "the service was removed"
        except SidecarError as err:
            logger.debug("could not read the service", extra=self._fields(error=str(err)))
            return False
        else:
            why = someone_elses_change(now, self._version)
            if why is None:
                if now.version != self._version:  # their update keeps our 0: scaled back, with it
                    logger.info("service updated by someone else while scaled to 0; it is scaled back as planned",
                                extra=self._fields(service=now.name))
                    self._version = now.version
                return False
            reason = why
        self.overruled = reason
        if self.abort is not None:
            self.abort.set()
        return True

    def _end_watch(self) -> None:
        self._watch_end.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=10)

    def _put_back(self, raise_errors: bool) -> None:
        try:
            if self._check():
                self._leave_to_its_owner()
                return
            if self.action is InterruptionKind.SCALED:
                assert self._service is not None
                acted = put_back_service(self.ctx, self._service.id, self._service.replicas or 0, self._version,
                                         self.target)
                if acted:
                    self.ready = wait_service_ready(self.ctx, self._service, self.target,
                                                    max(self.ready_timeout, SCALE_GRACE))
                return
            if self.ctx.cancel.is_set() and (why := stack_stopping(self.ctx, self.container, self._since)):
                self._left = True
                logger.warning("container not started: the sidecar is being stopped with its Compose project; the "
                               "journal keeps it and the next start puts it back unless someone started, stopped "
                               "or removed it meanwhile", extra=self._fields(phase="restart", reason=why))
                return
            acted = put_back(self.ctx, self.container.id, self.action, self.target)
            if acted and self.ready_timeout > 0:
                self.ready = wait_ready(self.ctx, self.container, self.target, self.ready_timeout)
        except SidecarError as err:
            logger.error("could not put the container back; it stays in the journal and is retried "
                         "on the next start", extra=self._fields(phase="restart", error=str(err)))
            if raise_errors:
                raise
        finally:
            if self.started_at is not None:
                self.seconds = time.monotonic() - self.started_at

    def _leave_to_its_owner(self) -> None:
        self._left = True
        self.ctx.journal.remove(self._service.id if self._service is not None else self.container.id)
        logger.warning("container left stopped: someone else stopped it while the sidecar had it "
                       f"{self.action}; not starting it", extra=self._fields(phase="restart", reason=self.overruled))

    def _fields(self, **more) -> dict:
        return {"target": self.target, "container": self.container.name, **more}


def user_stop(events: Sequence[ContainerEvent], action: InterruptionKind | str, stop_returned: bool = True,
              hard_killed: bool = False) -> str | None:
    """Why these events (of one container, since just before the sidecar interrupted it)
    show someone else's stop or removal; None when they show only the sidecar's own.
    `stop_returned`: the sidecar's stop call is over (before that, a SIGKILL may be the
    engine ending it); `hard_killed`: it ended with SIGKILL (one SIGKILL is then ours)."""
    action = InterruptionKind(action)
    counts = collections.Counter(e.action for e in events)
    if counts["destroy"]:
        return "the container was removed"
    if action is InterruptionKind.PAUSED:
        # The sidecar only pauses: any stop, kill or exit is someone else's.
        if counts["stop"] or counts["kill"] or counts["die"]:
            return f"it was stopped or killed while paused (events: {_summary(counts)})"
        return None
    signals = [e.signal for e in events if e.action == "kill"]
    soft = sum(s != _HARD_KILL for s in signals)
    # Our stop sends the container's stop signal once (SIGKILL itself for an image whose
    # STOPSIGNAL is SIGKILL), plus one SIGKILL when its timeout ran out.
    ours = 1 + (1 if (hard_killed or not stop_returned) else 0)
    if counts["stop"] > 1 or soft > 1 or len(signals) > ours:
        return f"another stop or kill request reached the engine (events: {_summary(counts)})"
    return None


def _summary(counts: collections.Counter) -> str:
    return ", ".join(f"{n} {action}" for action, n in sorted(counts.items()) if action in
                     ("kill", "stop", "die", "destroy", "start", "pause", "unpause"))


def stack_stopping(ctx: Context, container: ContainerInfo, since: float) -> str | None:
    """While the sidecar shuts down: whether its own container is being stopped by the
    engine together with `container`'s Compose project (a stop Compose does not send to a
    container that is already stopped). None when the sidecar runs outside that project,
    was not stopped through the engine, or the project's other containers run on (only
    the sidecar is being stopped or recreated)."""
    project = container.compose_project
    try:
        own = ctx.engine.own_container()
        if project is None or own is None or own.compose_project != project:
            return None
        if not _stopped_since(ctx, own.id, since):
            return None
        others = [c for c in ctx.engine.list_containers(project, running=False) if c.id not in (own.id, container.id)]
        if others and not any(_stopped_since(ctx, c.id, since) for c in others):
            return None
    except SidecarError as err:
        logger.debug("could not tell whether the stack is being stopped", extra={"error": str(err)})
        return None
    return f"the sidecar's container {own.name!r} was stopped with Compose project {project!r}"


def _stopped_since(ctx: Context, container_id: str, since: float) -> bool:
    events = ctx.engine.container_events(container_id, since - _EVENT_MARGIN)
    return any(e.action in ("kill", "stop") for e in events)


def wait_ready(ctx: Context, container: ContainerInfo, target: str, timeout: float) -> bool | None:
    """After a start or unpause: wait until the healthcheck says healthy (up to `timeout`
    seconds). Returns True when healthy, False when it did not get there in time (a
    warning), None when the container has no healthcheck (ready once it runs)."""
    fields = {"target": target, "container": container.name, "phase": "ready"}
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        info = ctx.engine.inspect(container.id)
        if info.health is None:
            return None
        if info.health == "healthy":
            return True
        if time.monotonic() >= deadline or info.state is not ContainerState.RUNNING:
            logger.warning("container not healthy after its backup: the healthcheck did not pass in time", extra={
                **fields, "health": info.health, "state": info.state.value, "ready_timeout": timeout})
            return False
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 1.0)


def leave_stopped(ctx: Context, container: ContainerInfo, target: str, reason: str) -> None:
    """Journal a container as deliberately left stopped (see InterruptionKind.LEFT_STOPPED)."""
    journal_left_stopped(ctx, container, target)
    logger.error("container left stopped: it would start on an empty or partial volume", extra={
        "target": target, "container": container.name, "phase": "restore", "error": reason})


def journal_key(container: ContainerInfo) -> tuple[str, str]:
    """Under which id and name the journal keeps what was done to `container`: its
    replicated Swarm service's (which a stop scales as a whole), else its own."""
    task = container.replicated_task
    if task is not None:
        return task.service_id, task.service_name
    return container.id, container.name


def journal_left_stopped(ctx: Context, container: ContainerInfo, target: str) -> None:
    """Journal it as left stopped without a report: written by a restore before it empties a
    volume, so a sidecar killed from then on does not start the app on an empty or partial
    volume on its next start. The restore's own put back (on success) clears the entry.
    A replicated Swarm service stays at 0 replicas; the entry keeps the count to restore."""
    key, name = journal_key(container)
    replicas = next((e.replicas for e in ctx.journal.entries() if e.container_id == key), None)
    if replicas is None:
        ctx.journal.add(JournalEntry(key, name, InterruptionKind.LEFT_STOPPED.value, target, time.time()))
        return
    ctx.journal.add(JournalEntry(key, name, InterruptionKind.LEFT_STOPPED.value, target, time.time(),
                                 replicas=replicas, image=container.image_id,
                                 mounts=[[m.kind, m.source, m.destination] for m in container.mounts]))


def left_at_zero(ctx: Context, target: str) -> ContainerInfo | None:
    """A replicated Swarm service a failed restore left at 0 replicas, as a container
    without an id (Swarm removed its task containers) that a restore can still reach the
    volumes of, through a stand-in (Context.readable)."""
    for e in ctx.journal.entries():
        if e.target == target and e.action == InterruptionKind.LEFT_STOPPED.value and e.mounts is not None:
            task = SwarmTask(e.container_id, e.container_name, "", "", 1)
            return ContainerInfo("", e.container_name, e.image or "", e.image or "", ContainerState.EXITED, {},
                                 tuple(Mount(kind, source, dest) for kind, source, dest in e.mounts), swarm=task)
    return None


def left_stopped_entry(ctx: Context, container: ContainerInfo) -> JournalEntry | None:
    key, _ = journal_key(container)
    return next((e for e in ctx.journal.entries()
                 if e.container_id == key and e.action == InterruptionKind.LEFT_STOPPED.value), None)


def is_left_stopped(ctx: Context, container: ContainerInfo) -> bool:
    return left_stopped_entry(ctx, container) is not None


def put_back_left(ctx: Context, container: ContainerInfo, target: str) -> None:
    """After a restore that succeeded: start what a failed restore had left stopped (a
    replicated Swarm service: scale it back to the count it had)."""
    entry = left_stopped_entry(ctx, container)
    if entry is not None and entry.replicas is not None:
        put_back_service(ctx, entry.container_id, entry.replicas, None, target)
        return
    put_back(ctx, container.id, InterruptionKind.STOPPED, target)


def put_back(ctx: Context, container_id: str, action: InterruptionKind | str, target: str,
             since: float | None = None) -> bool:
    """Start (or unpause) a container the sidecar interrupted, then forget it in the
    journal. Returns True when something had to be done. Retries engine errors a few times.
    `action` may be the journal's string. With `since` (the journal entry's time, for a
    sidecar that died meanwhile): the engine's events since then are read first, and a
    container someone else stopped or removed is forgotten, not started."""
    action = InterruptionKind(action)
    if action is InterruptionKind.LEFT_STOPPED:
        raise ValueError("a container left stopped is never put back by the journal")
    if since is not None and (reason := _stopped_by_someone(ctx, container_id, action, since)):
        ctx.journal.remove(container_id)
        logger.warning("container left stopped: someone else stopped it while the sidecar had it "
                       f"{action}; not starting it", extra={"target": target, "container": container_id[:12],
                                                           "phase": "recovery", "reason": reason})
        return False
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
            _forget(ctx, container_id, target)
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


def _stopped_by_someone(ctx: Context, container_id: str, action: InterruptionKind, since: float) -> str | None:
    try:
        events = ctx.engine.container_events(container_id, since - _EVENT_MARGIN)
    except SidecarError:  # unknown: the usual put back decides (and reports what fails)
        return None
    # The sidecar that died may have seen its stop run out of time: one SIGKILL may be ours.
    return user_stop(events, action, hard_killed=True)


def _forget(ctx: Context, container_id: str, target: str) -> None:
    """Clear a journal entry once its container is back. On a full backup volume (the entry
    cannot be rewritten) it stays: harmless, the next start finds the container running and
    forgets it then; raising here would turn a clean failure into a crash."""
    try:
        ctx.journal.remove(container_id)
    except OSError as exc:
        logger.warning("journal entry not cleared; the container runs again, the next start forgets it",
                       extra={"target": target, "container": container_id[:12], "error": str(exc)})


def put_back_service(ctx: Context, service_id: str, replicas: int, version: int | None, target: str) -> bool:
    """Scale a replicated Swarm service the sidecar scaled to 0 back to `replicas`, then
    forget it in the journal. True when it was scaled. Someone else's scale since our
    scale-down wins (swarm.someone_elses_change; when the sidecar died before it learnt
    `version`: a replica count no longer 0); their update of anything else does not."""
    fields = {"target": target, "service": service_id[:12], "phase": "restart"}
    try:
        now = ctx.engine.service(service_id)
    except ContainerNotFound:
        ctx.journal.remove(service_id)
        logger.warning("scaled service no longer exists", extra=fields)
        return False
    fields["service"] = now.name
    if now.replicas == replicas:
        _forget(ctx, service_id, target)
        return False
    why = someone_elses_change(now, version) if version is not None else (
        f"someone else scaled it to {now.replicas} meanwhile" if now.replicas != 0 else None)
    if why is not None:
        ctx.journal.remove(service_id)
        logger.warning("service left as it is: someone else changed it while the sidecar had it scaled to 0; "
                       "not scaling it back", extra={**fields, "replicas": now.replicas, "wanted": replicas,
                                                     "reason": why})
        return False
    last: EngineError | None = None
    for attempt in range(_RESTORE_ATTEMPTS):
        try:
            ctx.engine.scale_service(service_id, replicas, version=now.version)
            _forget(ctx, service_id, target)
            logger.info("service scaled back", extra={**fields, "replicas": replicas})
            return True
        except EngineError as err:
            last = err
            time.sleep(0.5 * (attempt + 1))
            now = ctx.engine.service(service_id)
    assert last is not None
    raise last


def wait_service_ready(ctx: Context, service: SwarmService, target: str, timeout: float) -> bool:
    """After a scale back: wait until the service runs its replica count of tasks (Swarm
    counts a task with a healthcheck as running once it is healthy)."""
    deadline = time.monotonic() + timeout
    wanted = service.replicas or 0
    while True:
        running = sum(t.running for t in ctx.engine.service_tasks(service.id))
        if running >= wanted:
            return True
        if time.monotonic() >= deadline:
            logger.warning("service not running all its replicas after its backup", extra={
                "target": target, "service": service.name, "phase": "ready", "running": running,
                "replicas": wanted, "ready_timeout": timeout})
            return False
        time.sleep(0.2)
