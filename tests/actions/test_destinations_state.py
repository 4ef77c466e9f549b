"""The 3-2-1 state per destination (issue 12): `plan` says which destination holds the
latest backup, which is behind and which has none, while one of two destinations is down
and after it caught up."""

from __future__ import annotations

import os

from sidecar.actions import plan
from sidecar.actions.context import Context
from sidecar.actions.status import copy_states
from sidecar.actions.sync import run_sync
from sidecar.tarball.archive import sha256_file, write_checksum
from sidecar.core.settings import load_settings
from sidecar.store.storage import BackupStore, Journal
from tests.fakes.destination import FakeDestination
from tests.unit.helpers import container


def make_ctx(tmp_path, *destinations: FakeDestination) -> Context:
    settings = load_settings({"BACKUP_DIR": str(tmp_path / "backups")})
    store = BackupStore(settings.backup_dir, settings.file_mode)
    store.prepare()
    return Context(settings, None, store, Journal(store.state_dir / "journal.json"), destinations=destinations)


def archive(ctx: Context, day: int) -> None:
    path = ctx.store.path(f"daily/app_data_2026-11-{day:02d}_daily.tar.zst")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(64))
    write_checksum(path, sha256_file(path))


def states(ctx: Context):
    target = ctx.discover([container()]).targets[0]
    return [copy_states(ctx, [target])[(target.backup_name, "data")]]


def test_plan_shows_each_destination_holding_behind_or_missing(tmp_path):
    nas, dav = FakeDestination("nas"), FakeDestination("dav")
    ctx = make_ctx(tmp_path, nas, dav)
    archive(ctx, 1)
    dav.down = True
    run_sync(ctx)
    row = plan._three_two_one(ctx, states(ctx))
    assert row["copies"] == 2 and row["destinations"]["dav"] == "missing"
    assert row["destinations"]["nas"].startswith("verified, ")
    assert list(row["destinations"]) == ["nas", "dav"]  # configured order

    dav.down = False
    run_sync(ctx)
    nas.down = True
    archive(ctx, 2)
    run_sync(ctx)
    [state] = states(ctx)
    assert state.holders == frozenset({"dav"}) and state.copies == 2
    row = plan._three_two_one(ctx, [state])
    assert row["destinations"]["dav"].startswith("verified, ")
    assert row["destinations"]["nas"].startswith("behind, verified ")

    nas.down = False
    run_sync(ctx)
    row = plan._three_two_one(ctx, states(ctx))
    assert row["copies"] == 3 and all(s.startswith("verified, ") for s in row["destinations"].values())
