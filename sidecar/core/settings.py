"""Environment settings, one declarative table, validated all at once at start-up.

`SETTINGS` holds one `Setting` row per environment variable: its parser (with its
bounds), default, whether `NAME_FILE` is accepted (Docker secrets), whether it is a
secret, and its help text. The table drives the parsing, the defaults, the error
messages and docs/reference/settings.md (`python -m sidecar.doctables`). Values that
span several settings (the S3 store, encryption, notifications) are put together by the
small rules after the table. To add a setting: add a row (and a `Settings` field when it
fills one directly).

`load_settings` takes the environment as a mapping so tests never touch os.environ;
only the CLI passes the real one.
"""

from __future__ import annotations

import dataclasses
import difflib
import os.path
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .config import LocalConfig, RcloneConfig, S3Config
from .errors import SettingsError
from .keys import DecryptionKeys, EncryptionConfig, load_identities, parse_recipients
from .notify_urls import NotifyConfig, NotifyOn, parse_notify_on, parse_notify_urls
from .ping_urls import ACCEPTED as PING_ACCEPTED
from .ping_urls import PingUrl, parse_ping_url
from .retention import DEFAULT_KEEP, Keep
from .schedule import Schedule
from .stacks import StackSettings, include_problem
from .model import StorageFormat
from .naming import NODE_NAME_ACCEPTED, node_name_problem
from .values import ACCEPTED_TRUTH, BOOLEAN, KEEP, SCHEDULE, Parser, comma_list, member_of, one_of, seconds, truth, whole, \
    without_userinfo

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
    project: str | None  # BACKUP_PROJECT: a compose project, "*" (all), None: the sidecar's own (discovery.resolve_scope)
    shutdown_grace: float
    progress_interval: float
    keep: Keep = DEFAULT_KEEP
    prune_dry_run: bool = False
    encryption: EncryptionConfig | None = None  # age recipients or passphrase: archives are encrypted
    encrypt_local: bool = True  # False: local archives plain, only the off-site copy encrypted
    decryption: DecryptionKeys | None = None  # identities / passphrase for restore
    s3: S3Config | None = None  # None: no off-site copy
    # BACKUP_DESTINATIONS in order: the S3 store, rclone remotes, a mounted folder ("local").
    destinations: tuple[S3Config | RcloneConfig | LocalConfig, ...] = ()
    images_keep: int = 3  # exports kept per image
    notify: NotifyConfig | None = None  # apprise URLs: failure (or every) outcome is notified
    metrics_port: int = 9918  # 0: no metrics endpoint
    metrics_addr: str = "0.0.0.0"
    sync_interval: float = 300.0  # seconds between sync cycles of the daemon (heals store outages)
    worker_image: str | None = None  # image of worker containers; None: the sidecar's own container's image
    worker_timeout: float = 86400.0  # seconds one worker container may run
    node_name: str | None = None  # BACKUP_NODE_NAME; None: the engine's name
    node_prefix: bool | None = None  # BACKUP_NODE_PREFIX; None (auto): on when the engine is an active Swarm node
    stack_enabled: bool = True  # BACKUP_STACK: archive each project's Compose files, .env, secrets and configs
    stack_include: tuple[str, ...] = ()
    stack_exclude: tuple[str, ...] = ()
    stack_max_mb: int = 20
    ping: PingUrl | None = None  # BACKUP_PING_URL: pinged at the start and end of every target's run
    ping_timeout: float = 5.0  # seconds one ping may take

    backup_format: StorageFormat = StorageFormat.ARCHIVE  # BACKUP_FORMAT (label backup.format per container)
    restic_password: str | None = None  # RESTIC_PASSWORD(_FILE): the restic repositories' key; never logged
    restic_prune_interval: float = 7 * 86400.0  # seconds between the daemon's forget + prune (0: never)
    restic_check_interval: float = 86400.0  # seconds between the daemon's restic checks (0: never)
    restic_check_subset: str | None = "5%"  # --read-data-subset of each check (None: structure only)

    @property
    def stack(self) -> StackSettings:
        return StackSettings(self.stack_enabled, self.stack_include, self.stack_exclude,
                             self.stack_max_mb * 1024 * 1024)

    @property
    def state_dir(self) -> Path:
        return self.backup_dir / ".sidecar"


