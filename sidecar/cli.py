"""Command line: maps each subcommand to its action. The only place that reads argv and
the environment, prints for humans, and chooses the exit code."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import urllib.error
import urllib.request
import sys
from typing import TYPE_CHECKING, Sequence

from . import __version__
from .telemetry import logs
from .actions.backup import run_backup, run_group
from .actions.browse import run_list_files, run_restore_path
from .actions.context import Context
from .actions.daemon import Daemon
from .actions.images import run_restore_image
from .actions.stack import run_restore_stack, stack_is_restic
from .actions.sync import run_sync
from .actions.listing import run_list, run_list_remote, run_list_snapshots
from .actions.formats import format_of
from .actions.restore_snapshot import run_restore_snapshot
from .actions.maintenance import check_outcome, has_repository, run_check, run_prune
from .actions.mirrors import remove_stale_mirrors, used_volumes
from .actions.plan import run_plan_stacks, run_plan, unused_mirrors
from .actions.recover import run_recovery
from .actions.restore import run_restore
from .actions.restore_dump import run_restore_dump
from .actions.rotate import run_rotation
from .docker.engine import Engine
from .telemetry.metrics import STATE_FILE, FleetView, Metrics, MetricsServer, record_outcome
from . import notify
from .core.errors import ConfigError, EngineError, NotFound, SidecarError
from .core.groups import groups_of
from .core.naming import node_name_problem
from .core.presetnames import preset_of_type
from .readers.worker import fix_for
from .docker.preflight import (
    Access,
    PreflightError,
    check_backup_dir,
    check_docker_socket,
    describe_store_error,
    is_store_error,
    socket_path,
)
from .core.settings import Settings, load_settings, unknown_settings
from .store.storage import BackupStore

if TYPE_CHECKING:  # imported by notify.notifier when NOTIFY_URLS is set (apprise is slow to import)
    from .notify.sender import Notifier

logger = logging.getLogger("sidecar.cli")

HEALTHY_HEARTBEAT_SECONDS = 60.0
# `backup --offsite-required`: every backup succeeded but an off-site copy did not (EX_TEMPFAIL:
# the archives are on the backup volume and the next sync retries).
EXIT_OFFSITE_FAILED = 75


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backup-sidecar",
        description="Back up the volumes of labelled Docker containers on their own schedules.",
    )
    parser.add_argument("--version", action="version", version=f"backup-sidecar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("run", help="run the daemon: follow labelled containers and back them up on schedule",
                   description="Run the daemon (the image's default command). SIGTERM stops it cleanly.")

    p = sub.add_parser("backup", help="back up targets now", description=(
        "Back up now, through the same code path as the scheduler. NAME is a target's backup "
        "name, its container's name or ID."))
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--all", action="store_true", help="every target")
    p.add_argument("--offsite-required", action="store_true",
                   help=f"exit {EXIT_OFFSITE_FAILED} when the backups succeeded but an off-site copy failed "
                        "(default: exit 0; the summary says so either way)")

    p = sub.add_parser("list", help="archives on the backup volume", description=(
        "List archives with their date, size and checksum state."))
    p.add_argument("name", nargs="?", metavar="NAME")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--verify", action="store_true", help="recompute every checksum (reads every archive)")
    p.add_argument("--remote", nargs="?", const="", default=None, metavar="DEST",
                   help="list the off-site copies instead (on DEST, a destination's name such as s3; default: "
                        "every destination)")
    p.add_argument("--node", metavar="NODE", type=_node_option,
                   help="list the off-site copies in another node's folder (BACKUP_NODE_PREFIX; implies --remote)")
    p.add_argument("--files", nargs="?", const="latest", default=None, metavar="ARCHIVE",
                   help="list the files in an archive (mode, size, time, path) without unpacking it: ARCHIVE (path "
                        "or name under BACKUP_DIR), default: NAME's newest (of --volume)")
    p.add_argument("--volume", metavar="V", help="with --files: the volume (or dump type) whose newest archive is "
                                                 "listed, as in archive names")
    p.add_argument("--path", metavar="PATH", help="with --files: only this file or folder (relative to the volume)")
    p.add_argument("--match", metavar="GLOB", help="with --files: only paths or base names matching GLOB ('*.db')")
    p.add_argument("--from", dest="source", default=None, metavar="DEST",
                   help="with --files: read the archive from that destination (downloaded onto the backup volume)")

    p = sub.add_parser("plan", help="targets, schedules and next runs; skipped containers and why")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("restore", help="restore a volume from an archive", description=(
        "Verify the archive's checksum and members and that the volume is empty (or --force), then stop the "
        "container if it runs, replace the volume's contents with the archive's, start the container again. "
        "Exit 3: the restore failed after the volume was emptied; the container is left stopped."))
    p.add_argument("name", metavar="NAME")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--volume", metavar="V",
                      help="volume name, its short name in archive names, or its mount destination")
    what.add_argument("--dump", metavar="FILE|SNAPSHOT|latest",
                      help="a preset's dump (backup.preset), fed back through the app's own client in the running "
                           "container (psql, pg_restore); --force replaces the data the app holds. "
                           "backup.format=restic: latest, or the dump's snapshot (its id, or its name as `list` "
                           "shows it: a name restores into any container)")
    p.add_argument("--archive", default="latest", metavar="FILE|latest",
                   help="archive file (path or name under BACKUP_DIR), default: the newest")
    p.add_argument("--force", action="store_true", help="replace the contents of a non-empty volume")
    p.add_argument("--snapshot", default=None, metavar="ID|NAME|latest",
                   help="backup.format=restic: the snapshot to restore (its id, or its name as `list` shows it); "
                        "default: the newest")
    p.add_argument("--from", dest="source", default=None, metavar="DEST",
                   help="a destination's name (s3, an rclone remote's name, local): download the archive from "
                        "that destination first (a new host with an empty backup volume); default: the backup "
                        "volume (also `--from local` when no destination is named local)")
    p.add_argument("--node", metavar="NODE", type=_node_option,
                   help="take the archive from NODE's folder on the destination (BACKUP_NODE_PREFIX): restore here "
                        "what another node backed up; with --from DEST, else the first destination. restic: the "
                        "snapshot NODE took (its host), from that destination's repository")
    p.add_argument("--path", metavar="PATH",
                   help="restore only this file or folder of the archive or snapshot (relative to the volume, as "
                        "`list NAME --files` shows it); the rest of the volume is untouched; the container is "
                        "stopped (or paused) only if its backup.strategy says so")
    p.add_argument("--into", metavar="FOLDER",
                   help="write into FOLDER on the backup volume (under BACKUP_DIR; relative to it) for inspection "
                        "instead of the container's volume; with --dump, the dump's files")

    sub.add_parser("sync", help="copy archives missing off-site (S3) now, and verify them",
                   description="Upload every finished archive a destination (the S3 store) does not hold yet (the "
                               "daemon does this after each backup and every S3_SYNC_INTERVAL seconds).")

    p = sub.add_parser("prune", help="delete archives beyond what backup.keep / BACKUP_KEEP keep",
                       description="Grandfather-father-son rotation by the dates in archive names. Never "
                                   "deletes a target's newest good archive; refuses to delete all of them.")
    p.add_argument("name", nargs="?", metavar="NAME")
    p.add_argument("--dry-run", action="store_true", help="only say what would be deleted")

    p = sub.add_parser("restore-stack", help="put a Compose project's files (compose files, .env, secrets, "
                       "configs) back into a folder", description=(
        "Verify the project's stack archive, then write its files into FOLDER on the Docker host through a worker "
        "container: the layout of the project's working folder, files that lived elsewhere under _outside/. "
        "FOLDER must exist; the live project's folder is refused unless --force. Then `docker compose up -d` "
        "there, and `restore` the volumes."))
    p.add_argument("project", metavar="PROJECT", help="the Compose project's name (the {project} of its archives)")
    p.add_argument("--into", required=True, metavar="FOLDER", help="an absolute path of an existing folder on the "
                   "Docker host")
    p.add_argument("--archive", default="latest", metavar="FILE|latest",
                   help="stack archive file (path or name under BACKUP_DIR), default: the newest")
    p.add_argument("--snapshot", default=None, metavar="ID|NAME|latest",
                   help="backup.format=restic: the stack's snapshot to restore (its id, or its name as `list` shows "
                        "it); the default with BACKUP_FORMAT=restic or a restic target in the project: the newest")
    p.add_argument("--force", action="store_true", help="write into the live project's folder")
    p.add_argument("--from", dest="source", default=None, metavar="DEST",
                   help="a destination's name: download the archive from there first (a new host)")
    p.add_argument("--node", metavar="NODE", type=_node_option,
                   help="from NODE's folder on the destination (restic: the snapshot NODE took, in the "
                        "destination's repository)")
    p = sub.add_parser("check", help="backup.format=restic: verify the local repository (restic check)",
                       description="Run `restic check` on BACKUP_DIR/restic, reading back a subset of its data "
                                   "(BACKUP_RESTIC_CHECK_SUBSET); the result goes to the metrics.")
    p.add_argument("--read-data-subset", default=None, metavar="SUBSET",
                   help="e.g. 5%%, 1/7, 500M, or none (default: BACKUP_RESTIC_CHECK_SUBSET)")

    p = sub.add_parser("restore-image", help="load an exported image back into the engine (docker load)",
                       description="Verify an image export (images/...tar.zst) and load it with `docker load`.")
    p.add_argument("archive", metavar="FILE", help="path, or name under BACKUP_DIR (e.g. images/app_latest_1a2b3c4d_2026-11-26.tar.zst)")

    p = sub.add_parser("healthcheck", help="exit 0 when the daemon's loop is alive (for HEALTHCHECK)")
    p.add_argument("--max-age", type=float, default=HEALTHY_HEARTBEAT_SECONDS, metavar="SECONDS")

    sub.add_parser("version", help="print the version")
    return parser


def _node_option(value: str) -> str:
    problem = node_name_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{value[:300]!r} cannot name a node: {problem}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "version":
        print(f"backup-sidecar {__version__}")
        return 0
    try:
        settings = load_settings(os.environ)
    except ConfigError as err:
        print(f"backup-sidecar: invalid settings: {err}", file=sys.stderr)
        return err.exit_code
    logs.configure(*_log_setup(args.command, settings, os.environ))
    if args.command == "healthcheck":
        return _healthcheck(settings, args.max_age)
    for name, close in unknown_settings(os.environ).items():
        logger.warning("unknown setting ignored", extra={"setting": name, "did_you_mean": close})
    try:
        if os.environ.get("SIDECAR_SKIP_PREFLIGHT", "").strip() != "1":
            check_docker_socket(settings.docker_host)
            check_backup_dir(settings.backup_dir, ACCESS[args.command])
        ctx = Context.create(settings, _engine(settings))
        return COMMANDS[args.command](ctx, args)
    except SidecarError as err:
        print(f"backup-sidecar: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as exc:
        if not is_store_error(exc, settings.backup_dir):
            raise
        # The run had started (the checks above passed): it failed, as a failed backup does (exit 1);
        # 64 is kept for "nothing was done, fix the setting".
        print(f"backup-sidecar: {describe_store_error(settings.backup_dir, exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _engine(settings: Settings) -> Engine:
    """The engine client; an engine that does not answer is a setting to fix (exit 64)."""
    try:
        return Engine(settings.docker_host)
    except EngineError as err:
        _, setting = socket_path(settings.docker_host)
        raise PreflightError(f"{setting}: the Docker engine does not answer ({err}); expected a running engine "
                             "(`docker version` answers) at that address") from err


def _log_setup(command: str, settings: Settings, env) -> tuple[str, str]:
    """(format, level) of the logs. The daemon logs as LOG_FORMAT/LOG_LEVEL say. One-shot
    commands print for people on stdout, and a terminal (`docker compose exec`) mixes in
    stderr: unless LOG_FORMAT / LOG_LEVEL are set for them, they log warnings and errors
    only, as text."""
    if command == "run":
        return settings.log_format, settings.log_level
    fmt = settings.log_format if _is_set(env, "LOG_FORMAT") else "text"
    level = settings.log_level if _is_set(env, "LOG_LEVEL") else "WARNING"
    return fmt, level


def _is_set(env, name: str) -> bool:
    return bool(env.get(name, "").strip() or env.get(f"{name}_FILE"))


def _on_termination(handler) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: handler())


def cmd_run(ctx: Context, args) -> int:
    metrics = Metrics(state_path=ctx.store.state_dir / STATE_FILE, node=ctx.node().name,
                      fleet=FleetView(ctx.engine.swarm_nodes))
    notifier = _notifier(ctx)
    daemon = Daemon(ctx, on_outcome=notifier.outcome if notifier else None, metrics=metrics)
    _on_termination(daemon.request_stop)
    server = None
    if ctx.settings.metrics_port:
        try:
            server = MetricsServer(metrics, ctx.settings.metrics_addr, ctx.settings.metrics_port,
                                   daemon.healthy).start()
        except OSError as exc:
            raise ConfigError(f"METRICS_PORT={ctx.settings.metrics_port} on METRICS_ADDR="
                              f"{ctx.settings.metrics_addr!r} cannot be served ({exc.strerror}); expected a free "
                              "port, or 0 to turn the endpoint off") from exc
        logger.info("metrics endpoint up", extra={"address": ctx.settings.metrics_addr, "port": server.port})
    try:
        daemon.run()
    finally:
        if server is not None:
            server.stop()
        if notifier is not None:
            notifier.close()
    if daemon.abandoned:
        # A worker is blocked in an engine call (a stop waiting out its timeout): exiting
        # normally would join it. Its container is in the journal for the next start.
        logging.shutdown()
        os._exit(0)
    return 0


def _notifier(ctx: Context) -> Notifier | None:
    return notify.notifier(ctx.settings.notify, ctx.store.state_dir / "notify.json")


def cmd_backup(ctx: Context, args) -> int:
    if not args.names and not args.all:
        raise ConfigError("name the targets to back up, or use --all")
    # SIGTERM aborts the backup in progress; its containers are put back on the way out.
    _on_termination(ctx.cancel.set)
    run_recovery(ctx)
    discovery = ctx.discover()
    targets = list(discovery.targets) if args.all else []
    for name in args.names:
        target = discovery.find(name)
        if target is None:
            skipped = discovery.find_skipped(name)
            if skipped is not None:
                raise ConfigError(skipped.reason)
            raise NotFound(f"no target named {name!r}: not a labelled container's backup name, container name "
                           f"or ID (see `backup-sidecar plan`)")
        if target not in targets:
            targets.append(target)
    for skipped in discovery.skipped if args.all else ():
        print(f"skipped {skipped.container.name}: {skipped.reason}", file=sys.stderr)
    failed = 0
    notifier = _notifier(ctx)
    ran: list[tuple] = []  # (target, outcome); a group member brings its whole group
    groups = groups_of(discovery.targets)
    try:
        for target in targets:
            if ctx.cancel.is_set():  # SIGTERM: no further targets
                break
            if any(t is target for t, _ in ran):
                continue
            group = groups.get(target.config.group) if target.config.group else None
            batch = (list(zip(group.members, run_group(ctx, group))) if group is not None
                     else [(target, run_backup(ctx, target))])
            for member, outcome in batch:
                ran.append((member, outcome))
                record_outcome(ctx.store.state_dir, outcome)  # the daemon's next scrape shows it
                ctx.pings.finish(member.backup_name, member.config.ping, outcome)
                if notifier is not None:
                    notifier.outcome(outcome)
    finally:
        ctx.pings.close()
        if notifier is not None:
            notifier.close()
    offsite_failed = 0
    for target, outcome in ran:
        if outcome.ok:
            for archive in outcome.archives:
                print(f"{target.backup_name}: wrote {archive.path} ({archive.size} bytes, sha256 {archive.sha256})")
            if outcome.stack is not None and (archive := outcome.stack.archive) is not None:
                print(f"{target.backup_name}: wrote the stack of project {outcome.stack.project}: {archive.path} "
                      f"({archive.size} bytes, sha256 {archive.sha256})")
            if outcome.stack is not None and (snap := outcome.stack.snapshot) is not None:
                print(f"{target.backup_name}: snapshot {snap.snapshot_id[:8]} of the stack of project "
                      f"{outcome.stack.project} ({snap.raw_bytes} bytes read, {snap.added_bytes} new to the "
                      "repository)")
            for snap in outcome.snapshots:
                print(f"{target.backup_name}: snapshot {snap.snapshot_id[:8]} of {snap.item} ({snap.raw_bytes} bytes "
                      f"read, {snap.added_bytes} new to the repository)")
            if (image := outcome.image_archive) is not None:
                print(f"{target.backup_name}: exported image {target.container.image} to {image.path} "
                      f"({image.size} bytes, sha256 {image.sha256})")
        else:
            failed += 1
            print(f"{target.backup_name}: {outcome.result}: {outcome.error}", file=sys.stderr)
        if outcome.risk is not None:  # the backup stands (exit 0); the user must still hear it
            print(f"{target.backup_name}: warning: {outcome.risk.summary}", file=sys.stderr)
        if outcome.ok and outcome.offsite_error:
            offsite_failed += 1
            print(f"{target.backup_name}: off-site copy failed: {outcome.offsite_error} (the archives are on the "
                  "backup volume; the next sync retries)", file=sys.stderr)
    if args.all and not targets:
        print("no targets found (label containers with backup.enable=true)", file=sys.stderr)
    if failed or (args.all and discovery.skipped):
        return 1
    return EXIT_OFFSITE_FAILED if offsite_failed and args.offsite_required else 0


def cmd_list(ctx: Context, args) -> int:
    if args.remote is not None or args.node is not None:
        return _list_remote(ctx, args)
    if args.files is not None:
        return _list_files(ctx, args)
    rows = run_list(ctx, args.name, verify=args.verify)
    snapshots = run_list_snapshots(ctx, args.name)
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in rows]
                         + [{"kind": "restic-snapshot", **dataclasses.asdict(s)} for s in snapshots], indent=2))
        return 0
    if not rows and not snapshots:
        print(f"no archives in {ctx.store.root}")
        return 0
    if rows:
        _table(["DATE", "TARGET", "VOLUME", "FREQUENCY", "SIZE", "CHECKSUM", "OFFSITE", "PATH"],
               [[r.date, r.target, r.volume, r.frequency, _size(r.size), r.checksum, r.offsite, r.path] for r in rows])
    if snapshots:
        if rows:
            print()
        print(f"restic snapshots in {ctx.store.root / 'restic'}:")
        _table(["DATE", "TARGET", "VOLUME", "FREQUENCY", "ID", "HOST", "NAME"],
               [[s.date, s.target, s.volume, s.frequency, s.id, s.host, s.name] for s in snapshots])
    return 1 if any(r.checksum in ("mismatch", "unreadable") for r in rows) else 0


def _list_files(ctx: Context, args) -> int:
    found = run_list_files(ctx, args.name, args.files, args.volume, args.path, args.match, _source(ctx, args))
    if args.json:
        print(json.dumps({"archive": found.archive, "members": found.members,
                          "files": [dataclasses.asdict(r) for r in found.rows]}, indent=2))
        return 0
    if found.rows:
        _table(["MODE", "SIZE", "MTIME", "PATH"],
               [[r.mode, _size(r.size), r.mtime, r.path + (f" -> {r.link}" if r.kind == "symlink" else
                                                            f" => {r.link}" if r.link else "")] for r in found.rows])
    print(f"{found.archive}: {len(found.rows)} of {found.members} entries"
          + (" (filtered)" if args.path or args.match else ""))
    return 0


def _source(ctx: Context, args) -> str | None:
    """--from DEST: a destination's name; `local` without a destination of that name is the
    backup volume (as before destinations)."""
    names = {d.name for d in ctx.destinations}
    if args.source is None or (args.source == "local" and "local" not in names):
        return None
    return ctx.destination(args.source).name


def _list_remote(ctx: Context, args) -> int:
    destination, name = args.remote or None, args.name
    if destination is not None and name is None and destination not in {d.name for d in ctx.destinations}:
        destination, name = None, destination  # `list --remote NAME`: NAME is a target, as before destinations
    rows = run_list_remote(ctx, name, destination, args.node)
    snapshots = run_list_snapshots(ctx, name, destination, args.node, remote=True) if _uses_restic(ctx) else []
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in rows]
                         + [{"kind": "restic-snapshot", **dataclasses.asdict(s)} for s in snapshots], indent=2))
        return 0
    if snapshots:
        print(f"restic snapshots in {destination or 'the first destination'}'s repository"
              + (f" taken on node {args.node}" if args.node is not None else "") + ":")
        _table(["DATE", "TARGET", "VOLUME", "FREQUENCY", "ID", "HOST", "NAME"],
               [[s.date, s.target, s.volume, s.frequency, s.id, s.host, s.name] for s in snapshots])
        if rows:
            print()
    if not rows and not snapshots:
        where = [ctx.destination(destination, args.node)] if destination else ctx.destinations_on(args.node)
        print(f"no archives in {', '.join(d.describe() for d in where)}")
    elif rows:
        several = len({r.destination for r in rows}) > 1
        _table(["DATE", "TARGET", "VOLUME", "FREQUENCY", "SIZE", "VERIFIED", *(["DEST"] if several else []), "KEY"],
               [[r.date, r.target, r.volume, r.frequency, _size(r.size), "yes" if r.verified else "no",
                 *([r.destination] if several else []), r.key] for r in rows])
    return 0


def cmd_plan(ctx: Context, args) -> int:
    rows, skipped = run_plan(ctx)
    stacks = run_plan_stacks(ctx)
    scope = ctx.scope()
    unused = unused_mirrors(ctx, rows)
    if args.json:
        print(json.dumps({
            "scope": {"project": scope.project, "why": scope.why},
            "targets": [{**dataclasses.asdict(r), "next_run": r.next_run.isoformat()} for r in rows],
            "stacks": [{**dataclasses.asdict(s), "next_run": s.next_run.isoformat() if s.next_run else None}
                       for s in stacks],
            "skipped": [dataclasses.asdict(s) for s in skipped],
            "unused_mirrors": [{**dataclasses.asdict(m), "updated": m.updated.isoformat() if m.updated else None,
                                "remove_after": m.remove_after.isoformat() if m.remove_after else None}
                               for m in unused],
        }, indent=2))
        return 0
    print(f"scope: {scope.describe()}")
    if rows:
        _table(["TARGET", "CONTAINER", "STATE", "STRATEGY", "SCHEDULE", "NEXT RUN", "VOLUMES", "LATEST", "COPIES",
                "OFFSITE", "READER", "MIRROR"],
               [[r.target, r.container, r.state, r.strategy, r.schedule, r.next_run.isoformat(timespec="seconds"),
                 ",".join(r.volumes), r.latest or "-", r.copies, _offsite(r), r.reader,
                 _size(r.mirror_bytes) if r.mirror_bytes is not None else "-"] for r in rows])
        _readers(rows)
    else:
        print("no targets (label containers with backup.enable=true)")
    made = [s for s in stacks if not s.note]
    if made:
        print()
        _table(["STACK", "WITH", "SCHEDULE", "NEXT RUN", "FORMAT", "KEEP", "FILES", "SECRETS", "LATEST"],
               [[s.project, s.target, s.schedule, s.next_run.isoformat(timespec="seconds") if s.next_run else "-",
                 s.format, s.keep, s.files, s.secrets, s.latest or "-"] for s in made])
    for s in stacks:
        if s.note:
            print(f"STACK {s.project} not kept: {s.note}")
    for r in rows:
        for warning in r.warnings:
            print(f"WARNING {warning}")
    for s in skipped:
        print(f"SKIPPED {s.container}: {s.reason}")
    for m in unused:
        size = _size(m.mirror_bytes) if m.mirror_bytes is not None else "size unknown"
        when = m.updated.isoformat(timespec="seconds") if m.updated else "no finished pass"
        goes = (f"removed after {m.remove_after.isoformat(timespec='seconds')} (its retention)" if m.remove_after
                else "kept: its target's keep values are unknown (remove it by hand: docs/how-to/mirror.md)")
        print(f"UNUSED MIRROR {m.target}/{m.volume}: {size}, last pass {when}; no target volume here uses it; "
              f"{goes}: {m.path}")
    return 0


def _readers(rows) -> None:
    """Under plan's table: how each reader in it reads (the worker image and how it was chosen,
    or why no worker container can run, and the fix)."""
    said: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        if r.reader != "-":
            said.setdefault((r.reader, r.reader_why), []).append(r.target)
    for (reader, why), targets in said.items():
        print(f"READER {reader} ({', '.join(targets)}): {why}{fix_for(why) if reader == 'engine-api' else ''}")


def _offsite(row) -> str:
    """The OFFSITE column: one state, or each destination's when there are several."""
    if len(row.destinations) < 2:
        return row.offsite
    return "; ".join(f"{name}: {state}" for name, state in row.destinations.items())


