"""Builders shared by the unit tests: containers as the engine would report them."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Mapping

from sidecar.core.model import ContainerInfo, ContainerState, Mount

PROJECT = "proj"
CONTAINER = "proj-app-1"


def volume(name: str, destination: str) -> Mount:
    return Mount("volume", name, destination)


def bind(source: str, destination: str) -> Mount:
    return Mount("bind", source, destination)


DATA = volume(f"{PROJECT}_data", "/data")


def container(
    labels: Mapping[str, str] | None = None,
    mounts: tuple[Mount, ...] = (DATA,),
    name: str = CONTAINER,
    id: str = "a" * 64,
    backup_name: str | None = "app",
    project: str | None = PROJECT,
) -> ContainerInfo:
    """A container; `labels` are the backup.* labels (compose labels are added from
    `service` and `project` unless those are None)."""
    all_labels = {"backup.enable": "true"} if labels is None else dict(labels)
    if backup_name is not None:
        all_labels.setdefault("com.docker.compose.service", backup_name)
    if project is not None:
        all_labels.setdefault("com.docker.compose.project", project)
    return ContainerInfo(
        id=id,
        name=name,
        image="busybox:latest",
        image_id="sha256:" + "b" * 64,
        state=ContainerState.RUNNING,
        labels=all_labels,
        mounts=tuple(mounts),
    )


def daily_archive(tmp_path: Path, name: str, size: int) -> tuple[Path, str]:
    """A file of `size` random bytes as a daily archive on a backup volume, with its SHA-256."""
    path = tmp_path / "backups" / "daily" / name
    path.parent.mkdir(parents=True)
    path.write_bytes(os.urandom(size))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()