@dataclass(frozen=True)
class Setting:
    """One environment variable: how it is read, checked and documented."""

    name: str
    parse: Parser  # its ValueError says what is accepted
    default: str | None  # parsed like a set value; None: unset (the value is None)
    help: str  # Markdown, for docs/reference/settings.md
    field: str | None = None  # the Settings attribute it fills; None: a rule below uses it
    file: bool = True  # NAME_FILE (a file holding the value) is accepted
    # Never echoed in a message, and taken as written (no stripping; empty is not unset).
    secret: bool = False
    needs: str | None = None  # read only when this other setting is set
    shown_default: str | None = None  # the reference's default when it is no literal value
    # How a value is echoed in messages when it may hold a secret in part (a URL's password).
    show: Callable[[str], str] | None = None

    def shown(self, raw: str) -> str:
        """NAME=VALUE for a message: the name alone for a secret, the value as `show` gives it."""
        if self.secret:
            return self.name
        return f"{self.name}={(self.show(raw) if self.show else raw)!r}"


# --- parsers of this table (shared ones are in values.py) ---------------------------------

def _absolute_path(raw: str) -> Path:
    if not Path(raw).is_absolute():
        raise ValueError("expected an absolute path")
    return Path(raw)


def _time_zone(raw: str) -> ZoneInfo:
    try:
        return ZoneInfo(raw.lstrip(":"))
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: TZ names a folder of the zone database
        raise ValueError("expected an IANA time zone such as UTC or Europe/Berlin") from None


