"""The stack archive of a Compose project against the fake engine, whose workers run the
real `python -m sidecar.worker stack` / `sidecar.worker.extract` as host processes with the
mounts' folders in place of their paths: made with the project's first target, encrypted or
without its secrets, bounded in size, counted in the metrics, restored into a folder."""

from __future__ import annotations

import dataclasses
import logging
import os

import pyrage
import pytest

from sidecar import readers
from sidecar.actions.backup import BackupResult, run_backup
from sidecar.actions.daemon import Daemon
from sidecar.actions.listing import run_list_snapshots
from sidecar.actions.plan import run_plan_stacks
from sidecar.actions.stack import run_restore_stack
from sidecar.core.errors import NotFound, RestoreError
from sidecar.telemetry.metrics import STATE_FILE, Metrics, OutcomeRecord
from sidecar.core.model import Mount
from sidecar.readers.worker import WorkerReader

from .conftest import app_labels

pytestmark = pytest.mark.usefixtures("fresh_worker_reader")  # conftest: one WorkerReader per test

IMAGE = "backup-sidecar:fake"
SECRET = "pw-8d1c0e-not-in-any-log"




@pytest.fixture
def project(tmp_path):
    root = tmp_path / "srv" / "proj"
    for folder in ("conf", "secrets", "dynamic", "big"):
        (root / folder).mkdir(parents=True)
    (root / "docker-compose.yml").write_text("services: {app: {image: busybox}}\n")
    (root / ".env").write_text("TAG=1.2\n")
    (root / "secrets" / "pw.txt").write_text(SECRET + "\n")
    (root / "conf" / "app.conf").write_text("listen 80\n")
    (root / "dynamic" / "routes.yml").write_text("http: {}\n")
    (root / "big" / "blob").write_bytes(os.urandom(1_200_000))
    return root


def add_app(engine, tmp_path, root, **labels):
    compose = {"com.docker.compose.project": "proj", "com.docker.compose.service": "app",
               "com.docker.compose.project.working_dir": str(root),
               "com.docker.compose.project.config_files": "docker-compose.yml",
               "backup.stack.include": "dynamic,big", **labels}
    info = engine.add_container("proj_app_1", {**app_labels(strategy="hot"), **compose},
                                {"/data": tmp_path / "volumes" / "proj_data"})
    binds = (Mount("bind", str(root / "secrets" / "pw.txt"), "/run/secrets/pw"),
             Mount("bind", str(root / "conf"), "/conf", read_only=True))
    engine.containers[info.id].info = dataclasses.replace(info, mounts=info.mounts + binds)


@pytest.fixture
def keys(tmp_path):
    identity = pyrage.x25519.Identity.generate()
    path = tmp_path / "identity.txt"
    path.write_text(str(identity) + "\n")
    return {"BACKUP_AGE_RECIPIENTS": str(identity.to_public()), "BACKUP_AGE_IDENTITY_FILE": str(path)}


def backup(make_ctx, engine, **env):
    engine.worker_images.add(IMAGE)
    ctx = make_ctx(BACKUP_WORKER_IMAGE=IMAGE, BACKUP_STACK_MAX_MB="1", **env)
    outcome = run_backup(ctx, ctx.discover().find("app"))
    assert outcome.result is BackupResult.SUCCESS, outcome.error
    return ctx, outcome


def _unparsed(*args, **kwargs):
    raise AssertionError("the sidecar parsed the archive")


def test_encrypted_stack_is_archived_and_restored_into_a_new_folder(engine, make_ctx, tmp_path, project, keys,
                                                                    caplog, monkeypatch):
    add_app(engine, tmp_path, project)
    caplog.set_level(logging.INFO, logger="sidecar")
    ctx, outcome = backup(make_ctx, engine, **keys)
    archive = outcome.stack.archive
    assert outcome.stack.project == "proj"
    assert archive.path.parent.name == "daily" and archive.path.name.startswith("proj_stack_")
    assert archive.path.name.endswith("_daily.tar.zst.age")
    assert (archive.path.parent / (archive.path.name + ".sha256")).exists()
    assert SECRET.encode() not in archive.path.read_bytes()
    [spec] = [s for s in engine.workers_run if s.purpose == "stack"]
    assert all(m.read_only for m in spec.mounts if m.target != "/backups")
    too_big = [r for r in caplog.records if "BACKUP_STACK_MAX_MB" in r.getMessage()]
    assert len(too_big) == 1 and f"{project}/big (1200000 bytes)" in too_big[0].getMessage()

    into = tmp_path / "restored"
    into.mkdir()
    engine.workers_run.clear()
    monkeypatch.setattr("sidecar.tarball.extract._Pass.__init__", _unparsed)  # workers read it, never the sidecar
    done = run_restore_stack(ctx, "proj", str(into))
    listing, writer = [s for s in engine.workers_run if s.purpose == "extract"]
    assert "--list" in listing.command and [m.read_only for m in listing.mounts] == [True]
    assert "--list" not in writer.command
    assert done.archive == archive.path
    for rel in ("docker-compose.yml", ".env", "secrets/pw.txt", "conf/app.conf", "dynamic/routes.yml"):
        assert (into / rel).read_bytes() == (project / rel).read_bytes(), rel
    assert not (into / "big").exists()
    assert SECRET not in caplog.text

    # Counted like every archive: target {project}, volume stack.
    ctx.store.state_dir.mkdir(exist_ok=True)
    record = OutcomeRecord(ctx.store.state_dir / STATE_FILE)
    record.record(outcome)
    saved = record.read()["volumes"]["proj/stack"]
    assert saved["status"] == 1 and saved["size"] == archive.size


