"""run_rotation: local archives, image exports, then the destinations; local rotation
never waits on, nor is skipped by, an off-site failure."""

from __future__ import annotations

from datetime import date

import pytest

from sidecar.actions import rotate
from sidecar.actions.backup import run_backup
from sidecar.actions.rotate import run_rotation
from sidecar.actions.sync import RemotePrune
from sidecar.core.errors import DestinationUnreachable
from sidecar.core.retention import parse_keep

from tests.fakes.destination import FakeDestination
from tests.unit.test_prune import days, write

KEEP = parse_keep("daily=2,weekly=0,monthly=0")


class _DownDestination(FakeDestination):
    """A destination that cannot be reached; records when it was asked."""

    def __init__(self, ctx):
        super().__init__("s3")
        self.ctx = ctx
        self.local_left_when_listed: int | None = None

    def list(self, under: str = ""):
        self.local_left_when_listed = len(self.ctx.store.archives())
        raise DestinationUnreachable("the store cannot be reached", destination=self.name, operation="list")


@pytest.fixture
def remote_calls(monkeypatch) -> list[dict]:
    """Replaces the destinations' prune with a recorder that reports success."""
    calls: list[dict] = []

    def record(ctx_, keep_for, backup_name=None, dry_run=False, images_keep=None, destinations=None):
        calls.append({"backup_name": backup_name, "dry_run": dry_run, "images_keep": images_keep,
                      "local_left": len(ctx_.store.archives())})
        return (RemotePrune("s3", dry_run=dry_run),)

    monkeypatch.setattr(rotate, "run_remote_prune", record)
    return calls


def _five_days(ctx):
    for day in days(date(2026, 1, 1), 5):
        write(ctx, "app", "data", day)


def test_local_rotation_runs_before_and_despite_a_failing_destination(ctx):
    _five_days(ctx)
    down = _DownDestination(ctx)
    ctx.destinations = (down,)
    result = run_rotation(ctx, lambda _s: KEEP)
    assert len(ctx.store.archives()) == 2
    assert down.local_left_when_listed == 2  # the destination was asked after local rotation
    assert result.local.ok and len(result.local.deleted) == 3
    assert "cannot be reached" in result.remote[0].error and not result.ok


def test_local_rotation_runs_when_the_destination_prune_raises(ctx, monkeypatch):
    _five_days(ctx)
    order = []

    def failing_remote_prune(ctx_, keep_for, backup_name=None, dry_run=False, images_keep=None, destinations=None):
        order.append(("remote", len(ctx_.store.archives()), images_keep))
        return (RemotePrune("s3", error="store down"),)

    monkeypatch.setattr(rotate, "run_remote_prune", failing_remote_prune)
    result = run_rotation(ctx, lambda _s: KEEP, backup_name="app")
    assert order == [("remote", 2, ctx.settings.images_keep)]
    assert not result.ok and result.remote[0].error == "store down"


def test_dry_run_deletes_nothing_anywhere(ctx, remote_calls):
    _five_days(ctx)
    result = run_rotation(ctx, lambda _s: KEEP, dry_run=True)
    assert len(ctx.store.archives()) == 5 and len(result.local.deleted) == 3
    assert [c["dry_run"] for c in remote_calls] == [True] and result.ok


def test_destinations_only_leaves_local_archives_and_images(ctx, remote_calls):
    _five_days(ctx)
    result = run_rotation(ctx, lambda _s: KEEP, local=False)
    assert len(ctx.store.archives()) == 5 and result.local is None and result.ok
    assert [c["images_keep"] for c in remote_calls] == [ctx.settings.images_keep]


def test_without_images_the_destination_keeps_its_image_exports(ctx, remote_calls):
    run_rotation(ctx, lambda _s: KEEP, backup_name="app", images=False)
    assert [(c["backup_name"], c["images_keep"]) for c in remote_calls] == [("app", None)]


@pytest.mark.parametrize("one, other", [("team/app:1.0", "team-app:1.0"), ("registry:5000/app", "registry-5000/app"),
                                        ("app:1_0", "app:1-0")])
def test_lookalike_images_keep_their_own_exports_locally_and_off_site(engine, make_ctx, tmp_path, one, other):
    """Two images whose references clean up to the same file name part, BACKUP_KEEP_IMAGES=1:
    each backup's rotation must leave the other image's export alone, here and on the store."""
    ctx = make_ctx(BACKUP_KEEP_IMAGES="1")
    store = FakeDestination("s3")
    ctx.destinations = (store,)
    for n, reference in enumerate((one, other)):
        engine.add_image(reference)  # no digest: built here, exported
        engine.add_container(f"app{n}-1", {"backup.enable": "true", "backup.name": f"app{n}"},
                             {"/data": tmp_path / f"v{n}" / "data"}, image=reference,
                             image_id=engine.images[reference][0].id)
    for name in ("app0", "app1"):
        assert run_backup(ctx, ctx.discover().find(name)).ok
    exports = ctx.store.image_exports()
    assert ctx.settings.images_keep == 1 and len(exports) == 2
    assert sorted(o for o in store.objects if o.startswith("images/")) == sorted(e.name.relpath for e in exports)
