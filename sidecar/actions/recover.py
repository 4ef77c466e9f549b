"""Start-up housekeeping: put back containers a killed sidecar left stopped or paused,
and remove half-written archives."""

from __future__ import annotations

import logging

from ..errors import SidecarError
from .context import Context
from .interrupt import put_back

logger = logging.getLogger(__name__)


def run_recovery(ctx: Context) -> list[str]:
    """Returns the names of the containers put back."""
    ctx.store.prepare()
    ctx.store.clean_partials()
    restored = []
    for entry in ctx.journal.entries():
        fields = {"target": entry.target, "container": entry.container_name, "phase": "recovery"}
        try:
            if put_back(ctx, entry.container_id, entry.action, entry.target):
                restored.append(entry.container_name)
                logger.warning(f"put back a container that an interrupted backup left {entry.action}",
                               extra=fields)
            else:
                logger.info("journal entry needed no action: the container already runs", extra=fields)
        except SidecarError as err:
            logger.error("could not put back an interrupted container", extra={**fields, "error": str(err)})
    return restored