def test_without_encryption_the_secrets_are_left_out_with_one_warning(engine, make_ctx, tmp_path, project, caplog):
    add_app(engine, tmp_path, project)
    caplog.set_level(logging.DEBUG, logger="sidecar")
    ctx, outcome = backup(make_ctx, engine)
    assert outcome.stack.archive.path.name.endswith("_daily.tar.zst")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "secret" in r.getMessage()]
    assert len(warnings) == 1
    assert "BACKUP_AGE_RECIPIENTS" in warnings[0].getMessage()
    assert warnings[0].secrets == [str(project / "secrets" / "pw.txt")]
    assert SECRET not in caplog.text
    into = tmp_path / "restored"
    into.mkdir()
    run_restore_stack(ctx, "proj", str(into))
    assert (into / ".env").read_text() == "TAG=1.2\n"
    assert not (into / "secrets").exists()


def test_the_live_project_folder_is_refused_without_force(engine, make_ctx, tmp_path, project, keys):
    add_app(engine, tmp_path, project)
    ctx, _ = backup(make_ctx, engine, **keys)
    for into in (project, project / "conf", project.parent):
        with pytest.raises(RestoreError, match="folder of the live project 'proj'.*--force"):
            run_restore_stack(ctx, "proj", str(into))
    (project / ".env").write_text("TAG=broken\n")
    run_restore_stack(ctx, "proj", str(project), force=True)
    assert (project / ".env").read_text() == "TAG=1.2\n"
    with pytest.raises(RestoreError, match="absolute path"):
        run_restore_stack(ctx, "proj", "relative/folder")


@pytest.mark.parametrize("where", ["label", "setting"])
def test_opt_out(engine, make_ctx, tmp_path, project, where):
    add_app(engine, tmp_path, project, **({"backup.stack": "false"} if where == "label" else {}))
    _, outcome = backup(make_ctx, engine, **({"BACKUP_STACK": "false"} if where == "setting" else {}))
    assert outcome.stack is None
    assert not [s for s in engine.workers_run if s.purpose == "stack"]


def test_the_cli_backs_up_and_restores_a_stack(engine, run, tmp_path, project, keys, capsys, monkeypatch):
    add_app(engine, tmp_path, project)
    engine.worker_images.add(IMAGE)
    for name, value in {"BACKUP_WORKER_IMAGE": IMAGE, **keys}.items():
        monkeypatch.setenv(name, value)
    assert run("backup", "app") == 0
    out = capsys.readouterr().out
    assert "app: wrote the stack of project proj: " in out and "_stack_" in out
    into = tmp_path / "new-host" / "proj"
    assert run("restore-stack", "proj", "--into", str(into)) != 0  # not there yet: said, nothing written
    assert str(into) in capsys.readouterr().err and not into.exists()
    into.mkdir(parents=True)
    assert run("restore-stack", "proj", "--into", str(into)) == 0
    assert f"into {into} (" in capsys.readouterr().out
    assert (into / "secrets" / "pw.txt").read_text() == SECRET + "\n"


def test_no_stack_archive_says_where_else_to_look(make_ctx, engine, tmp_path):
    engine.worker_images.add(IMAGE)
    ctx = make_ctx(BACKUP_WORKER_IMAGE=IMAGE)
    (tmp_path / "into").mkdir()
    with pytest.raises(NotFound, match="no archive of the stack of project proj in .*--from DEST"):
        run_restore_stack(ctx, "proj", str(tmp_path / "into"))