def cmd_restore(ctx: Context, args) -> int:
    _on_termination(ctx.cancel.set)
    run_recovery(ctx)
    # `--from local` meant the backup volume before a mounted disk could be the destination "local".
    source = _source(ctx, args)
    dump = args.dump
    if dump is None and preset_of_type(args.volume) is not None:  # `--volume mysql+dump`: a preset's dump
        dump = args.archive
    restic = args.snapshot is not None or _restic_target(ctx, args.name)
    if not restic and (args.path is not None or args.into is not None):
        return _restore_path(ctx, args, source)
    if dump is not None:
        outcome = run_restore_dump(ctx, args.name, args.snapshot or dump, args.force, from_remote=source,
                                   node=args.node, restic=restic)
        print(f"restored {outcome.archive} into {outcome.container} through its {outcome.volume} preset "
              f"({outcome.tar_bytes} bytes, {outcome.seconds:.1f} s)")
        return 0
    if restic:
        if args.into is not None:
            raise ConfigError("restore --into reads archive files (backup.format=archive); for a restic snapshot, "
                              "restore --path into the volume, or `restic restore` by hand (docs/how-to/restic.md)")
        done = run_restore_snapshot(ctx, args.name, args.volume, args.snapshot or "latest", args.force, args.path,
                                    from_destination=source, node=args.node)
        what = f"{done.path} of " if done.path else ""
        print(f"restored {what}snapshot {done.snapshot[:8]} ({done.name}) into {done.container} volume {done.volume} "
              f"({done.seconds:.1f} s)")
        return 0
    outcome = run_restore(ctx, args.name, args.volume, args.archive, args.force, from_remote=source,
                          node=args.node)
    print(f"restored {outcome.archive} into {outcome.container} volume {outcome.volume} "
          f"({outcome.members} entries, {outcome.tar_bytes} bytes, {outcome.seconds:.1f} s)")
    return 0


