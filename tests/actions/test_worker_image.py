"""The CLI run on the engine's host (no container of its own) without BACKUP_WORKER_IMAGE: it
finds the newest local image built from the project's Dockerfile (its label) and says so in
`plan`; with none, it reads through the engine's archive API and says that loudly, once per
run, naming the setting. `plan` shows each target's reader and why, in its table and JSON."""

from __future__ import annotations

import json

import pytest

from sidecar import readers
from sidecar.readers.worker import CHOSEN_NONE, IMAGE_LABEL, WorkerReader, fix_for

from .conftest import app_labels

pytestmark = pytest.mark.usefixtures("fresh_worker_reader")  # conftest: one WorkerReader per test

SAID = "set BACKUP_WORKER_IMAGE to this sidecar's image (or to `none` to choose this)"




def _plan(run, capsys) -> dict:
    assert run("plan", "--json") == 0
    return {row["target"]: row for row in json.loads(capsys.readouterr().out)["targets"]}


def test_the_newest_labelled_image_that_passes_the_probe_is_the_workers(run, engine, data, tmp_path, capsys):
    engine.add_image("backup-sidecar:old", labels={IMAGE_LABEL: "sidecar"})
    new = engine.add_image("backup-sidecar:new", labels={IMAGE_LABEL: "sidecar"})
    engine.add_image("someone-else:1")
    engine.worker_images.update({new.id, "backup-sidecar:old"})
    engine.add_container("app-1", app_labels(strategy="hot"), {"/data": data})
    other = tmp_path / "volumes" / "other"
    other.mkdir()
    engine.add_container("db-1", app_labels(name="db", strategy="stop"), {"/data": other})

    rows = _plan(run, capsys)
    assert (rows["app"]["reader"], rows["db"]["reader"]) == ("worker", "mirror")
    assert rows["app"]["reader_why"] == (f"image backup-sidecar:new, the newest of 2 labelled {IMAGE_LABEL}=sidecar "
                                         "(BACKUP_WORKER_IMAGE unset)")
    assert run("plan") == 0
    table = capsys.readouterr().out
    assert "READER" in table.splitlines()[1]
    assert "READER worker (app): image backup-sidecar:new" in table and "READER mirror (db): " in table

    assert run("backup", "app") == 0
    err = capsys.readouterr().err
    assert SAID not in err and "WARNING" not in err
    assert [spec.image for spec in engine.workers_run if spec.purpose == "archive"] == [new.id]


def test_with_no_worker_image_the_run_says_so_once_naming_the_setting(run, engine, data, tmp_path, capsys):
    engine.add_image("someone-else:1")
    other = tmp_path / "volumes" / "other"
    other.mkdir()
    (other / "x").write_text("x")
    engine.add_container("app-1", app_labels(strategy="hot"), {"/data": data})
    engine.add_container("db-1", app_labels(name="db", strategy="stop"), {"/data": other})

    assert run("backup", "--all") == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if SAID in line]
    assert len(warnings) == 1, err
    assert "WARNING" in warnings[0] and f"no local image carries the label {IMAGE_LABEL}=sidecar" in warnings[0]
    assert engine.names("read_path") and not engine.workers_run  # the engine's archive API read both

    rows = _plan(run, capsys)
    assert {row["reader"] for row in rows.values()} == {"engine-api"}
    assert "outside a container and BACKUP_WORKER_IMAGE is unset" in rows["db"]["reader_why"]
    assert run("plan") == 0
    [said] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("READER ")]
    assert said.startswith("READER engine-api (app, db): the sidecar runs outside a container") and said.endswith(SAID)


def test_a_labelled_image_that_fails_the_probe_is_named(run, engine, data, capsys):
    engine.add_image("backup-sidecar:broken", labels={IMAGE_LABEL: "sidecar"})  # not runnable as a worker
    engine.add_container("app-1", app_labels(strategy="hot"), {"/data": data})
    assert run("backup", "app") == 0
    [warning] = [line for line in capsys.readouterr().err.splitlines() if SAID in line]
    assert "no labelled image can serve (backup-sidecar:broken: no worker container from image" in warning


def test_backup_worker_image_none_is_a_choice_said_in_plan_not_warned(run, engine, data, capsys, monkeypatch):
    monkeypatch.setenv("BACKUP_WORKER_IMAGE", "none")
    engine.add_image("backup-sidecar:new", labels={IMAGE_LABEL: "sidecar"})
    engine.worker_images.add("backup-sidecar:new")
    engine.add_container("app-1", app_labels(strategy="hot"), {"/data": data})
    assert run("backup", "app") == 0
    assert SAID not in capsys.readouterr().err and not engine.workers_run
    row = _plan(run, capsys)["app"]
    assert (row["reader"], row["reader_why"]) == ("engine-api", "BACKUP_WORKER_IMAGE=none")
    assert run("plan") == 0
    assert "READER engine-api (app): BACKUP_WORKER_IMAGE=none\n" in capsys.readouterr().out


def test_the_fix_is_said_only_where_the_image_is_what_is_missing():
    assert fix_for("BACKUP_DIR (/backups) is on no mount of the sidecar's container") == ""
    assert fix_for("the sidecar runs outside a container and the engine on another machine (DOCKER_HOST)") == ""
    assert fix_for(CHOSEN_NONE) == ""
    assert fix_for("image app:1 lacks zstd") == "; " + SAID