def test_the_daemon_exports_the_stack_series_and_a_run_fills_them(engine, make_ctx, tmp_path, project, keys):
    add_app(engine, tmp_path, project)
    engine.worker_images.add(IMAGE)
    ctx = make_ctx(BACKUP_WORKER_IMAGE=IMAGE, **keys)
    metrics = Metrics()
    daemon = Daemon(ctx, metrics=metrics)
    daemon.refresh_all()

    def sample(name, **labels):
        return metrics.registry.get_sample_value(name, labels)

    assert sample("backup_sidecar_last_success_timestamp_seconds", target="proj", volume="stack") == 0
    assert sample("backup_sidecar_next_run_timestamp_seconds", target="proj") == \
        sample("backup_sidecar_next_run_timestamp_seconds", target="app")
    outcome = run_backup(ctx, ctx.discover().find("app"))
    metrics.observe(outcome)
    assert sample("backup_sidecar_archive_size_bytes", target="proj", volume="stack") == outcome.stack.archive.size
    assert sample("backup_sidecar_last_status", target="proj", volume="stack") == 1
    assert sample("backup_sidecar_runs_total", target="proj", result="success") == 1


RESTIC_PASSWORD = "restic-stack-Pw-3"


@pytest.mark.slow  # the restic variant of the stack; the archive one stays
def test_restic_format_keeps_the_stack_as_a_snapshot_and_restores_it(engine, make_ctx, tmp_path, project):
    """backup.format=restic: the stack goes into the repository (one snapshot tagged
    proj/stack, named proj_stack_...), its secrets with it (the repository is encrypted);
    restore-stack reads it back through the same checked extractor; plan lists it."""
    add_app(engine, tmp_path, project)
    ctx, outcome = backup(make_ctx, engine, BACKUP_FORMAT="restic", RESTIC_PASSWORD=RESTIC_PASSWORD)
    assert outcome.stack.project == "proj" and outcome.stack.archive is None
    snap = outcome.stack.snapshot
    assert snap.item == "stack" and snap.raw_bytes > 0
    assert not list(ctx.store.root.glob("*/proj_stack_*"))  # no archive file
    assert not list((ctx.store.state_dir / "restic-stack").glob("*"))  # the tar on its way is gone
    listed = [s for s in run_list_snapshots(ctx) if s.volume == "stack"]
    assert [(s.target, s.id) for s in listed] == [("proj", snap.snapshot_id[:8])]
    assert listed[0].name.startswith("proj_stack_") and listed[0].name.endswith("_daily")
    repository = b"".join(p.read_bytes() for p in (ctx.store.root / "restic").rglob("*") if p.is_file())
    assert SECRET.encode() not in repository and b"listen 80" not in repository  # encrypted

    [row] = run_plan_stacks(ctx)
    assert (row.project, row.target, row.format, row.latest) == ("proj", "app", "restic", listed[0].name)
    assert row.secrets.startswith("1 kept") and row.keep == ctx.settings.keep.describe() and row.schedule

    into = tmp_path / "restored"
    into.mkdir()
    done = run_restore_stack(ctx, "proj", str(into), restic=True)
    assert str(done.archive) == listed[0].name
    for rel in ("docker-compose.yml", ".env", "secrets/pw.txt", "conf/app.conf", "dynamic/routes.yml"):
        assert (into / rel).read_bytes() == (project / rel).read_bytes(), rel
    assert not list((ctx.store.state_dir / "restic-dumps").glob("*"))
    with pytest.raises(NotFound, match="no snapshot 'deadbeef'"):
        run_restore_stack(ctx, "proj", str(into), "deadbeef", force=True, restic=True)


def test_plan_lists_the_archive_formats_stack_with_its_schedule_and_secrets(engine, make_ctx, tmp_path, project,
                                                                           keys):
    add_app(engine, tmp_path, project, **{"backup.schedule": "0 3 * * *"})
    ctx, outcome = backup(make_ctx, engine, **keys)
    [row] = run_plan_stacks(ctx)
    assert (row.project, row.target, row.format, row.schedule) == ("proj", "app", "archive", "0 3 * * *")
    assert row.latest == outcome.stack.archive.path.name and row.secrets == "1 kept (age-encrypted)"
    assert row.files >= 4 and row.next_run is not None


def test_plan_says_why_a_projects_stack_is_not_kept(engine, make_ctx, tmp_path, project):
    add_app(engine, tmp_path, project, **{"backup.stack": "false"})
    [row] = run_plan_stacks(make_ctx())
    assert (row.project, row.target, row.latest) == ("proj", "-", None) and "backup.stack" in row.note
