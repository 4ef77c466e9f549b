"""Which image IDs have been exported, so an unchanged image is exported once only.

Stored on the backup volume (`.sidecar/images.json`), so a restarted sidecar, or a new
one on the same backup volume, does not export the same image again."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from .fsutil import write_json_atomic

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
        write_json_atomic(self.path, {"exported": data})
