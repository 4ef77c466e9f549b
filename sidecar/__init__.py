"""backup-sidecar: label-driven backups of Docker Compose volumes."""

__version__ = "0.1.0"