def _octal_mode(raw: str) -> int:
    try:
        mode = int(raw, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise ValueError("expected an octal mode such as 0600 or 0640")
    return mode


def _bucket(raw: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", raw):
        raise ValueError("expected an S3 bucket name (3-63 lower-case letters, digits, '.' and '-')")
    return raw


def _endpoint(raw: str) -> str:
    if not re.match(r"https?://[^/\s]+", raw):
        raise ValueError("expected http://HOST[:PORT] or https://HOST[:PORT]")
    return raw


def _checksum(raw: str) -> str | None:
    value = raw.upper()
    if value not in ("SHA256", "NONE"):
        raise ValueError("accepted: SHA256, none (for a store that refuses checksum headers)")
    return None if value == "NONE" else value


def _node_name(raw: str) -> str:
    problem = node_name_problem(raw)
    if problem is not None:
        raise ValueError(problem)
    return raw


def _node_prefix(raw: str) -> bool | None:
    if raw.strip().lower() == "auto":
        return None
    value = truth(raw)
    if value is None:
        raise ValueError(f"accepted: auto, {ACCEPTED_TRUTH}")
    return value


def _check_subset(raw: str) -> str | None:
    if raw.strip().lower() == "none":
        return None
    if not re.fullmatch(r"\d+(\.\d+)?%|\d+/\d+|\d+[KMGT]?", raw.strip()):
        raise ValueError("accepted: N% (5%), n/t (1/7), a size (500M), none")
    return raw.strip()


def _passphrase(raw: str) -> str:
    if raw == "":
        raise ValueError("it is empty; expected a passphrase (or unset it)")
    return raw


def _identities(raw: str) -> tuple:
    return tuple(load_identities(Path(raw)))  # its ValueError names the file and line, never a key


def _recipients(raw: str) -> tuple[str, ...] | None:
    return parse_recipients(raw) if raw.strip() else None


def _notify_urls(raw: str) -> tuple[str, ...]:
    return parse_notify_urls(raw) if raw.strip() else ()


# rclone options whose names end in _file (rclone 1.60): RCLONE_CONFIG_NAS_KEY_FILE is sftp's
# key_file option, not the _FILE form of a "key" option; every other RCLONE_CONFIG_*_FILE is.
RCLONE_FILE_OPTIONS = ("box_config_file", "key_file", "known_hosts_file", "pubkey_file", "service_account_file",
                       "service_principal_file", "shared_credentials_file")
_REMOTE_ITEM = re.compile(r"(?P<remote>[A-Za-z0-9_][A-Za-z0-9_.-]*):(?P<path>.*)")
DESTINATIONS_ACCEPTED = ("`s3` (the S3 store of the `S3_*` settings), `REMOTE:path` (an rclone remote, e.g. "
                         "`nas:backups/host1`), an absolute path (a mounted disk, e.g. `/mnt/copy`)")


def _destination_item(item: str) -> str | RcloneConfig | LocalConfig:
    if item == "s3":
        return item
    if item.startswith("/"):
        return LocalConfig(os.path.normpath(item))
    found = _REMOTE_ITEM.fullmatch(item)
    if found is None:
        raise ValueError(f"{item!r} is not a destination; accepted: " + DESTINATIONS_ACCEPTED.replace("`", ""))
    return RcloneConfig(found["remote"], found["path"].strip("/"))


def destination_name(item: str | RcloneConfig | LocalConfig) -> str:
    """The name a destination goes by (metrics, `--from`, `list --remote`)."""
    if isinstance(item, RcloneConfig):
        return item.remote
    return "local" if isinstance(item, LocalConfig) else "s3"


def _destinations(raw: str) -> tuple[str | RcloneConfig | LocalConfig, ...]:
    items = tuple(_destination_item(part) for part in comma_list(raw))
    names = [destination_name(i) for i in items]
    for name in dict.fromkeys(n for n in names if names.count(n) > 1):
        same = ", ".join(part for part, n in zip(comma_list(raw), names) if n == name)
        raise ValueError(f"two destinations would be named {name!r} ({same}); a name is s3, the rclone remote's "
                         "name or local: give each remote and at most one absolute path once")
    return items


TEXT: Parser[str] = Parser(str, "text")
ABSOLUTE_PATH = Parser(_absolute_path, "an absolute path")
TIME_ZONE = Parser(_time_zone, "an IANA time zone name (`Europe/Berlin`)")
OCTAL_MODE = Parser(_octal_mode, "an octal mode, `0` to `0777`")
BUCKET = Parser(_bucket, "an S3 bucket name")
ENDPOINT = Parser(_endpoint, "`http://HOST[:PORT]`, `https://HOST[:PORT]`")
PREFIX = Parser(lambda raw: raw.strip("/"), "text; `/` around it is dropped")
CHECKSUM = Parser(_checksum, "`SHA256`, `none`")
RECIPIENTS = Parser(_recipients, "age public keys (`age1...`, `ssh-ed25519 ...`), comma or line separated")
PASSPHRASE = Parser(_passphrase, "a non-empty passphrase")
IDENTITIES = Parser(_identities, "an age identity file (`AGE-SECRET-KEY-1...` lines) or an unencrypted OpenSSH "
                    "private key")
NOTIFY_URLS = Parser(_notify_urls, "apprise URLs, comma or line separated")
NOTIFY_ON = Parser(parse_notify_on, ", ".join(f"`{on.value}`" for on in NotifyOn))
PING_URL = Parser(lambda raw: parse_ping_url(raw) if raw.strip() else None, PING_ACCEPTED)
SECRET_TEXT = Parser(lambda raw: raw or None, "text")
DESTINATIONS = Parser(_destinations, "comma list of " + DESTINATIONS_ACCEPTED)
NODE_NAME = Parser(_node_name, NODE_NAME_ACCEPTED.replace("'", "`"))
def _stack_paths(raw: str) -> tuple[str, ...]:
    paths = comma_list(raw)
    problems = [p for p in paths if include_problem(p) is not None]
    if problems:
        raise ValueError(f"{', '.join(problems)}: accepted: paths relative to each project's working folder, "
                         "without '..'")
    return paths


STACK_PATHS = Parser(_stack_paths, "comma list of paths relative to the working folder, without `..`")
GLOBS = Parser(comma_list, "comma list of glob patterns")
NODE_PREFIX = Parser(_node_prefix, "`auto`, " + BOOLEAN.accepted)
CHECK_SUBSET = Parser(lambda raw: _check_subset(raw), "`N%`, `n/t`, a size such as `500M`, or `none`")


SETTINGS: tuple[Setting, ...] = (
    Setting("BACKUP_DIR", ABSOLUTE_PATH, "/backups", "where archives are written (mount the backup volume or a "
            "host folder here)", field="backup_dir"),
    Setting("BACKUP_DEFAULT_SCHEDULE", SCHEDULE, "@daily", "schedule for targets without `backup.schedule`",
            field="default_schedule"),
    Setting("TZ", TIME_ZONE, "UTC", "time zone of schedules and archive dates", field="tz"),
    Setting("BACKUP_CONCURRENCY", whole(1, 64), "1", "how many targets are backed up at the same time",
            field="concurrency"),
    Setting("BACKUP_FILE_MODE", OCTAL_MODE, "0600", "mode of archive and checksum files", field="file_mode"),
    Setting("BACKUP_PROJECT", TEXT, None, "which containers are backed up: only those of this Compose project "
            "(`com.docker.compose.project` label); `*`: every labelled container on the engine. Unset: the "
            "project of the sidecar's own container, so a sidecar in one stack leaves other stacks alone; "
            "outside a container (or in one of no project), every project. `backup-sidecar plan` says which "
            "scope is in force", field="project", file=False,
            shown_default="the sidecar's own Compose project"),
    Setting("BACKUP_HELPER_IMAGE", TEXT, None, "image with `sh` and `rm` used to empty a volume for "
            "`restore --force` when the container mounts something inside it", field="helper_image", file=False,
            shown_default="the sidecar's own image, else the target's"),
    Setting("BACKUP_WORKER_IMAGE", TEXT, None, "image of the short-lived worker containers that archive a "
            "volume next to its data (needs this sidecar's code, GNU tar, zstd: the sidecar's image); when no "
            "worker can run, volumes are read through the engine's archive API (slower, no staging mirror: a "
            "`stop` target stays down longer), said once per run as a WARNING; `none`: that on purpose, "
            "unwarned. `plan` shows each target's reader and why", field="worker_image",
            file=False, shown_default="the sidecar's own image; outside a container, the newest local image "
            "labelled `backup-sidecar.image=sidecar` (built from this Dockerfile)"),
    Setting("BACKUP_WORKER_TIMEOUT", seconds(10, 7 * 86400), "86400", "seconds a worker container may run "
            "before it is killed (the backup then fails)", field="worker_timeout"),
    Setting("BACKUP_SHUTDOWN_GRACE", seconds(0, 3600), "5", "seconds a running backup may still finish after "
            "SIGTERM before it is aborted (its containers are put back either way)", field="shutdown_grace"),
    Setting("BACKUP_PROGRESS_INTERVAL", seconds(0.1, 600), "10", "seconds between progress log lines of a long "
            "backup", field="progress_interval"),
    Setting("LOG_FORMAT", one_of(LOG_FORMATS), "json", "`json`: one JSON object per line; `text`: for people. "
            "Logs go to stderr, command output to stdout; unless set, one-shot commands (all but `run`) log as "
            "`text`", field="log_format"),
    Setting("LOG_LEVEL", one_of(LOG_LEVELS, fold=str.upper), "INFO", "the least severe level logged; unless set, "
            "one-shot commands log `WARNING` and above", field="log_level"),
    Setting("DOCKER_HOST", TEXT, None, "the engine to talk to (`unix://PATH`, `tcp://HOST:PORT`, ...)",
            field="docker_host", file=False, shown_default="`unix:///var/run/docker.sock`"),
    Setting("BACKUP_FORMAT", member_of(StorageFormat), "archive", "`archive`: dated `.tar.zst` files; `restic`: "
            "snapshots in the deduplicated restic repository `BACKUP_DIR/restic` (needs `RESTIC_PASSWORD`; see "
            "docs/how-to/restic.md). The label `backup.format` chooses per container", field="backup_format"),
    Setting("RESTIC_PASSWORD", SECRET_TEXT, None, "the restic repository's password (restic's own name; best as "
            "`RESTIC_PASSWORD_FILE`, a Docker secret): a symmetric key, whoever holds it reads every snapshot",
            field="restic_password", secret=True, shown_default="unset"),
    Setting("BACKUP_RESTIC_PRUNE_INTERVAL", seconds(0, 365 * 86400), str(7 * 86400), "seconds between the "
            "daemon's `restic forget` + `prune` of the local repository (its cost is logged); `0`: only the "
            "`prune` command", field="restic_prune_interval"),
    Setting("BACKUP_RESTIC_CHECK_INTERVAL", seconds(0, 365 * 86400), "86400", "seconds between the daemon's "
            "`restic check` of the local repository (result in the metrics); `0`: never",
            field="restic_check_interval"),
    Setting("BACKUP_RESTIC_CHECK_SUBSET", CHECK_SUBSET, "5%", "what each check reads back and verifies "
            "(`--read-data-subset`: `5%`, `1/7`, `500M`); `none`: the structure only",
            field="restic_check_subset"),
    Setting("BACKUP_KEEP", KEEP, str(DEFAULT_KEEP), "rotation: how many hourly, daily, weekly and monthly "
            "periods to keep; frequencies not named keep their default", field="keep"),
    Setting("BACKUP_PRUNE_DRY_RUN", BOOLEAN, "false", "`true`: rotation only logs what it would delete",
            field="prune_dry_run"),
    Setting("BACKUP_KEEP_IMAGES", whole(1, 1000), "3", "image exports kept per image", field="images_keep"),
    Setting("BACKUP_DESTINATIONS", DESTINATIONS, None, "where off-site and second-medium copies go, each "
            "verified, retried and caught up on its own: `s3`, rclone remotes configured the rclone way "
            "(a mounted `rclone.conf` named by `RCLONE_CONFIG`, or `RCLONE_CONFIG_<NAME>_<KEY>` variables, "
            "secrets also as `..._FILE`), a mounted folder. Names: `s3`, the remote's name, `local` (see "
            "Destinations)", file=False, shown_default="`s3` when `S3_BUCKET` is set, else none"),
    Setting("BACKUP_NODE_PREFIX", NODE_PREFIX, "auto", "`true`: every destination keeps this node's copies in a "
            "folder named after the node (`{prefix}/{node}/daily/...`), so the nodes of a fleet share one bucket "
            "or remote without meeting; `false`: the single-host layout (`{prefix}/daily/...`); `auto`: on when "
            "the engine is an active Docker Swarm node", field="node_prefix", file=False),
    Setting("BACKUP_NODE_NAME", NODE_NAME, None, "this node's name: its folder on the destinations (with "
            "`BACKUP_NODE_PREFIX`) and the `node` label of every metric", field="node_name", file=False,
            shown_default="the engine's name (`docker info`: Name, the host name)"),
    Setting("BACKUP_STACK", BOOLEAN, "true", "archive each Compose project's definition with its data: the Compose "
            "files, `.env`, file secrets and read-only bind-mounted configs (`{project}_stack_...`); secrets only "
            "when archives are encrypted (see the disaster-recovery guide)", field="stack_enabled", file=False),
    Setting("BACKUP_STACK_INCLUDE", STACK_PATHS, "", "more paths of every project's working folder to keep in "
            "its stack archive (label `backup.stack.include` for one project)", field="stack_include", file=False,
            shown_default="none"),
    Setting("BACKUP_STACK_EXCLUDE", GLOBS, "", "left out of every stack archive (label `backup.stack.exclude` "
            "for one project)", field="stack_exclude", file=False, shown_default="none"),
    Setting("BACKUP_STACK_MAX_MB", whole(1, 100000), "20", "a file or folder of a stack bigger than this (MiB) is "
            "left out with a warning naming it and its size: a data folder is not swallowed by mistake",
            field="stack_max_mb", file=False),
    Setting("S3_BUCKET", BUCKET, None, "the off-site bucket; unset: no off-site copy", shown_default="unset"),
    Setting("S3_PREFIX", PREFIX, "", "key prefix inside the bucket (`{prefix}/daily/...`)", needs="S3_BUCKET",
            shown_default="none"),
    Setting("S3_ENDPOINT_URL", ENDPOINT, None, "for S3-compatible stores (MinIO, Backblaze B2, Wasabi, "
            "Cloudflare R2, SeaweedFS)", needs="S3_BUCKET", shown_default="AWS", show=without_userinfo),
    Setting("S3_REGION", TEXT, None, "the bucket's region (`AWS_DEFAULT_REGION` also works)", needs="S3_BUCKET",
            shown_default="boto3's default"),
    Setting("S3_STORAGE_CLASS", TEXT, None, "e.g. `STANDARD_IA`, `GLACIER_IR`", needs="S3_BUCKET",
            shown_default="the bucket's default"),
    Setting("S3_PATH_STYLE", BOOLEAN, "false", "`true` for `http://host/bucket/key` addressing (MinIO, "
            "SeaweedFS)", needs="S3_BUCKET"),
    Setting("S3_PART_SIZE_MB", whole(5, 5120), "64", "multipart part size in MiB; memory stays about 2 parts "
            "whatever the archive size", needs="S3_BUCKET"),
    Setting("S3_ATTEMPTS", whole(1, 20), "5", "tries per S3 request (botocore's standard retry mode: capped exponential backoff with jitter)",
            needs="S3_BUCKET"),
    Setting("S3_TIMEOUT", seconds(1, 3600), "60", "seconds to wait for the store's answer to one request (a "
            "slow or stuck store); then the request is tried again, up to `S3_ATTEMPTS` in all", needs="S3_BUCKET"),
    Setting("S3_CHECKSUM", CHECKSUM, "SHA256", "`SHA256`: the store verifies every upload; `none` for a store "
            "that refuses checksum headers", needs="S3_BUCKET"),
    Setting("S3_SYNC_INTERVAL", seconds(1, 86400), "300", "seconds between the daemon's sync cycles (uploads "
            "what is missing off site)", field="sync_interval"),
    Setting("AWS_ACCESS_KEY_ID", SECRET_TEXT, None, "S3 access key; unset (with the secret): boto3's chain "
            "(profiles, instance roles)", secret=True, needs="S3_BUCKET", shown_default="unset"),
    Setting("AWS_SECRET_ACCESS_KEY", SECRET_TEXT, None, "S3 secret key, best as `AWS_SECRET_ACCESS_KEY_FILE`",
            secret=True, needs="S3_BUCKET", shown_default="unset"),
    # Public keys, but never echoed: a secret key pasted here by mistake must not reach a log.
    Setting("BACKUP_AGE_RECIPIENTS", RECIPIENTS, None, "archives are encrypted to these keys while written",
            secret=True, shown_default="unset"),
    Setting("BACKUP_AGE_PASSPHRASE", PASSPHRASE, None, "or a passphrase (scrypt), best as "
            "`BACKUP_AGE_PASSPHRASE_FILE`", secret=True, shown_default="unset"),
    Setting("BACKUP_AGE_IDENTITY_FILE", IDENTITIES, None, "path of the age identity file `restore` decrypts with",
            file=False, shown_default="unset"),
    Setting("BACKUP_ENCRYPT_LOCAL", BOOLEAN, "true", "`true`: archives on the backup volume are encrypted too; "
            "`false`: only the off-site copy is", field="encrypt_local"),
    Setting("NOTIFY_URLS", NOTIFY_URLS, None, "where failures are reported: [apprise](https://github.com/"
            "caronc/apprise/wiki) URLs (`mailto://`, `slack://`, `discord://`, `tgram://`, `ntfy://`, "
            "`gotify://`, `json://` webhooks and dozens more); best as `NOTIFY_URLS_FILE` since they carry "
            "tokens", secret=True, shown_default="unset"),
    Setting("NOTIFY_ON", NOTIFY_ON, "failure", "`failure`: failures and the recovery after them; `always`: "
            "every run"),
    Setting("NOTIFY_TIMEOUT", seconds(1, 300), "10", "seconds one notification may take"),
    Setting("BACKUP_PING_URL", PING_URL, None, "a heartbeat URL pinged when each target's backup starts, "
            "succeeds or fails (a failure carries the run's last log lines): healthchecks.io (`hc+https://...`, "
            "or any `https://hc-ping.com/...`), Uptime Kuma push (`kuma+https://...`, or a URL with "
            "`/api/push/`), any other URL as a plain GET/POST; see docs/how-to/pings.md. Holds a token: never "
            "shown", field="ping", secret=True, shown_default="unset"),
    Setting("BACKUP_PING_TIMEOUT", seconds(1, 60), "5", "seconds one ping may take; a ping that fails is "
            "logged and counted (`backup_sidecar_ping_failures_total`), never fails a backup",
            field="ping_timeout"),
    Setting("METRICS_PORT", whole(0, 65535), "9918", "Prometheus endpoint (`/metrics`, `/healthz`); `0` turns "
            "it off", field="metrics_port"),
    Setting("METRICS_ADDR", TEXT, "0.0.0.0", "address the endpoint listens on (`::`: IPv6 and IPv4 where the system allows both)", field="metrics_addr",
            shown_default="all interfaces"),
)

_NEEDS_BUCKET = ("S3_PREFIX", "S3_ENDPOINT_URL", "S3_STORAGE_CLASS")  # set alone: surely a mistake

# Names with these prefixes are ours: one the table does not know is a typo (BACKUP_KEEP_DAYS)
# or a setting of another version, so it is warned about instead of silently ignored.
OWN_PREFIXES = ("BACKUP_", "S3_", "NOTIFY_", "METRICS_", "LOG_")
_NOT_SETTINGS = ("BACKUP_TEST_",)  # the test suite's own switches (BACKUP_TEST_SLOW)


def unknown_settings(env: Mapping[str, str]) -> dict[str, str | None]:
    """Names in `env` with our prefixes that no setting reads, each with the closest known
    name (None when nothing is close)."""
    known = {s.name for s in SETTINGS} | {f"{s.name}_FILE" for s in SETTINGS if s.file}
    unknown = sorted(name for name in env if name.startswith(OWN_PREFIXES) and name not in known
                     and not name.startswith(_NOT_SETTINGS))
    return {name: _closest(name, known) for name in unknown}


def _closest(name: str, known: set[str]) -> str | None:
    """The known name with the same words in another order, else the most alike after the
    shared prefix (which would make every name look alike)."""
    prefix = next(p for p in OWN_PREFIXES if name.startswith(p))
    tails = {k[len(prefix):]: k for k in sorted(known) if k.startswith(prefix)}
    tail = name[len(prefix):]
    words = sorted(tail.split("_"))
    for other, full in tails.items():
        if sorted(other.split("_")) == words:
            return full
    close = difflib.get_close_matches(tail, list(tails), n=1, cutoff=0.6)
    return tails[close[0]] if close else None


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
    """The Settings in `env`; raises SettingsError listing every problem found."""
    problems: list[str] = []
    values, given = read_table(env, problems)
    fields = {s.field: values[s.name] for s in SETTINGS if s.field is not None}
    fields["s3"] = _s3(env, values, given, problems)
    fields["destinations"] = _chosen_destinations(env, values, fields["s3"], problems)
    fields["encryption"], fields["decryption"] = _encryption(values, problems)
    fields["notify"] = _notify(values, problems)
    if values["BACKUP_FORMAT"] is StorageFormat.RESTIC and values["RESTIC_PASSWORD"] is None:
        problems.append("BACKUP_FORMAT=restic needs the repository's password: set RESTIC_PASSWORD_FILE (a file or "
                        "Docker secret holding it) or RESTIC_PASSWORD")
    if problems:
        raise SettingsError(problems)
    return Settings(**fields)


def read_table(env: Mapping[str, str], problems: list[str]) -> tuple[dict[str, Any], set[str]]:
    """Every row's value (parsed, or its default) and the names that were set. A bad value
    is reported in `problems` and read as None; a row whose `needs` is not set is not read."""
    values: dict[str, Any] = {}
    given: set[str] = set()
    for setting in SETTINGS:
        values[setting.name] = None
        if setting.needs is not None and setting.needs not in given:
            continue
        raw = _raw(env, setting, problems)
        if raw is not None:
            given.add(setting.name)
        elif setting.default is None:
            continue
        else:
            raw = setting.default
        try:
            values[setting.name] = setting.parse(raw)
        except ValueError as exc:
            problems.append(f"{setting.shown(raw)} is invalid: {exc}")
    return values, given


def _raw(env: Mapping[str, str], setting: Setting, problems: list[str]) -> str | None:
    """The value as set, None when unset; a non-secret's blanks are dropped and blank means unset."""
    raw = read_value(env, setting.name, problems) if setting.file else env.get(setting.name)
    if raw is None or setting.secret:
        return raw
    return raw.strip() or None


# --- rules across settings ----------------------------------------------------------------

def _s3(env: Mapping[str, str], values: Mapping[str, Any], given: set[str], problems: list[str]) -> S3Config | None:
    """S3_* settings; credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or their
    _FILE forms), else boto3's own chain."""
    if "S3_BUCKET" not in given:
        for name in _NEEDS_BUCKET:
            if env.get(name):
                problems.append(f"{name} is set but S3_BUCKET is not: set S3_BUCKET to enable off-site copies")
        return None
    key_id, secret = values["AWS_ACCESS_KEY_ID"], values["AWS_SECRET_ACCESS_KEY"]
    if (key_id is None) != (secret is None):
        problems.append("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: set both (or their _FILE forms), or neither "
                        "to use boto3's credential chain")
    if problems:  # no Settings will be built: a store from half-valid values is not needed
        return None
    return S3Config(
        bucket=values["S3_BUCKET"],
        prefix=values["S3_PREFIX"],
        endpoint_url=values["S3_ENDPOINT_URL"],
        region=values["S3_REGION"] or env.get("AWS_DEFAULT_REGION") or None,  # boto3's own name for it
        storage_class=values["S3_STORAGE_CLASS"],
        path_style=values["S3_PATH_STYLE"],
        part_size=values["S3_PART_SIZE_MB"] * 1024 * 1024,
        attempts=values["S3_ATTEMPTS"],
        access_key_id=key_id,
        secret_access_key=secret,
        checksum_algorithm=values["S3_CHECKSUM"],
        read_timeout=values["S3_TIMEOUT"],
    )


def _chosen_destinations(env: Mapping[str, str], values: Mapping[str, Any], s3: S3Config | None,
                         problems: list[str]) -> tuple[S3Config | RcloneConfig | LocalConfig, ...]:
    """BACKUP_DESTINATIONS with each item's config completed; unset: the S3 store if any."""
    items = values["BACKUP_DESTINATIONS"]
    if items is None:
        return (s3,) if s3 is not None else ()
    if s3 is not None and "s3" not in items:
        problems.append(f"S3_BUCKET is set but BACKUP_DESTINATIONS={_list_text(items)!r} does not name s3: add s3 "
                        "to the list, or unset S3_BUCKET")
    rclone_env = _rclone_env(env, problems) if any(isinstance(i, RcloneConfig) for i in items) else ()
    found: list[S3Config | RcloneConfig | LocalConfig] = []
    for item in items:
        if isinstance(item, RcloneConfig):
            found.append(dataclasses.replace(item, env=rclone_env, 
                                             progress_interval=values["BACKUP_PROGRESS_INTERVAL"] or 10.0))
        elif isinstance(item, LocalConfig):
            found.append(_local(item, values, problems))
        elif values["S3_BUCKET"] is None:
            problems.append("BACKUP_DESTINATIONS names s3 but S3_BUCKET is not set: set S3_BUCKET (and the "
                            "S3_* settings), or drop s3 from the list")
        elif s3 is not None:
            found.append(s3)
    return tuple(found)


def _list_text(items) -> str:
    return ",".join(i.spec if isinstance(i, RcloneConfig) else i.root if isinstance(i, LocalConfig) else i
                    for i in items)


def _local(item: LocalConfig, values: Mapping[str, Any], problems: list[str]) -> LocalConfig:
    backup_dir = values["BACKUP_DIR"]
    if backup_dir is not None:
        root, own = Path(item.root), Path(os.path.normpath(backup_dir))
        if root == own or own in root.parents or root in own.parents:
            problems.append(f"BACKUP_DESTINATIONS names {item.root!r}, which overlaps BACKUP_DIR={str(own)!r}: "
                            "the second copy must be on another disk, outside the backup volume")
    mode = values["BACKUP_FILE_MODE"]
    return dataclasses.replace(item, file_mode=(mode & 0o770) if mode is not None else 0o600)


def _rclone_env(env: Mapping[str, str], problems: list[str]) -> tuple[tuple[str, str], ...]:
    """The RCLONE_* variables for rclone's child processes, each `RCLONE_CONFIG_..._FILE`
    (Docker secrets) read into the variable it stands for."""
    found: dict[str, str] = {}
    for name, value in sorted(env.items()):
        if not name.startswith("RCLONE_"):
            continue
        if _is_file_form(name):
            base = name[:-len("_FILE")]
            read = read_value(env, base, problems)
            if read is not None:
                found[base] = read
        elif name not in found:
            found[name] = value
    return tuple(sorted(found.items()))


def _is_file_form(name: str) -> bool:
    lower = name.lower()
    return (name.startswith("RCLONE_CONFIG_") and name.endswith("_FILE") and len(name) > len("RCLONE_CONFIG__FILE")
            and not any(lower.endswith("_" + option) for option in RCLONE_FILE_OPTIONS))


def _encryption(values: Mapping[str, Any], problems: list[str]) -> tuple[EncryptionConfig | None,
                                                                          DecryptionKeys | None]:
    """Recipients or a passphrase (not both) encrypt; identities or the passphrase decrypt."""
    recipients = values["BACKUP_AGE_RECIPIENTS"] or ()
    passphrase = values["BACKUP_AGE_PASSPHRASE"]
    encryption = None
    if recipients and passphrase is not None:
        problems.append("BACKUP_AGE_RECIPIENTS and BACKUP_AGE_PASSPHRASE are both set: set only one")
    elif recipients or passphrase is not None:
        try:
            encryption = EncryptionConfig(recipients=recipients, passphrase=passphrase)
        except ValueError as exc:
            problems.append(f"encryption settings are invalid: {exc}")
    identities = values["BACKUP_AGE_IDENTITY_FILE"] or ()
    decryption = DecryptionKeys(identities, passphrase) if identities or passphrase is not None else None
    return encryption, decryption


def _notify(values: Mapping[str, Any], problems: list[str]) -> NotifyConfig | None:
    """Notifications only when NOTIFY_URLS names at least one URL."""
    if problems or not values["NOTIFY_URLS"]:
        return None
    return NotifyConfig(values["NOTIFY_URLS"], values["NOTIFY_ON"], values["NOTIFY_TIMEOUT"])