def cmd_restore_stack(ctx: Context, args) -> int:
    source = ctx.destination(args.source).name if args.source is not None else None
    restic = args.snapshot is not None or stack_is_restic(ctx, args.project)
    outcome = run_restore_stack(ctx, args.project, args.into, args.snapshot or args.archive, args.force,
                                from_remote=source, node=args.node, restic=restic)
    print(f"restored {outcome.archive} into {outcome.into} ({outcome.members} entries, {outcome.seconds:.1f} s); "
          f"next: cd {outcome.into} && docker compose up -d (files from outside the project folder are under "
          f"{outcome.into}/_outside), then restore the volumes")
    return 0


def _restore_path(ctx: Context, args, source: str | None) -> int:
    if args.node is not None:
        raise ConfigError("--path and --into read this node's archives (or --from DEST's); --node is not supported")
    dump = args.dump is not None
    outcome = run_restore_path(ctx, args.name, args.path, None if dump else args.volume,
                               args.dump if dump else args.archive, args.into, args.force, source, dump=dump)
    what = outcome.path or "every entry"
    count = f"{outcome.written} entries, " if outcome.written >= 0 else ""
    down = f", down {outcome.downtime:.1f} s" if outcome.downtime else ""
    print(f"restored {what} from {outcome.archive} into {outcome.where} ({count}{outcome.seconds:.1f} s{down})")
    return 0
