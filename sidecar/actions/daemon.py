"""The long-running sidecar: follows labelled containers through the engine's events,
runs each target's backups on its own cron schedule, and shuts down cleanly.

Threads: the caller's thread runs the scheduler loop; one thread follows the event
stream; a pool of BACKUP_CONCURRENCY workers runs backups.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import datetime
from typing import Callable

from ..core.consistency import may_be_at_risk
from ..core.discovery import Discovery, is_candidate_container
from ..core.groups import Group, groups_of
from ..core.errors import SidecarError
from ..telemetry.metrics import Metrics, TargetView
from ..core.labels import ENABLE
from ..core.model import ContainerInfo, Target
from ..core.stacks import ITEM, discover_stacks
from .backup import BackupOutcome, BackupResult, run_backup, run_group
from .context import Context
from .mirrors import remove_stale_mirrors, used_volumes
from .plan import swarm_warnings
from .recover import run_recovery
from .sources import items
from . import maintenance
from .rotate import run_rotation
from .status import copy_states, newest_archive_times
from .sync import run_sync

logger = logging.getLogger(__name__)

# Longest the scheduler sleeps without looking up (heartbeat for the healthcheck).
TICK_SECONDS = 5.0
MAINTENANCE_LOOK_SECONDS = 300.0  # how often the daemon looks whether restic upkeep is due (reads a small file)
SWARM_CHECK_SECONDS = 300.0
# After the shutdown grace, how long aborted backups get to put their containers back.
PUT_BACK_SECONDS = 5.0
_EVENT_ACTIONS = {"create", "start", "die", "destroy", "rename", "update", "stop", "kill"}


class Daemon:
    def __init__(self, ctx: Context, on_outcome: Callable[[BackupOutcome], None] | None = None,
                 metrics: Metrics | None = None):
        self.ctx = ctx
        self.on_outcome = on_outcome
        self.metrics = metrics
        self._loop_alive = time.monotonic()
        self._engine_ok = True
        self._next_ping = 0.0
        self._next_swarm_check = 0.0
        self._unseen: set[str] = set()  # Swarm services whose labels no worker can read, last reported
        self._stop = threading.Event()
        self._started = threading.Event()  # recovery and the first discovery are done
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._containers: dict[str, ContainerInfo] = {}
        self._discovery = Discovery((), ())
        self._next: dict[str, datetime] = {}  # target name -> next run
        self._running: dict[str, Future] = {}
        self._reported: dict[str, str] = {}  # container id -> last reported skip reason
        self._events = None
        self._pool = ThreadPoolExecutor(max_workers=ctx.settings.concurrency, thread_name_prefix="backup")
        # Off-site sync cycles run beside backups, one at a time; the first soon after start.
        self._sync_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sync")
        self._sync_future: Future | None = None
        self._next_sync = time.monotonic() + min(ctx.settings.sync_interval, 10.0)
        self._next_maintenance = time.monotonic() + 60.0  # not in the first minute's backups
        # Set by a shutdown that left a backup blocked in an engine call: the process must
        # exit without joining the worker threads (cli.cmd_run does).
        self.abandoned = False

    # --- public -------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()
        events = self._events
        if events is not None:
            try:
                events.close()
            except Exception:  # closing a half-broken stream may fail; we are leaving anyway
                pass

    def run(self) -> None:
        run_recovery(self.ctx)
        if self.metrics is not None:
            self.metrics.recover(newest_archive_times(self.ctx))
            self.metrics.set_up(True)
        self.refresh_all()
        self._remove_stale_mirrors()
        self._update_copy_metrics()
        watcher = threading.Thread(target=self._follow_events, name="events", daemon=True)
        watcher.start()
        self._started.set()
        scope = self.ctx.scope()
        logger.info("sidecar running", extra={"targets": len(self._discovery.targets),
                                               "skipped": len(self._discovery.skipped), "scope": scope.describe()})
        try:
            self._schedule_loop()
        finally:
            self._shutdown()

    @property
    def discovery(self) -> Discovery:
        return self._discovery

    # --- discovery ----------------------------------------------------------------
    def refresh_all(self) -> None:
        containers = self.ctx.engine.list_candidates(ENABLE)
        with self._lock:
            self._containers = {c.id: c for c in containers}
        self._rebuild()

    def refresh_one(self, container_id: str, action: str) -> None:
        info = None if action == "destroy" else self.ctx.engine.find_container(container_id)
        with self._lock:
            if info is not None and is_candidate_container(info):
                self._containers[info.id] = info
            elif self._containers.pop(container_id, None) is None:
                return
        self._rebuild()

    def _rebuild(self) -> None:
        with self._lock:
            found = self.ctx.discover(list(self._containers.values()))
            old = {t.backup_name: t for t in self._discovery.targets}
            now = self.ctx.now()
            for target in found.targets:
                before = old.get(target.backup_name)
                if before is None or before.config.schedule != target.config.schedule or target.backup_name not in self._next:
                    self._next[target.backup_name] = target.config.schedule.next_after(now, self.ctx.settings.tz)
                if before is None or before.container.id != target.container.id or before.config != target.config:
                    logger.info("target found" if before is None else "target changed", extra={
                        "target": target.backup_name, "container": target.container.name,
                        "schedule": target.config.schedule.expression, "strategy": target.method,
                        "volumes": list(items(target)),
                        "next_run": self._next[target.backup_name].isoformat()})
                    for warning in swarm_warnings(target) if before is None else ():
                        logger.warning(warning, extra={"target": target.backup_name, "phase": "config"})
            names = {t.backup_name for t in found.targets}
            for name in list(self._next):
                if name not in names:
                    del self._next[name]
                    logger.info("target removed", extra={"target": name})
            for skipped in found.skipped:
                if self._reported.get(skipped.container.id) != skipped.reason:
                    logger.error(f"container skipped: {skipped.reason}",
                                 extra={"container": skipped.container.name, "phase": "config"})
            self._reported = {s.container.id: s.reason for s in found.skipped}
            self._discovery = found
            if self.metrics is not None:
                self.metrics.discovered(self._views(found), len(found.skipped))
        self._wake.set()

    def _views(self, found: Discovery) -> list[TargetView]:
        """The targets' series, and `stack` series for each project whose stack its first
        target's runs archive (as far as the labelled containers tell; a project's
        unlabelled services are not listed here)."""
        views = {t.backup_name: self._view(t) for t in found.targets}
        stacks = discover_stacks(found.targets, self._containers.values(), self.ctx.settings.stack)
        for stack in stacks.stacks:
            lead = views[stack.leader]
            known = views.get(stack.project)
            views[stack.project] = (dataclasses.replace(known, volumes=known.volumes + (ITEM,)) if known is not None
                                    else dataclasses.replace(lead, name=stack.project, volumes=(ITEM,)))
        return list(views.values())

    def _view(self, target: Target) -> TargetView:
        return TargetView(target.backup_name, items(target),
                          self._next[target.backup_name].timestamp(),
                          target.config.schedule.max_interval.total_seconds(),
                          risk_possible=may_be_at_risk(target), pings=self.ctx.pings.kinds(target.config.ping))

    def _update_copy_metrics(self) -> None:
        if self.metrics is not None:
            targets = list(self._discovery.targets)
            self.metrics.copy_state(copy_states(self.ctx, targets))

    # --- health ------------------------------------------------------------------------
    def healthy(self) -> tuple[bool, str]:
        """For /healthz: the scheduler loop turned recently and the engine answers."""
        stalled = time.monotonic() - self._loop_alive
        if self._stop.is_set():
            return False, "shutting down"
        if not self._started.is_set():
            return False, "starting: recovery and discovery are not done yet"
        if stalled > 3 * TICK_SECONDS + 5:
            return False, f"scheduler loop stalled for {stalled:.0f} s"
        if not self._engine_ok:
            return False, "the Docker engine does not answer"
        return True, "ok"

    def _check_engine(self) -> None:
        if time.monotonic() < self._next_ping:
            return
        self._next_ping = time.monotonic() + 15
        try:
            self._engine_ok = self.ctx.engine.ping()
        except SidecarError as err:
            if self._engine_ok:
                logger.error("the Docker engine does not answer", extra={"error": str(err)})
            self._engine_ok = False

    def _check_swarm_services(self) -> None:
        """On a Swarm manager, every few minutes: services whose backup labels only a manager
        can read while their tasks run on workers (nothing would back those up): one error
        each, again only when the list changes."""
        if time.monotonic() < self._next_swarm_check:
            return
        self._next_swarm_check = time.monotonic() + SWARM_CHECK_SECONDS
        try:
            found = set(self.ctx.engine.unseen_on_workers(ENABLE))
        except SidecarError as err:
            logger.debug("could not check the Swarm services", extra={"error": str(err)})
            return
        for message in sorted(found - self._unseen):
            logger.error(message, extra={"phase": "config"})
        self._unseen = found

    def _follow_events(self) -> None:
        backoff = 1.0
        dropped = False
        while not self._stop.is_set():
            try:
                self._events = self.ctx.engine.events(since=time.time())
                # Re-list after (re)connecting: whatever changed while the stream was down is seen.
                self.refresh_all()
                if dropped:  # the engine may have restarted: see _recover_after_reconnect
                    self._recover_after_reconnect()
                    dropped = False
                backoff = 1.0
                for event in self._events:
                    if self._stop.is_set():
                        break
                    action = str(event.get("Action") or event.get("status") or "").split(":")[0]
                    container_id = event.get("id") or (event.get("Actor") or {}).get("ID")
                    if action in _EVENT_ACTIONS and container_id:
                        self.refresh_one(container_id, action)
                if not self._stop.is_set():
                    raise SidecarError("the event stream ended")
            except Exception as exc:  # the engine restarted, the socket broke: reconnect
                if self._stop.is_set():
                    break
                dropped = True
                logger.warning("event stream dropped; reconnecting", extra={"error": str(exc),
                                                                            "retry_seconds": backoff})
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _recover_after_reconnect(self) -> None:
        """A backup that ran while the engine went away could not put its container back (the
        journal keeps it): put it back now rather than at the sidecar's next start, which may
        be weeks away. Recovery leaves alone what a running backup holds the lock for."""
        try:
            run_recovery(self.ctx)
        except Exception:  # never let it end the event thread
            logger.exception("recovery after the engine came back failed", extra={"phase": "recovery"})

    # --- scheduling -----------------------------------------------------------------
    def _schedule_loop(self) -> None:
        while not self._stop.is_set():
            self.ctx.store.touch_heartbeat()
            self._loop_alive = time.monotonic()
            self._check_engine()
            self._check_swarm_services()
            now = self.ctx.now()
            with self._lock:
                due = [t for t in self._discovery.targets if self._next.get(t.backup_name, now) <= now]
                for target in due:
                    self._next[target.backup_name] = target.config.schedule.next_after(now, self.ctx.settings.tz)
                    if self.metrics is not None:
                        self.metrics.scheduled(target.backup_name, self._next[target.backup_name].timestamp())
                upcoming = min(self._next.values(), default=None)
            groups_due: set[str] = set()
            for target in due:
                if target.config.group is None:
                    self._submit(target)
                elif target.config.group not in groups_due:  # every member is due: one run for all
                    groups_due.add(target.config.group)
                    self._submit_group(target.config.group)
            self._maybe_sync()
            self._maybe_maintain()
            wait = TICK_SECONDS
            if upcoming is not None:
                wait = max(0.0, min(wait, (upcoming - self.ctx.now()).total_seconds()))
            self._wake.wait(wait)
            self._wake.clear()

    def _maybe_sync(self) -> None:
        if not self.ctx.destinations or time.monotonic() < self._next_sync:
            return
        if self._sync_future is not None and not self._sync_future.done():
            return
        self._next_sync = time.monotonic() + self.ctx.settings.sync_interval
        self._sync_future = self._sync_pool.submit(self._sync_cycle)

    def _maybe_maintain(self) -> None:
        """backup.format=restic: prune and check when due, on the sync thread (one at a time)."""
        if self._sync_future is not None and not self._sync_future.done():
            return
        if time.monotonic() < self._next_maintenance:
            return
        self._next_maintenance = time.monotonic() + MAINTENANCE_LOOK_SECONDS
        try:
            if not maintenance.due(self.ctx):
                return
        except Exception:  # an unreadable state file must not stop the schedule loop
            logger.exception("restic upkeep: cannot tell what is due", extra={"phase": "check"})
            return
        self._sync_future = self._sync_pool.submit(self._maintain)

    def _maintain(self) -> None:
        try:
            maintenance.run_due(self.ctx, self._keep_for, on_check=self._notify_check)
        except Exception:  # a bug must not kill the sync thread silently
            logger.exception("restic upkeep crashed", extra={"phase": "check"})

    def _notify_check(self, outcome: maintenance.CheckOutcome) -> None:
        if self.on_outcome is not None:
            try:
                self.on_outcome(outcome)  # type: ignore[arg-type]  # the notify seam reads outcomes by attribute
            except Exception:
                logger.exception("outcome hook failed", extra={"target": outcome.target})

    def _sync_cycle(self) -> None:
        try:
            report = run_sync(self.ctx)  # a new cycle: destinations marked down are tried again
            self._update_copy_metrics()
            if report.synced:
                run_rotation(self.ctx, self._keep_for, dry_run=self.ctx.settings.prune_dry_run, local=False,
                             destinations=report.synced)
        except Exception:  # a bug must not kill the sync thread silently
            logger.exception("sync cycle crashed", extra={"phase": "upload"})

    def _keep_for(self, backup_name: str):
        return self._discovery.keep_for(backup_name, self.ctx.settings.keep)

    def _submit(self, target: Target) -> None:
        with self._lock:
            running = self._running.get(target.backup_name)
            if running is not None and not running.done():
                logger.warning("backup skipped: the previous run of this target is still running",
                               extra={"target": target.backup_name, "phase": "schedule"})
                self._record(BackupOutcome(target.backup_name, target.container.name, BackupResult.SKIPPED, phase="schedule",
                                           error="previous run still running", finished_at=self.ctx.now()), target)
                return
            self._running[target.backup_name] = self._pool.submit(self._run_one, target)

    def _submit_group(self, name: str) -> None:
        key = f"group:{name}"
        with self._lock:
            group = groups_of(self._discovery.targets).get(name)
            running = self._running.get(key)
            if group is None:
                return
            if running is not None and not running.done():
                logger.warning("group backup skipped: the previous run of this group is still running",
                               extra={"group": name, "phase": "schedule"})
                for target in group.members:
                    self._record(BackupOutcome(target.backup_name, target.container.name, BackupResult.SKIPPED,
                                               phase="schedule", error="previous run still running",
                                               finished_at=self.ctx.now()), target)
                return
            self._running[key] = self._pool.submit(self._run_group, group)

    def _run_group(self, group: Group) -> list[BackupOutcome]:
        try:
            outcomes = run_group(self.ctx, group)
        except Exception as exc:  # a bug must not kill the worker silently
            logger.exception("group backup crashed", extra={"group": group.name})
            outcomes = [BackupOutcome(t.backup_name, t.container.name, BackupResult.FAILURE, phase="internal",
                                      error=repr(exc), finished_at=self.ctx.now()) for t in group.members]
        for target, outcome in zip(group.members, outcomes):
            self._record(outcome, target)
        return outcomes

    def _run_one(self, target: Target) -> BackupOutcome:
        try:
            outcome = run_backup(self.ctx, target)
        except Exception as exc:  # a bug must not kill the worker silently
            logger.exception("backup crashed", extra={"target": target.backup_name})
            outcome = BackupOutcome(target.backup_name, target.container.name, BackupResult.FAILURE, phase="internal",
                                    error=repr(exc), finished_at=self.ctx.now())
        self._record(outcome, target)
        return outcome

    def _remove_stale_mirrors(self) -> None:
        """Mirrors of target volumes gone for longer than their retention (actions/mirrors.py)."""
        try:
            remove_stale_mirrors(self.ctx, used_volumes(self._discovery.targets), self._keep_for)
        except Exception:  # a bug must not stop backups
            logger.exception("unused staging mirrors: removal crashed", extra={"phase": "prune"})

    def _record(self, outcome: BackupOutcome, target: Target) -> None:
        self.ctx.pings.finish(target.backup_name, target.config.ping, outcome)
        if self.metrics is not None:
            self.metrics.observe(outcome)
            self._update_copy_metrics()
        if self.on_outcome is not None:
            try:
                self.on_outcome(outcome)
            except Exception:
                logger.exception("outcome hook failed", extra={"target": outcome.target})
        self._remove_stale_mirrors()

    def _shutdown(self) -> None:
        logger.info("shutting down", extra={"phase": "shutdown"})
        if self.metrics is not None:
            self.metrics.set_up(False)
        with self._lock:
            running = [f for f in self._running.values() if not f.done()]
        deadline = time.monotonic() + self.ctx.settings.shutdown_grace
        for future in running:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                future.result(timeout=remaining)
            except Exception:
                pass
        if any(not f.done() for f in running):
            logger.warning("aborting backups still running; their containers are put back",
                           extra={"phase": "shutdown"})
            self.ctx.cancel.set()
            self._wait_put_back(running)
        self._pool.shutdown(wait=not self.abandoned, cancel_futures=True)
        self._sync_pool.shutdown(wait=False, cancel_futures=True)
        self.ctx.pings.close()  # the last runs' end pings, bounded by BACKUP_PING_TIMEOUT
        logger.info("stopped", extra={"phase": "shutdown"})

    def _wait_put_back(self, running: list[Future]) -> None:
        """Aborted backups put their containers back within moments; one blocked in an
        engine call (a stop waiting out a container that ignores SIGTERM) is not waited for:
        its journal entry stays and the next start puts the container back. The caller
        must then exit without joining the worker threads (`abandoned`)."""
        wait(running, timeout=PUT_BACK_SECONDS)
        with self._lock:
            stuck = [name for name, f in self._running.items() if not f.done()]
        if stuck:
            self.abandoned = True
            logger.warning("backups still blocked in an engine call; not waiting for them: the journal keeps "
                           "their containers and the next start puts them back",
                           extra={"phase": "shutdown", "targets": stuck})
