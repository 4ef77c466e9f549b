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