def _uses_restic(ctx: Context) -> bool:
    """Whether any snapshot may be stored: BACKUP_FORMAT=restic or a target labelled so,
    with the repository's password set."""
    if ctx.settings.restic_password is None:
        return False
    return ctx.settings.backup_format.value == "restic" or any(
        format_of(ctx, t).value == "restic" for t in ctx.discover().targets)


def _restic_target(ctx: Context, name: str) -> bool:
    """Whether `name` is a target stored by backup.format=restic (BACKUP_FORMAT for a
    container that is no target, e.g. on a new host)."""
    target = ctx.discover().find(name)
    return (format_of(ctx, target) if target is not None else ctx.settings.backup_format).value == "restic"


def cmd_sync(ctx: Context, args) -> int:
    if not ctx.destinations:
        raise ConfigError("no off-site store: set S3_BUCKET (and S3_ENDPOINT_URL, credentials) or "
                          "BACKUP_DESTINATIONS (rclone remotes, a mounted disk)")
    report = run_sync(ctx)
    several = len(report.results) > 1
    for result in report.results:
        where = f" to {result.destination}" if several else ""
        for relpath in result.uploaded:
            print(f"uploaded {relpath}{where}")
        for relpath in result.copied:
            print(f"copied {relpath} (server-side){where}")
        for relpath, error in result.failed:
            print(f"failed {relpath}{where}: {error}", file=sys.stderr)
        if result.error:
            print(f"sync{where} incomplete: {result.error} ({len(result.pending)} archives pending)", file=sys.stderr)
    if report.error:
        print(f"sync incomplete: {report.error}", file=sys.stderr)
    return 0 if report.ok else 1


