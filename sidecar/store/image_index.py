"""Which image IDs have been exported, so an unchanged image is exported once only.

Stored on the backup volume (`.sidecar/images.json`, through JsonState), so a restarted
sidecar, a new one on the same backup volume, or a CLI run beside the daemon does not
export the same image again."""

from __future__ import annotations

import logging
from pathlib import Path

from .state import JsonState

logger = logging.getLogger(__name__)


class ImageIndex:
    def __init__(self, path: Path):
        self.path = path
        self._state = JsonState(path, "image index")

    def get(self, image_id: str) -> str | None:
        """The relpath of this image's export, if it was exported and is still there."""
        relpath = _exported(self._state.read()).get(image_id)
        if relpath and (self.path.parent.parent / relpath).is_file():
            return relpath
        return None

    def record(self, image_id: str, relpath: str) -> None:
        with self._state.update() as doc:
            doc["exported"] = {**_exported(doc), image_id: relpath}


def _exported(doc: dict) -> dict[str, str]:
    exported = doc.get("exported")
    if not isinstance(exported, dict):
        return {}
    return {str(k): str(v) for k, v in exported.items()}
