"""Start-up housekeeping: put back containers a killed sidecar left stopped or paused,
and remove half-written archives."""

from __future__ import annotations

import logging

from ..errors import BackupBusy, SidecarError
from .context import Context
from .interrupt import put_back

logger = logging.getLogger(__name__)


def run_recovery(ctx: Context) -> list[str]:
    """Returns the names of the containers put back.

    Safe to run while another sidecar process (the daemon, when this is a one-shot
    command run beside it) is mid-backup: what a live process holds the target's lock
    for is left alone."""
    ctx.store.prepare()
    ctx.store.clean_partials()
    restored = []
    for entry in ctx.journal.entries():
        fields = {"target": entry.target, "container": entry.container_name, "phase": "recovery"}
        try:
            with ctx.store.target_lock(entry.target):
                acted = put_back(ctx, entry.container_id, entry.action, entry.target)
        except BackupBusy:
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
