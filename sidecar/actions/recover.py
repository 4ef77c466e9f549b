"""Start-up housekeeping: put back containers a killed sidecar left stopped or paused,
report (and never start) containers a failed restore left stopped, remove the worker
containers it left, and remove half-written archives."""

from __future__ import annotations

import logging

from ..core.errors import BackupBusy, ContainerNotFound, SidecarError
from ..core.model import ContainerState
from ..readers.worker import STORE_LABEL, TARGET_LABEL, remove_stale_keys, store_mount
from ..store.storage import JournalEntry
from .context import Context
from .formats.restic import remove_dead_worker_tmp
from .maintenance import run_unlock
from .interrupt import InterruptionKind, put_back, put_back_service

logger = logging.getLogger(__name__)


def run_recovery(ctx: Context) -> list[str]:
    """Returns the names of the containers put back.

    Safe to run while another sidecar process (the daemon, when this is a one-shot
    command run beside it) is mid-backup: what a live process holds the target's lock
    for is left alone."""
    ctx.store.prepare()
    remove_leftover_workers(ctx)
    ctx.store.clean_partials()
    run_unlock(ctx)  # backup.format=restic: the stale locks of a killed run
    try:
        remove_dead_worker_tmp(ctx)  # and its workers' temporary pack files
    except (SidecarError, OSError) as err:
        logger.error("could not look for killed restic workers' temporary files", extra={
            "phase": "recovery", "error": str(err)})
    restored = []
    for entry in ctx.journal.entries():
        fields = {"target": entry.target, "container": entry.container_name, "phase": "recovery"}
        if entry.action == InterruptionKind.LEFT_STOPPED.value:
            _report_left_stopped(ctx, entry, fields)
            continue
        try:
            with ctx.store.target_lock(entry.target):
                acted = put_back_entry(ctx, entry)
        except BackupBusy:  # that backup puts it back first (put_back_earlier)
            logger.info("journal entry belongs to a backup in progress; left alone", extra=fields)
            continue
        except SidecarError as err:
            logger.error("could not put back an interrupted container", extra={**fields, "error": str(err)})
            continue
        if acted:
            restored.append(entry.container_name)
            logger.warning(f"put back a container that an interrupted backup left {entry.action}", extra=fields)
        else:
            logger.info("journal entry needed no action: the container already runs", extra=fields)
    return restored


def put_back_entry(ctx: Context, entry: JournalEntry) -> bool:
    """Put back what one journal entry says an interrupted run stopped, paused or scaled to 0
    (the caller holds the entry's target lock); someone else's stop or scale since then wins.
    True when something had to be done."""
    if entry.action == InterruptionKind.SCALED.value:
        return put_back_service(ctx, entry.container_id, entry.replicas or 0, entry.version, entry.target)
    return put_back(ctx, entry.container_id, entry.action, entry.target, since=entry.since)


def put_back_earlier(ctx: Context, target: str) -> None:
    """Before a backup of `target`, under its lock: put back, as recovery would, what an
    earlier run of it could not (the engine went away mid-backup). The recovery that runs
    when the engine comes back leaves a target alone while a backup of it holds the lock;
    without this, that backup and every later one would find the container stopped, read it
    as the user's stop and never start it. Engine errors propagate: better a failed run than
    one that reads a container in a state nobody chose."""
    for entry in ctx.journal.entries():
        if entry.target != target or entry.action == InterruptionKind.LEFT_STOPPED.value:
            continue
        if put_back_entry(ctx, entry):
            logger.warning(f"put back a container an earlier interrupted backup left {entry.action}",
                           extra={"target": target, "container": entry.container_name, "phase": "start"})


def _report_left_stopped(ctx: Context, entry: JournalEntry, fields: dict) -> None:
    """Never starts it. Forgets the entry once someone started the container (or removed it):
    then a person decided. A replicated Swarm service (the entry knows its replica count) is
    left at 0 replicas until someone scales it."""
    if entry.replicas is not None:
        _report_left_at_zero(ctx, entry, fields)
        return
    try:
        state = ctx.engine.state(entry.container_id)
    except ContainerNotFound:
        ctx.journal.remove(entry.container_id)
        return
    except SidecarError as err:
        logger.error("could not check a container a failed restore left stopped", extra={**fields, "error": str(err)})
        return
    if state in (ContainerState.RUNNING, ContainerState.RESTARTING, ContainerState.PAUSED):
        ctx.journal.remove(entry.container_id)
        logger.info("a container a failed restore had left stopped was started by someone; forgotten", extra=fields)
        return
    logger.error("container left stopped by a failed restore: its volume is empty or partial; not starting it. "
                 "Restore again (it starts the container when done), or start it yourself", extra=fields)


def _report_left_at_zero(ctx: Context, entry: JournalEntry, fields: dict) -> None:
    try:
        service = ctx.engine.service(entry.container_id)
    except ContainerNotFound:
        ctx.journal.remove(entry.container_id)
        return
    except SidecarError as err:
        logger.error("could not check a service a failed restore left at 0 replicas", extra={**fields, "error": str(err)})
        return
    if service.replicas != 0:
        ctx.journal.remove(entry.container_id)
        logger.info("a service a failed restore had left at 0 replicas was scaled by someone; forgotten", extra=fields)
        return
    logger.error("service left at 0 replicas by a failed restore: its volume is empty or partial; not scaling it "
                 f"back. Restore again (it scales the service back to {entry.replicas} when done), or scale it "
                 "yourself", extra=fields)


def remove_leftover_workers(ctx: Context) -> list[str]:
    """Remove worker containers of this backup volume that no live process owns: a running
    one whose target is locked belongs to a backup in progress (another process) and stays."""
    removed: list[str] = []
    for path in remove_stale_keys(ctx.settings.backup_dir):
        logger.warning("removed an encryption key file no worker read", extra={"path": str(path), "phase": "recovery"})
    try:
        store = store_mount(ctx.settings.backup_dir, ctx.engine.own_container())
        if store is None:
            return removed
        for worker in ctx.engine.list_workers({STORE_LABEL: store.key}):
            target = worker.labels.get(TARGET_LABEL)
            # A live process's worker: its target is locked (it may have just exited, about
            # to be removed by its owner); a probe (no target) is short and removes itself.
            if (target and ctx.store.is_locked(target)) or (not target and worker.state is ContainerState.RUNNING):
                continue
            ctx.engine.remove_worker(worker.name)
            removed.append(worker.name)
            logger.warning("removed a worker container an interrupted sidecar left",
                           extra={"target": target, "worker": worker.name, "phase": "recovery"})
    except SidecarError as err:
        logger.error("could not look for leftover worker containers", extra={"error": str(err), "phase": "recovery"})
    return removed
