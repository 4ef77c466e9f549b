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

from .config import S3Config
from .errors import SettingsError
from .keys import DecryptionKeys, EncryptionConfig, load_identities, parse_recipients
from .notify import NotifyConfig, NotifyOn, parse_notify_on, parse_notify_urls
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
    s3: S3Config | None = None  # None: no off-site copy
    images_keep: int = 3  # exports kept per image
    notify: NotifyConfig | None = None  # apprise URLs: failure (or every) outcome is notified
    metrics_port: int = 9918  # 0: no metrics endpoint
    metrics_addr: str = "0.0.0.0"
    sync_interval: float = 300.0  # seconds between sync cycles of the daemon (heals store outages)

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
    s3 = _s3(env, get, problems)
    sync_interval = _float(get("S3_SYNC_INTERVAL", "300"), "S3_SYNC_INTERVAL", 1, 86400, problems)
    images_keep = _int(get("BACKUP_KEEP_IMAGES", "3"), "BACKUP_KEEP_IMAGES", 1, 1000, problems)
    notify = _notify(env, get, problems)
    metrics_port = _int(get("METRICS_PORT", "9918"), "METRICS_PORT", 0, 65535, problems)
    metrics_addr = get("METRICS_ADDR", "0.0.0.0")

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
        s3=s3,
        sync_interval=sync_interval,
        images_keep=images_keep,
        notify=notify,
        metrics_port=metrics_port,
        metrics_addr=metrics_addr,
        shutdown_grace=shutdown_grace,
        progress_interval=progress_interval,
    )


def _notify(env: Mapping[str, str], get, problems: list[str]) -> NotifyConfig | None:
    """NOTIFY_URLS (or _FILE), NOTIFY_ON, NOTIFY_TIMEOUT. URLs carry tokens: never quoted."""
    raw = read_value(env, "NOTIFY_URLS", problems) or ""
    urls: tuple[str, ...] = ()
    if raw.strip():
        try:
            urls = parse_notify_urls(raw)
        except ValueError as exc:
            problems.append(f"NOTIFY_URLS is invalid: {exc}")
    raw_on = get("NOTIFY_ON", "failure")
    on = NotifyOn.FAILURE
    try:
        on = parse_notify_on(raw_on)
    except ValueError as exc:
        problems.append(f"NOTIFY_ON={raw_on!r} is invalid: {exc}")
    timeout = _float(get("NOTIFY_TIMEOUT", "10"), "NOTIFY_TIMEOUT", 1, 300, problems)
    return NotifyConfig(urls, on, timeout) if urls else None


def _s3(env: Mapping[str, str], get, problems: list[str]) -> S3Config | None:
    """S3_* settings; credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or their
    _FILE forms), else boto3's own chain. Secrets are never quoted in a message."""
    bucket = get("S3_BUCKET", "")
    if not bucket:
        for name in ("S3_PREFIX", "S3_ENDPOINT_URL", "S3_STORAGE_CLASS"):
            if env.get(name):
                problems.append(f"{name} is set but S3_BUCKET is not: set S3_BUCKET to enable off-site copies")
        return None
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        problems.append(f"S3_BUCKET={bucket!r} is invalid: expected an S3 bucket name (3-63 lower-case letters, "
                        "digits, '.' and '-')")
    endpoint = get("S3_ENDPOINT_URL", "") or None
    if endpoint is not None and not re.match(r"https?://[^/\s]+", endpoint):
        problems.append(f"S3_ENDPOINT_URL={endpoint!r} is invalid: expected http://HOST[:PORT] or https://HOST[:PORT]")
    part_mib = _int(get("S3_PART_SIZE_MB", "64"), "S3_PART_SIZE_MB", 5, 5120, problems)
    attempts = _int(get("S3_ATTEMPTS", "5"), "S3_ATTEMPTS", 1, 20, problems)
    checksum = get("S3_CHECKSUM", "SHA256").upper()
    if checksum not in ("SHA256", "NONE"):
        problems.append(f"S3_CHECKSUM={checksum!r} is invalid: accepted: SHA256, none (for a store that refuses "
                        "checksum headers)")
    key_id = read_value(env, "AWS_ACCESS_KEY_ID", problems) or None
    secret = read_value(env, "AWS_SECRET_ACCESS_KEY", problems) or None
    if (key_id is None) != (secret is None):
        problems.append("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: set both (or their _FILE forms), or neither "
                        "to use boto3's credential chain")
        key_id = secret = None
    return S3Config(
        bucket=bucket,
        prefix=get("S3_PREFIX", "").strip("/"),
        endpoint_url=endpoint,
        region=get("S3_REGION", "") or env.get("AWS_DEFAULT_REGION") or None,
        storage_class=get("S3_STORAGE_CLASS", "") or None,
        path_style=_bool(get("S3_PATH_STYLE", "false"), "S3_PATH_STYLE", problems),
        part_size=part_mib * 1024 * 1024,
        attempts=attempts,
        access_key_id=key_id,
        secret_access_key=secret,
        checksum_algorithm=None if checksum == "NONE" else "SHA256",
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