def cmd_prune(ctx: Context, args) -> int:
    discovery = ctx.discover()
    backup_name = discovery.backup_name_for(args.name) if args.name else None
    dry_run = args.dry_run or ctx.settings.prune_dry_run

    def keep_for(name: str):
        return discovery.keep_for(name, ctx.settings.keep)

    rotation = run_rotation(ctx, keep_for, backup_name=backup_name, dry_run=dry_run, images=backup_name is None)
    if backup_name is None and not dry_run:
        for mirror in remove_stale_mirrors(ctx, used_volumes(discovery.targets), keep_for):
            print(f"mirrors: deleted {mirror.target}/{mirror.volume} (unused for longer than its retention)")
    restic = run_prune(ctx, keep_for, dry_run) if has_repository(ctx) and backup_name is None else None
    if restic is not None:
        verb = "would forget" if dry_run else "forgot"
        print(f"restic: {verb} {restic.forgotten} snapshots; prune {'ok' if restic.ok else 'FAILED'} in "
              f"{restic.seconds:.1f} s: {restic.detail}", file=sys.stdout if restic.ok else sys.stderr)
    result, images, remote = rotation.local, rotation.images, rotation.remote
    for t in result.targets:
        for archive in t.deleted:
            verb = "would delete" if result.dry_run else "deleted"
            print(f"{t.target}: {verb} {archive.path.relative_to(ctx.store.root)}")
        if t.error:
            print(f"{t.target}: {t.result}: {t.error}", file=sys.stderr)
    verb = "would delete" if dry_run else "deleted"
    for path in images:
        print(f"images: {verb} {path.relative_to(ctx.store.root)}")
    for part in remote:
        for relpath in part.deleted:
            print(f"{part.destination}: {verb} {relpath}")
        if part.error:
            print(f"{part.destination}: prune failed: {part.error}", file=sys.stderr)
    return 0 if rotation.ok and (restic is None or restic.ok) else 1


