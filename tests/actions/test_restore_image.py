"""`restore-image` against FakeEngine (issue 19): the export is checked and re-serialised by an
extract worker (`--stream canonical`; a host process here), the sidecar pipes its stream to
`docker load` and parses nothing; no worker, no load (naming BACKUP_WORKER_IMAGE)."""

from __future__ import annotations

import io
import tarfile

import pytest

from sidecar.actions.backup import run_backup
from sidecar.actions.images import run_restore_image
from sidecar.core.errors import RestoreError, UnsafeArchive

from .conftest import app_labels

pytestmark = pytest.mark.usefixtures("restore_worker")


def _refused(*args, **kwargs):
    raise AssertionError("the sidecar parsed the archive")


def _image_tar(*extra: tarfile.TarInfo) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        folder = tarfile.TarInfo("abc123")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        for name, data in (("abc123/layer.tar", b"L" * 1500), ("manifest.json", b'[{"Config": "abc.json"}]')):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return buf.getvalue()


def _exported(engine, ctx, data, image: bytes):
    info = engine.add_image("app:1", data=image)
    engine.add_container("app-1", app_labels(image="always"), {"/data": data}, image="app:1", image_id=info.id)
    target = ctx.discover().find("app")
    outcome = run_backup(ctx, target)
    assert outcome.ok, outcome.error
    [export] = ctx.store.image_exports()
    return export.path


def _members(stream: bytes) -> list[tuple[str, bytes | None]]:
    with tarfile.open(fileobj=io.BytesIO(stream)) as tar:
        return [(m.name, tar.extractfile(m).read() if m.isreg() else None) for m in tar]


def test_an_export_is_loaded_with_the_sidecars_parser_refused(engine, ctx, data, monkeypatch):
    path = _exported(engine, ctx, data, _image_tar())
    for name in ("_Pass.__init__", "verify", "canonical_tar"):
        monkeypatch.setattr(f"sidecar.tarball.extract.{name}", _refused)
    loaded_from, lines = run_restore_image(ctx, str(path))
    assert loaded_from == path and lines == ["Loaded image: fake"]
    [stream] = engine.loaded
    assert _members(stream) == _members(_image_tar())
    [worker] = [s for s in engine.workers_run if "--stream" in s.command]
    assert worker.command[worker.command.index("--stream") + 1] == "canonical"
    assert [(m.target, m.read_only) for m in worker.mounts] == [("/backups", True)]
    assert engine.running_workers() == []


def test_an_export_with_a_hard_link_is_refused_before_the_engine_gets_a_byte(engine, ctx, data):
    link = tarfile.TarInfo("abc123/again.tar")
    link.type, link.linkname = tarfile.LNKTYPE, "abc123/layer.tar"
    path = _exported(engine, ctx, data, _image_tar(link))
    with pytest.raises(UnsafeArchive, match="hardlink"):
        run_restore_image(ctx, str(path))
    assert engine.loaded == [] and engine.running_workers() == []


def test_restore_image_without_a_worker_is_refused_naming_the_setting(engine, make_ctx, ctx, data):
    path = _exported(engine, ctx, data, _image_tar())
    with pytest.raises(RestoreError, match="BACKUP_WORKER_IMAGE"):
        run_restore_image(make_ctx(BACKUP_WORKER_IMAGE="none"), str(path))
    assert engine.loaded == []
