"""A retry budget per sync cycle: a destination found unreachable is marked down until the
next sync cycle, so later archives and rotations of the same cycle (the daemon's, or one
CLI `backup` run) do not pay the retry ladder again; the CLI says the copy failed (exit 75 with --offsite-required)."""

from __future__ import annotations


import pytest

from sidecar import cli
from sidecar.actions import context
from sidecar.actions.sync import run_sync
from sidecar.tarball.archive import sha256_file, write_checksum
from sidecar.core.errors import EngineError
from tests.fakes.destination import FakeDestination

from .conftest import app_labels


@pytest.fixture
def s3(monkeypatch) -> FakeDestination:
    destination = FakeDestination("s3")
    monkeypatch.setattr(context, "from_settings", lambda _settings: (destination,))
    return destination


def _two_targets(engine, tmp_path):
    for name in ("app", "web"):
        engine.add_container(f"{name}-1", {**app_labels(strategy="hot"), "backup.name": name},
                             {"/data": tmp_path / "volumes" / name})


def test_one_backup_run_pays_the_retry_ladder_once(run, engine, s3, tmp_path, capsys):
    _two_targets(engine, tmp_path)
    s3.down = True
    assert run("backup", "app", "web", "--offsite-required") == cli.EXIT_OFFSITE_FAILED
    # The first target's sync found it down; the second target's sync and both rotations skipped it.
    assert sum(s3.calls.values()) == 1
    out, err = capsys.readouterr()
    assert "app: wrote" in out and "web: wrote" in out
    for name in ("app", "web"):
        assert f"{name}: off-site copy failed: s3:" in err
    assert "the next sync retries" in err

    assert run("backup", "app") == 0  # without the flag the summary says it, the exit code does not
    assert "app: off-site copy failed" in capsys.readouterr().err

    s3.down = False
    assert run("backup", "app", "web", "--offsite-required") == 0  # a new run, a new cycle: tried again
    assert "off-site copy failed" not in capsys.readouterr().err
    assert {rel.split("/")[1].split("_")[0] for rel in s3.objects if rel.startswith("daily/")} == {"app", "web"}


def test_a_failed_backup_still_exits_1(run, engine, s3, tmp_path, capsys):
    _two_targets(engine, tmp_path)
    engine.add_container("bad-1", {"backup.enable": "true", "backup.name": "bad", "backup.strategy": "hot"},
                         {"/data": tmp_path / "volumes" / "bad"})
    s3.down = True
    engine.fail("read_path", EngineError("gone"), times=1)
    assert run("backup", "bad", "app") == 1


def test_the_daemon_tries_a_down_destination_again_on_its_next_cycle(make_ctx, s3, tmp_path):
    ctx = make_ctx()
    path = ctx.store.path("daily/app_data_2026-11-01_daily.tar.zst")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * 100)
    write_checksum(path, sha256_file(path))
    s3.down = True

    first = run_sync(ctx)
    assert not first.ok and ctx.unreachable == {"s3"} and s3.calls["list"] == 1
    # Later in the same cycle (another backup's sync, a rotation): not tried again.
    again = run_sync(ctx, new_cycle=False)
    assert not again.ok and "marked down" in again.results[0].error
    assert again.results[0].pending == ("daily/app_data_2026-11-01_daily.tar.zst",)
    assert sum(s3.calls.values()) == 1

    s3.down = False
    healed = run_sync(ctx)  # the daemon's next cycle
    assert healed.ok and ctx.unreachable == set()
    assert list(s3.objects) == ["daily/app_data_2026-11-01_daily.tar.zst"]
