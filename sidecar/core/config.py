"""Typed configuration values: what `settings` builds from the environment and the
adapters consume. Pure: no I/O, no third-party clients."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class S3Config:
    bucket: str
    prefix: str = ""  # keys are f"{prefix}/{relpath}", without leading or double slashes
    endpoint_url: str | None = field(default=None, repr=False)  # None: AWS; may hold user:password@
    region: str | None = None
    storage_class: str | None = None  # e.g. STANDARD_IA; None: the bucket's default
    path_style: bool = False  # http://host/bucket/key instead of http://bucket.host/key
    # Multipart threshold and part size; memory stays around part_size x max_concurrency.
    part_size: int = 64 * 1024 * 1024
    max_concurrency: int = 2
    # None: boto3's own chain (environment, profiles, instance roles). Kept out of repr().
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    attempts: int = 5  # tries per operation, with capped exponential backoff between them
    connect_timeout: float = 10
    read_timeout: float = 60
    # Flexible checksum on every upload request (see the module docstring); None for a
    # store that refuses them.
    checksum_algorithm: str | None = "SHA256"


@dataclass(frozen=True)
class RcloneConfig:
    """An rclone remote path (`nas:backups/host1`) as a destination named after the remote."""

    remote: str  # the remote's name as rclone.conf or RCLONE_CONFIG_<NAME>_TYPE defines it
    path: str = ""  # the folder on the remote, without slashes around it
    # The RCLONE_* variables the child gets (rclone.conf's path, remotes, global flags), with
    # the _FILE forms already read: they hold secrets, so kept out of repr().
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    binary: str = "rclone"
    progress_interval: float = 10.0  # seconds between progress lines of a transfer
    command_timeout: float = 600.0  # wall clock of a command that moves no archive (list, stat, delete)

    @property
    def spec(self) -> str:
        return f"{self.remote}:{self.path}"


@dataclass(frozen=True)
class LocalConfig:
    """A mounted folder (a second disk, a NAS share) as the destination "local"."""

    root: str  # absolute; must exist (a missing mount is "unreachable", never created)
    file_mode: int = 0o600  # the group may read when BACKUP_FILE_MODE says so, others never
