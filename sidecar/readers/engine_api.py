"""The engine-API reader: the volume's tar stream from the engine's archive endpoint
(`Engine.read_path`), compressed, encrypted and hashed in this process by ArchiveWriter."""

from __future__ import annotations

import tarfile

import zstandard

from ..tarball.archive import ArchiveResult, ArchiveWriter
from ..docker.engine import Engine
from ..core.errors import ArchiveError
from .base import ArchiveRequest, Progress

NAME = "engine-api"


class EngineApiArchive:
    def __init__(self, engine: Engine, request: ArchiveRequest):
        self.engine = engine
        self.request = request
        self._writer = ArchiveWriter(request.final_path, request.compression, request.file_mode, request.encryption)

    def __enter__(self) -> "EngineApiArchive":
        self._writer.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self._writer.__exit__(*exc_info)

    def prepare(self, progress: Progress | None = None) -> None:
        """Nothing to do before the container is quiesced."""

    def read(self, progress: Progress | None = None) -> int:
        stream = self.engine.read_path(self.request.container_id, self.request.mount.destination)
        try:
            return self._writer.write_stream(stream, self.request.exclude, progress)
        except (tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
            # The engine's stream ended mid-member or held no tar: a broken read, not a bug.
            raise ArchiveError(f"the engine's tar stream of {self.request.mount.destination} broke ({exc!r})") from exc

    def finish(self) -> ArchiveResult:
        return self._writer.finish()

    def abort(self) -> None:
        self._writer.abort()


class EngineApiReader:
    name = NAME

    def usable(self, engine: Engine, request: ArchiveRequest) -> bool:
        return True  # the fallback: works for every container the engine can read

    def open(self, engine: Engine, request: ArchiveRequest) -> EngineApiArchive:
        return EngineApiArchive(engine, request)
