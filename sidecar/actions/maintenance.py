"""The restic repository's upkeep (backup.format=restic), apart from the backups:

- `prune`: forget by the keep rules of every restic target, then `restic prune` (which
  rewrites packs: the expensive part), its cost logged; BACKUP_RESTIC_PRUNE_INTERVAL;
- `check`: `restic check --read-data-subset=BACKUP_RESTIC_CHECK_SUBSET` (a rotating share
  of the packs read back and verified), its result in `.sidecar/restic.json` for the
  metrics; BACKUP_RESTIC_CHECK_INTERVAL;
- `unlock` at start-up (recovery): the stale locks a killed run left. restic's own unlock
  removes only stale locks: on this host those whose process is gone, elsewhere those not
  refreshed for 30 minutes; a live lock (refreshed every 5 minutes) stays. restic in a worker
  container writes the worker's host name (formats/restic.py, worker_host_prefix) and a pid
  of its own namespace, which restic elsewhere must take for another host's: such a lock
  whose worker no longer runs on this engine is removed here (formats/restic.py,
  remove_dead_worker_locks).

The daemon runs what is due on its sync thread; the times of the last runs are kept in
the state file, so a restart does not run them again at once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from ..core.errors import SidecarError
from ..telemetry.metrics import RESTIC_STATE_FILE
from ..store.restic import REPO_FOLDER, Repository, repository_bytes
from ..core.retention import Keep
from ..core.snapshots import forget_args, selector
from ..store.state import JsonState
from .context import Context
from .formats import StorageFormat, format_of
from .formats.restic import local_repository, record_state, remove_dead_worker_locks, secrets_dir, unlocked
from .sources import items

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaintenanceResult:
    what: str  # "prune", "check", "unlock"
    ok: bool
    seconds: float
    detail: str = ""  # restic's last lines, or the error
    forgotten: int = 0


CHECK_TARGET = "restic-repository"  # the notifications' target of a check (its failing state is kept by that name)


@dataclass(frozen=True)
class CheckOutcome:
    """A `restic check` as the notify seam reads a backup's outcome: a failed check is a
    failure (every one: each is news), the first passing check after failures a recovery."""

    target: str
    result: str  # "success" or "failure", as BackupResult's values
    phase: str
    error: str | None
    seconds: float
    finished_at: datetime
    subject: str  # the message's title after "backup-sidecar: "


def check_outcome(ctx: Context, result: MaintenanceResult) -> CheckOutcome:
    where = ctx.store.root / REPO_FOLDER
    return CheckOutcome(CHECK_TARGET, "success" if result.ok else "failure", "check",
                        None if result.ok else result.detail, result.seconds, ctx.now(),
                        f"restic check of {where}")


def has_repository(ctx: Context) -> bool:
    return (ctx.store.root / REPO_FOLDER / "config").is_file() and ctx.settings.restic_password is not None


def _state(ctx: Context) -> JsonState:
    return JsonState(ctx.store.state_dir / RESTIC_STATE_FILE, "restic state")


def run_prune(ctx: Context, keep_for: Callable[[str], Keep], dry_run: bool = False) -> MaintenanceResult:
    """Forget by the keep rules of every restic target here, then prune (not with dry_run)."""
    started = time.monotonic()
    repo = local_repository(ctx)
    forgotten = 0
    host = ctx.node().name
    for target in ctx.discover().targets:
        if format_of(ctx, target) is not StorageFormat.RESTIC:
            continue
        args = forget_args(keep_for(target.backup_name)) + (("--dry-run",) if dry_run else ())
        tags = [selector(target.backup_name, item) for item in items(target)]
        if tags:  # none: a forget without --tag would take every snapshot of the host
            forgotten += len(unlocked(ctx, repo, lambda: repo.forget(tags, host, args)).removed)
    if dry_run:
        return MaintenanceResult("prune", True, time.monotonic() - started, "dry run: nothing pruned", forgotten)
    before = repository_bytes(repo.local_path) if repo.local_path is not None else 0
    try:
        result = unlocked(ctx, repo, repo.prune)
    except SidecarError as err:
        return _done(ctx, MaintenanceResult("prune", False, time.monotonic() - started, str(err), forgotten))
    after = repository_bytes(repo.local_path) if repo.local_path is not None else 0
    record_state(ctx, repo)
    logger.info("restic repository pruned", extra={"phase": "prune", "seconds": round(result.seconds, 3),
                                                   "snapshots_forgotten": forgotten, "bytes_before": before,
                                                   "bytes_after": after, "bytes_freed": before - after})
    return _done(ctx, MaintenanceResult("prune", True, time.monotonic() - started,
                                        f"{before - after} bytes freed ({before} -> {after})", forgotten))


def run_check(ctx: Context, subset: str | None = None) -> MaintenanceResult:
    """`restic check` (reading `subset` of the packs, e.g. `5%`); the result goes to the metrics."""
    started = time.monotonic()
    repo = local_repository(ctx)
    try:
        result = repo.check(subset)
        outcome = MaintenanceResult("check", True, result.seconds, _last_lines(result.stdout))
        logger.info("restic check passed", extra={"phase": "check", "subset": subset,
                                                  "seconds": round(result.seconds, 3)})
    except SidecarError as err:
        outcome = MaintenanceResult("check", False, time.monotonic() - started, str(err))
        logger.error("restic check failed", extra={"phase": "check", "subset": subset, "error": str(err)})
    return _done(ctx, outcome)


def run_unlock(ctx: Context) -> MaintenanceResult | None:
    """Stale locks a killed run left (None: no repository here)."""
    if not has_repository(ctx):
        return None
    started = time.monotonic()
    locks = ctx.store.root / REPO_FOLDER / "locks"
    if locks.is_dir() and not any(locks.iterdir()):  # nothing to judge: no restic start (a key derivation)
        return MaintenanceResult("unlock", True, time.monotonic() - started, "no locks")
    try:
        repo = Repository(str(ctx.store.root / REPO_FOLDER), ctx.settings.restic_password,
                          secrets_dir=secrets_dir(ctx))
        result = repo.unlock()
    except SidecarError as err:
        logger.error("restic unlock failed", extra={"phase": "recovery", "error": str(err)})
        return MaintenanceResult("unlock", False, time.monotonic() - started, str(err))
    text = (result.stdout + result.stderr).strip()
    if "removed" in text or "successfully" in text:
        logger.info("stale restic locks removed", extra={"phase": "recovery", "detail": _last_lines(text)})
    try:
        removed = remove_dead_worker_locks(ctx, repo)
    except SidecarError as err:
        logger.error("could not look for the locks of killed restic workers", extra={"phase": "recovery",
                                                                                     "error": str(err)})
        return MaintenanceResult("unlock", False, time.monotonic() - started, str(err))
    return MaintenanceResult("unlock", True, time.monotonic() - started,
                             _last_lines(text) + (f"; {len(removed)} lock(s) of killed workers removed" if removed else ""))


def due(ctx: Context, now: float | None = None) -> tuple[str, ...]:
    """Which of prune and check are due by their intervals and the last runs."""
    if not has_repository(ctx):
        return ()
    now = time.time() if now is None else now
    doc = _state(ctx).read()
    found = []
    for what, interval in (("prune", ctx.settings.restic_prune_interval),
                           ("check", ctx.settings.restic_check_interval)):
        last = doc.get(what) if isinstance(doc.get(what), dict) else {}
        if interval and now - float(last.get("finished") or 0) >= interval:
            found.append(what)
    return tuple(found)


def run_due(ctx: Context, keep_for: Callable[[str], Keep],
            on_check: Callable[[CheckOutcome], None] | None = None) -> list[MaintenanceResult]:
    """The daemon's upkeep: what `due` says, prune first. `on_check`: each check's outcome
    (the notifications)."""
    done = []
    for what in due(ctx):
        try:
            result = (run_prune(ctx, keep_for, ctx.settings.prune_dry_run) if what == "prune"
                      else run_check(ctx, ctx.settings.restic_check_subset))
        except SidecarError as err:
            logger.error(f"restic {what} failed", extra={"phase": what, "error": str(err)})
            result = MaintenanceResult(what, False, 0.0, str(err))
        done.append(result)
        if what == "check" and on_check is not None:
            on_check(check_outcome(ctx, result))
    return done


def _done(ctx: Context, result: MaintenanceResult) -> MaintenanceResult:
    with _state(ctx).update() as doc:
        doc[result.what] = {"ok": result.ok, "finished": time.time(), "seconds": round(result.seconds, 3),
                            "detail": result.detail[-500:]}
    return result


def _last_lines(text: str, n: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-n:])
