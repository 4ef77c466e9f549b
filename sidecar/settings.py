"""Environment settings, validated all at once at start-up.

`load_settings` takes the environment as a mapping so tests never touch os.environ;
only the CLI passes the real one. Secrets may come from NAME_FILE (Docker secrets).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .archive import DecryptionKeys
from .crypto import EncryptionConfig, load_identities, parse_recipients
from .errors import SettingsError
from .retention import DEFAULT_KEEP, Keep, parse_keep
from .schedule import Schedule, parse_schedule

LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class Settings:
    backup_dir: Path
    default_schedule: Schedule
    tz: ZoneInfo
    concurrency: int
    file_mode: int
    log_format: str
    log_level: str
    docker_host: str | None
    helper_image: str | None
    project: str | None  # only containers of this compose project, when set
    shutdown_grace: float
    progress_interval: float
    keep: Keep = DEFAULT_KEEP
    prune_dry_run: bool = False
    encryption: EncryptionConfig | None = None  # age recipients or passphrase: archives are encrypted
    encrypt_local: bool = True  # False: local archives plain, only the off-site copy encrypted
    decryption: DecryptionKeys | None = None  # identities / passphrase for restore

    @property
    def state_dir(self) -> Path:
        return self.backup_dir / ".sidecar"


def read_value(env: Mapping[str, str], name: str, problems: list[str]) -> str | None:
    """NAME, or the contents of the file NAME_FILE names (trailing newline dropped)."""
    file_name = env.get(f"{name}_FILE")
    if file_name:
        if name in env:
            problems.append(f"{name} and {name}_FILE are both set: set only one")
            return None
        try:
            return Path(file_name).read_text().rstrip("\r\n")
        except OSError as exc:
            problems.append(f"{name}_FILE={file_name!r} cannot be read ({exc.strerror}): expected a readable file")
            return None
    return env.get(name)


def load_settings(env: Mapping[str, str]) -> Settings:
    problems: list[str] = []

    def get(name: str, default: str) -> str:
        value = read_value(env, name, problems)
        return default if value is None or value.strip() == "" else value.strip()

    raw_dir = get("BACKUP_DIR", "/backups")
    backup_dir = Path(raw_dir)
    if not backup_dir.is_absolute():
        problems.append(f"BACKUP_DIR={raw_dir!r} is invalid: expected an absolute path")

    raw_schedule = get("BACKUP_DEFAULT_SCHEDULE", "@daily")
    default_schedule = parse_schedule("@daily")
    try:
        default_schedule = parse_schedule(raw_schedule)
    except ValueError as exc:
        problems.append(f"BACKUP_DEFAULT_SCHEDULE={raw_schedule!r} is invalid: {exc}")

    raw_tz = get("TZ", "UTC")
    tz = ZoneInfo("UTC")
    try:
        tz = ZoneInfo(raw_tz.lstrip(":"))
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: TZ names a folder of the zone database
        problems.append(f"TZ={raw_tz!r} is invalid: expected an IANA time zone such as UTC or Europe/Berlin")

    concurrency = _int(get("BACKUP_CONCURRENCY", "1"), "BACKUP_CONCURRENCY", 1, 64, problems)
    file_mode = 0o600
    raw_mode = get("BACKUP_FILE_MODE", "0600")
    try:
        file_mode = int(raw_mode, 8)
        if not 0 <= file_mode <= 0o777:
            raise ValueError
    except ValueError:
        problems.append(f"BACKUP_FILE_MODE={raw_mode!r} is invalid: expected an octal mode such as 0600 or 0640")

    raw_format = get("LOG_FORMAT", "json")
    log_format = raw_format.lower()
    if log_format not in LOG_FORMATS:
        problems.append(f"LOG_FORMAT={raw_format!r} is invalid: accepted: {', '.join(LOG_FORMATS)}")
    raw_level = get("LOG_LEVEL", "INFO")
    log_level = raw_level.upper()
    if log_level not in LOG_LEVELS:
        problems.append(f"LOG_LEVEL={raw_level!r} is invalid: accepted: {', '.join(LOG_LEVELS)}")

    shutdown_grace = _float(get("BACKUP_SHUTDOWN_GRACE", "5"), "BACKUP_SHUTDOWN_GRACE", 0, 3600, problems)
    progress_interval = _float(get("BACKUP_PROGRESS_INTERVAL", "10"), "BACKUP_PROGRESS_INTERVAL", 0.1, 600, problems)

    raw_keep = get("BACKUP_KEEP", str(DEFAULT_KEEP))
    keep = DEFAULT_KEEP
    try:
        keep = parse_keep(raw_keep)
    except ValueError as exc:
        problems.append(f"BACKUP_KEEP={raw_keep!r} is invalid: {exc}")
    prune_dry_run = _bool(get("BACKUP_PRUNE_DRY_RUN", "false"), "BACKUP_PRUNE_DRY_RUN", problems)

    encryption, encrypt_local, decryption = _encryption(env, get, problems)

    if problems:
        raise SettingsError(problems)
    return Settings(
        backup_dir=backup_dir,
        default_schedule=default_schedule,
        tz=tz,
        concurrency=concurrency,
        file_mode=file_mode,
        log_format=log_format,
        log_level=log_level,
        docker_host=env.get("DOCKER_HOST") or None,
        helper_image=env.get("BACKUP_HELPER_IMAGE") or None,
        project=(env.get("BACKUP_PROJECT") or "").strip() or None,
        keep=keep,
        prune_dry_run=prune_dry_run,
        encryption=encryption,
        encrypt_local=encrypt_local,
        decryption=decryption,
        shutdown_grace=shutdown_grace,
        progress_interval=progress_interval,
    )


def _encryption(env: Mapping[str, str], get, problems: list[str]):
    """Age settings. The passphrase is never quoted in a message."""
    recipients_text = read_value(env, "BACKUP_AGE_RECIPIENTS", problems)
    passphrase = read_value(env, "BACKUP_AGE_PASSPHRASE", problems)
    if passphrase == "":
        problems.append("BACKUP_AGE_PASSPHRASE is empty: expected a passphrase (or unset it)")
        passphrase = None
    recipients: tuple[str, ...] = ()
    if recipients_text and recipients_text.strip():
        try:
            recipients = parse_recipients(recipients_text)
        except ValueError as exc:
            problems.append(f"BACKUP_AGE_RECIPIENTS is invalid: {exc}")
    encryption = None
    if recipients and passphrase is not None:
        problems.append("BACKUP_AGE_RECIPIENTS and BACKUP_AGE_PASSPHRASE are both set: set only one")
    elif recipients or passphrase is not None:
        try:
            encryption = EncryptionConfig(recipients=recipients, passphrase=passphrase)
        except ValueError as exc:
            problems.append(f"encryption settings are invalid: {exc}")
    identities: tuple = ()
    identity_file = env.get("BACKUP_AGE_IDENTITY_FILE")
    if identity_file:
        try:
            identities = tuple(load_identities(Path(identity_file)))
        except (ValueError, OSError) as exc:
            problems.append(f"BACKUP_AGE_IDENTITY_FILE={identity_file!r} is invalid: {exc}")
    decryption = DecryptionKeys(identities, passphrase) if identities or passphrase is not None else None
    encrypt_local = _bool(get("BACKUP_ENCRYPT_LOCAL", "true"), "BACKUP_ENCRYPT_LOCAL", problems)
    return encryption, encrypt_local, decryption


def _bool(raw: str, name: str, problems: list[str]) -> bool:
    value = raw.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    problems.append(f"{name}={raw!r} is invalid: accepted: true/1/yes or false/0/no")
    return False


def _int(raw: str, name: str, low: int, high: int, problems: list[str]) -> int:
    if re.fullmatch(r"[0-9]{1,9}", raw) and low <= int(raw) <= high:
        return int(raw)
    problems.append(f"{name}={raw!r} is invalid: expected a whole number from {low} to {high}")
    return low


def _float(raw: str, name: str, low: float, high: float, problems: list[str]) -> float:
    try:
        value = float(raw)
        if low <= value <= high:
            return value
    except ValueError:
        pass
    problems.append(f"{name}={raw!r} is invalid: expected a number of seconds from {low:g} to {high:g}")
    return low