def cmd_check(ctx: Context, args) -> int:
    if not has_repository(ctx):
        raise ConfigError(f"no restic repository to check in {ctx.store.root / 'restic'} (or RESTIC_PASSWORD(_FILE) "
                          "is not set)")
    subset = args.read_data_subset if args.read_data_subset is not None else ctx.settings.restic_check_subset
    result = run_check(ctx, None if subset == "none" else subset)
    notifier = _notifier(ctx)
    if notifier is not None:
        notifier.outcome(check_outcome(ctx, result))
        notifier.close()
    print(f"restic check {'passed' if result.ok else 'FAILED'} ({result.seconds:.1f} s): {result.detail}",
          file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


def cmd_restore_image(ctx: Context, args) -> int:
    path, lines = run_restore_image(ctx, args.archive)
    for line in lines:
        print(line)
    print(f"loaded {path}")
    return 0


def _healthcheck(settings: Settings, max_age: float) -> int:
    if settings.metrics_port:
        host = "127.0.0.1" if settings.metrics_addr in ("0.0.0.0", "", "::") else settings.metrics_addr
        url = f"http://{host}:{settings.metrics_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                print(f"healthy: {response.read().decode().strip()}")
                return 0
        except urllib.error.HTTPError as err:
            print(f"unhealthy: {err.read().decode().strip()}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"unhealthy: {url} does not answer ({exc})", file=sys.stderr)
            return 1
    age = BackupStore(settings.backup_dir).heartbeat_age()
    if age is None or age > max_age:
        print(f"unhealthy: the daemon's last heartbeat is {'missing' if age is None else f'{age:.0f} s old'}",
              file=sys.stderr)
        return 1
    print(f"healthy: heartbeat {age:.0f} s ago")
    return 0


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# What each command does with BACKUP_DIR (preflight.check_backup_dir): reading commands work on a
# read-only backup volume too.
ACCESS = {
    "run": Access.WRITE,
    "backup": Access.WRITE,
    "restore": Access.WRITE,  # the journal, a target's lock, downloads from a destination
    "prune": Access.WRITE,
    "sync": Access.WRITE,  # the copy indexes
    "list": Access.READ,
    "plan": Access.READ,
    "restore-image": Access.READ,
    "restore-stack": Access.WRITE,  # a target's lock, downloads from a destination
    "check": Access.WRITE,  # restic's lock and cache in the repository, the metrics' state
}

COMMANDS = {
    "run": cmd_run,
    "backup": cmd_backup,
    "list": cmd_list,
    "plan": cmd_plan,
    "restore": cmd_restore,
    "restore-image": cmd_restore_image,
    "restore-stack": cmd_restore_stack,
    "prune": cmd_prune,
    "check": cmd_check,
    "sync": cmd_sync,
}
