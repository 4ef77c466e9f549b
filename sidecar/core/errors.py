"""The project's one error hierarchy.

Every error the sidecar raises on purpose derives from SidecarError, so the CLI can
print one line and exit non-zero without a traceback, and the daemon can tell an
expected failure (a bad label, a failing pre-command) from a bug.
"""

from __future__ import annotations


class SidecarError(Exception):
    """Base of every error the sidecar raises deliberately."""

    exit_code = 1


class ConfigError(SidecarError):
    """A setting or label has a value the sidecar cannot use."""

    exit_code = 64  # EX_USAGE


class SettingsError(ConfigError):
    """One or more environment settings are invalid; all problems are listed."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class LabelError(ConfigError):
    """A container's backup.* labels are invalid; names the container and each label."""

    def __init__(self, container: str, problems: list[str]):
        self.container = container
        self.problems = list(problems)
        super().__init__(f"container {container!r}: " + "; ".join(self.problems))


class UnsafeName(ConfigError):
    """A name (target, volume, archive) that would become a path outside its folder."""


class EngineError(SidecarError):
    """The Docker engine refused or failed a request; keeps the engine's explanation."""


class ContainerNotFound(EngineError):
    pass


class BackupError(SidecarError):
    """A backup of one target failed in a named phase (pre, stop, read, write, post...)."""

    def __init__(self, target: str, phase: str, message: str):
        self.target = target
        self.phase = phase
        super().__init__(f"{target}: {phase} failed: {message}")


class BackupAborted(BackupError):
    """The sidecar is shutting down and a backup in progress was abandoned."""


class StoppedByOthers(BackupAborted):
    """Someone else stopped or removed a container the sidecar had interrupted: the backup
    is given up (result "aborted", not a failure) and the container left stopped."""


class BackupBusy(SidecarError):
    """A backup of this target is already running (in this or another sidecar process)."""


class ArchiveError(SidecarError):
    """An archive is missing, damaged or unsafe."""


class ChecksumMismatch(ArchiveError):
    pass


class UnsafeArchive(ArchiveError):
    """An archive member would land outside the restore target."""


class RestoreError(SidecarError):
    pass


class RestoreLeftStopped(RestoreError):
    """A restore failed after the volume's old contents were removed: the container is left
    stopped (journalled, so a restarted sidecar does not start it either) rather than run
    on an empty or partial volume. Its own exit code, for scripts and monitoring."""

    exit_code = 3

    def __init__(self, container: str, volume: str, message: str):
        self.container = container
        self.volume = volume
        super().__init__(message)


class ResticError(SidecarError):
    """restic (the program) failed: the message names the repository, the command and
    restic's own words; never the repository's password."""


class NotFound(SidecarError):
    """A target, archive or volume named on the command line does not exist."""

    exit_code = 2


class EncryptionError(SidecarError):
    """An archive cannot be encrypted or decrypted: wrong key or passphrase, or a damaged,
    truncated or tampered age stream. Never carries key material or a passphrase."""


class DestinationError(SidecarError):
    """An operation on an off-site destination (today S3) failed. The message names the
    destination, the operation, the object and where it is, with the store's explanation,
    never credentials."""

    def __init__(self, message: str, *, destination: str = "", operation: str = "", key: str = ""):
        self.destination = destination
        self.operation = operation
        self.key = key
        super().__init__(message)


class DestinationUnreachable(DestinationError):
    """The destination did not answer (connection refused, timeouts) or kept failing
    (server errors, throttling) through every attempt: the rest of a sync to it waits for
    the next cycle, while other destinations go on."""


# The former name, kept while other branches of issue 7 still use it.
RemoteError = DestinationError
