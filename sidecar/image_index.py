"""Which image IDs have been exported, so an unchanged image is exported once only.

Stored on the backup volume (`.sidecar/images.json`), so a restarted sidecar, or a new
one on the same backup volume, does not export the same image again."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

logger = logging.getLogger(__name__)


class ImageIndex:
    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()

    def get(self, image_id: str) -> str | None:
        """The relpath of this image's export, if it was exported and is still there."""
        with self._lock:
            relpath = self._read().get(image_id)
        if relpath and (self.path.parent.parent / relpath).is_file():
            return relpath
        return None

    def record(self, image_id: str, relpath: str) -> None:
        with self._lock:
            data = self._read()
            data[image_id] = relpath
            self._write(data)

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
            return {str(k): str(v) for k, v in data.get("exported", {}).items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError) as exc:
            logger.error("image index unreadable; images will be exported again",
                         extra={"path": str(self.path), "error": str(exc)})
            return {}

    def _write(self, data: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"exported": data}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
