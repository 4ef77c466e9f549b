"""Archive names: {service}_{type}_{YYYY-MM-DD}[THHMMSS][-N]_{frequency}{ext}, kept in a
folder named after the frequency. Pure: the caller says which names already exist.

Names are parsed from the right: the type never contains "_" (see labels.short_volume_name),
so a backup name with underscores still parses.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from .errors import UnsafeName
from .presetnames import canonical_type
from .schedule import Frequency

EXTENSIONS = (".tar.zst", ".tar.gz", ".tar")
ENCRYPTED_SUFFIX = ".age"
CHECKSUM_SUFFIX = ".sha256"
PARTIAL_SUFFIX = ".partial"

MAX_COMPONENT = 200  # bytes of one name used in a file name (255 minus room for suffixes)


def safe_component(name: str, what: str) -> str:
    """`name` when it can be one component of a path under BACKUP_DIR (a lock file, an
    archive's name): raises UnsafeName for "/", NUL, "." and "..", empty or too long names,
    so no name read from a label, the command line or a state file can reach outside."""
    if not name or name in (".", "..") or "/" in name or "\0" in name or len(name.encode(errors="replace")) > MAX_COMPONENT:
        raise UnsafeName(f"{what} {name[:300]!r} cannot be used in a file name: accepted: 1-{MAX_COMPONENT} characters, "
                         "no '/' nor NUL, not '.' or '..'")
    return name


# A node's name is one folder on every destination and a metric label value.
MAX_NODE_NAME = 253  # a DNS name's length: engine names are host names
NODE_NAME_ACCEPTED = f"1-{MAX_NODE_NAME} letters, digits, '.', '_' and '-', not '.' or '..'"
_NODE_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")


def node_name_problem(name: str) -> str | None:
    """Why `name` cannot name a node (None: it can)."""
    if len(name) > MAX_NODE_NAME or name in (".", "..") or not _NODE_NAME_RE.fullmatch(name):
        return f"accepted: {NODE_NAME_ACCEPTED}"
    return None


def safe_node_name(name: str, what: str) -> str:
    """`name` when it can name a node (`what` says where it came from: a setting, an
    option, the engine); raises UnsafeName naming the value and what is accepted."""
    problem = node_name_problem(name)
    if problem is not None:
        raise UnsafeName(f"{what} {name[:300]!r} cannot name a node: {problem}")
    return name


def safe_relpath(relpath: str) -> str:
    """`relpath` when it stays inside the folder it is relative to (no absolute path, no '..')."""
    parts = relpath.split("/")
    if relpath.startswith("/") or "\0" in relpath or any(p == ".." for p in parts):
        raise UnsafeName(f"path {relpath[:300]!r} would lead outside the backup folder")
    return relpath


_NAME_RE = re.compile(
    r"^(?P<service>.+)_(?P<type>[^_]+)_"
    r"(?P<date>\d{4}-\d{2}-\d{2})(?:T(?P<time>\d{6}))?(?:-(?P<seq>\d+))?_"
    r"(?P<frequency>hourly|daily|weekly|monthly)"
    r"(?P<ext>(?:\.tar\.zst|\.tar\.gz|\.tar)(?:\.age)?)$"
)


@dataclass(frozen=True, order=True)
class ArchiveName:
    stamp: datetime  # naive, in the sidecar's time zone
    backup_name: str
    volume_name: str
    frequency: Frequency
    extension: str
    has_time: bool = False
    seq: int = 0

    @property
    def filename(self) -> str:
        stamp = _stamp_text(self.stamp, self.has_time, self.seq)
        return f"{self.backup_name}_{self.volume_name}_{stamp}_{self.frequency.value}{self.extension}"

    @property
    def recency(self) -> tuple:
        """The one sort key for "newest archive": by stamp, then a name with a time part
        after the same stamp without one (choose_name adds the time to the second archive
        of a day), then the sequence number; of promoted copies of one archive (same
        moment, see `moment`), the original (lowest frequency) sorts newest."""
        return (*self.moment, -list(Frequency).index(self.frequency))

    @property
    def moment(self) -> tuple:
        """What promoted copies of one archive share: the head of `recency`."""
        return self.stamp, self.has_time, self.seq

    @property
    def kind(self) -> str:
        """The type archives are grouped and looked up by: `volume_name`, with a preset's
        dump under its canonical name (an alias's `mariadb+dump` is `mysql+dump`)."""
        return canonical_type(self.volume_name)

    @property
    def encrypted(self) -> bool:
        return self.extension.endswith(ENCRYPTED_SUFFIX)

    @property
    def relpath(self) -> str:
        return f"{self.frequency.value}/{self.filename}"


def _stamp_text(stamp: datetime, has_time: bool, seq: int) -> str:
    text = stamp.strftime("%Y-%m-%d")
    if has_time:
        text += stamp.strftime("T%H%M%S")
    if seq:
        text += f"-{seq}"
    return text


def _parse_stamp(m: re.Match | None) -> datetime | None:
    if m is None:
        return None
    try:
        return datetime.strptime(m["date"] + (m["time"] or "000000"), "%Y-%m-%d%H%M%S")
    except ValueError:
        return None


def parse_name(filename: str) -> ArchiveName | None:
    m = _NAME_RE.match(filename)
    stamp = _parse_stamp(m)
    if stamp is None:
        return None
    return ArchiveName(
        stamp=stamp,
        backup_name=m["service"],
        volume_name=m["type"],
        frequency=Frequency(m["frequency"]),
        extension=m["ext"],
        has_time=m["time"] is not None,
        seq=int(m["seq"] or 0),
    )


def choose_name(
    backup_name: str,
    volume_name: str,
    when: datetime,
    frequency: Frequency,
    with_time: bool,
    extension: str,
    exists: Callable[[str], bool],
) -> ArchiveName:
    """The name for a new archive, never one for which `exists(relpath)` is true.

    A second archive on the same day gets the time part; a second in the same second a
    sequence number. `exists` should also answer for partial and checksum files.
    """
    safe_component(backup_name, "backup name")
    safe_component(volume_name, "volume name")
    when = when.replace(tzinfo=None, microsecond=0)
    candidate = ArchiveName(when, backup_name, volume_name, frequency, extension, has_time=with_time)
    if not exists(candidate.relpath):
        return candidate
    candidate = ArchiveName(when, backup_name, volume_name, frequency, extension, has_time=True)
    seq = 1
    while exists(candidate.relpath):
        seq += 1
        candidate = ArchiveName(when, backup_name, volume_name, frequency, extension, has_time=True, seq=seq)
    return candidate


# --- exported images -------------------------------------------------------------------
IMAGE_FOLDER = "images"

_IMAGE_RE = re.compile(
    r"^(?P<image>[^_]+)_(?P<tag>[^_]+)_(?:(?P<ref>[0-9a-f]{8})_)?"
    r"(?P<date>\d{4}-\d{2}-\d{2})(?:T(?P<time>\d{6}))?(?:-(?P<seq>\d+))?"
    r"(?P<ext>\.tar\.zst(?:\.age)?)$"
)
_IMAGE_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")
_IMAGE_ID = re.compile(r"[0-9a-f]{12,64}")


@dataclass(frozen=True)
class ImageArchiveName:
    """images/{image}_{tag}_{ref}_{YYYY-MM-DD}[THHMMSS][-N].tar.zst: a `docker save` of one image.

    `image` and `tag` are the reference made safe for file names, which can make two
    references look alike (`team/app:1.0`, `team-app:1.0`); `ref`, a short hash of the
    full reference, keeps their exports apart (rotation groups by it). Names written
    before it existed have `ref` "" and rotate among themselves."""

    stamp: datetime
    image: str
    tag: str
    extension: str
    has_time: bool = False
    seq: int = 0
    ref: str = ""

    @property
    def filename(self) -> str:
        ref = f"{self.ref}_" if self.ref else ""
        return f"{self.image}_{self.tag}_{ref}{_stamp_text(self.stamp, self.has_time, self.seq)}{self.extension}"

    @property
    def relpath(self) -> str:
        return f"{IMAGE_FOLDER}/{self.filename}"

    @property
    def group(self) -> tuple[str, str, str]:
        """Exports of one reference: what image rotation keeps `keep` of."""
        return self.image, self.tag, self.ref


def image_reference_key(reference: str) -> str:
    """8 hex digits of the SHA-256 of the reference in full (`app` and `app:latest` are
    one reference; a digest is left out, as the name leaves it out)."""
    if reference.startswith("sha256:") or _IMAGE_ID.fullmatch(reference):
        canonical = reference.removeprefix("sha256:")
    else:
        name, tag = _split_tag(reference)
        canonical = f"{name}:{tag}"
    return hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _split_tag(reference: str) -> tuple[str, str]:
    name, tag = reference.split("@", 1)[0], "latest"
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    return name, tag


def split_image_reference(reference: str) -> tuple[str, str]:
    """'registry:5000/team/app:1.2' -> ('registry-5000-team-app', '1.2'); an ID -> ('image', short id).
    Both parts are safe for file names and never contain '_'."""
    if reference.startswith("sha256:") or _IMAGE_ID.fullmatch(reference):
        return "image", reference.removeprefix("sha256:")[:12]
    name, tag = _split_tag(reference)
    image = _IMAGE_UNSAFE.sub("-", name).strip("-.") or "image"
    return image[:80], (_IMAGE_UNSAFE.sub("-", tag).strip("-.") or "latest")[:40]


def parse_image_name(filename: str) -> ImageArchiveName | None:
    m = _IMAGE_RE.match(filename)
    stamp = _parse_stamp(m)
    if stamp is None:
        return None
    return ImageArchiveName(stamp, m["image"], m["tag"], m["ext"], m["time"] is not None, int(m["seq"] or 0),
                            m["ref"] or "")


def choose_image_name(reference: str, when: datetime, extension: str,
                      exists: Callable[[str], bool]) -> ImageArchiveName:
    """A new export's name; a second export of the same image on the same day gets the time part."""
    image, tag = split_image_reference(reference)
    ref = image_reference_key(reference)
    when = when.replace(tzinfo=None, microsecond=0)
    candidate = ImageArchiveName(when, image, tag, extension, ref=ref)
    seq = 1
    while exists(candidate.relpath):
        candidate = ImageArchiveName(when, image, tag, extension, has_time=True, seq=0 if seq == 1 else seq, ref=ref)
        seq += 1
    return candidate
