"""An unchanged mirror's archive is the previous one's bytes (issue 20: a steady-state backup
of an unchanged volume near the cost of its passes, not of a compression of every byte).

The archive a held mirror worker writes is a function of the mirror's tree, its special.json
(set-id bits and devices) and the archive's options (compression, excludes, recipients). The
manifest a pass writes describes that tree exactly: each entry's source side (device, inode,
mode, size, mtime and ctime, taken after the syncfs that makes a later write through mmap move
them, the racy rule) and its copy's side (Mirrored). So when the manifest and special.json a
stopped pass leaves are byte for byte those the previous archive was made from, with the same
options, the previous archive already holds what a plain read of the stopped volume gives.

After each archive from the mirror, `remember` writes `archived.json` in the mirror's folder:
that state's digest and the archive it produced (its final name, inode, size, mtime and
SHA-256). The next held worker, before archiving, asks `previous`: the same state, and the
recorded archive still there, same inode, size and mtime. Then `copy_previous` copies it into
the partial file while hashing it; a digest other than the recorded one (the file was damaged)
and the worker archives the mirror as always. A copy, not a hard link: every dated archive stays
a file of its own (one bad block does not take several days' archives), and a filesystem with
reflinks (XFS, btrfs) shares the blocks by itself (copy_file_range).

Not reused: a passphrase-encrypted archive (its fingerprint would be a hash of the passphrase;
age's recipients are public keys), a mirror whose last pass did not finish, any change of
options, an archive renamed, rotated or replaced since.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.model import Compression
from ..core.naming import PARTIAL_SUFFIX
from ..mirror.worker import ARCHIVED, MANIFEST, SPECIAL, write_durably

STATE_VERSION = 1
COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class Previous:
    """The archive a mirror's state produced (paths as the worker sees the backup volume)."""

    state: str
    path: str  # the final archive (the partial file's name without its suffix)
    ino: int
    size: int
    mtime_ns: int
    sha256: str
    tar_bytes: int


def keys_fingerprint(keys_file: Path | None) -> str | None:
    """'' without encryption; the recipients' digest; None when a passphrase encrypts (never
    reused). The keys file is only read here: the archive reads it again (and removes it)."""
    if keys_file is None:
        return ""
    try:
        data = json.loads(keys_file.read_text())
    except (OSError, ValueError):
        return None
    if data.get("passphrase") or not data.get("recipients"):
        return None
    return hashlib.sha256(json.dumps(sorted(data["recipients"])).encode()).hexdigest()


def state_of(mirror: Path, compression: Compression, exclude: tuple[str, ...], keys: str) -> str | None:
    """The digest of what decides the mirror's archive; None when it cannot be told."""
    digest = hashlib.sha256(json.dumps([STATE_VERSION, compression.value, list(exclude), keys]).encode())
    try:
        for name in (MANIFEST, SPECIAL):
            digest.update(b"\0" + name.encode() + b"\0" + (mirror / name).read_bytes())
    except OSError:
        return None
    return digest.hexdigest()


def final_of(output: Path) -> Path:
    return output.with_name(output.name.removesuffix(PARTIAL_SUFFIX))


def previous(mirror: Path, state: str | None) -> Previous | None:
    """The recorded archive of this very state, when it is still where and as it was left."""
    if state is None:
        return None
    try:
        found = Previous(**json.loads((mirror / ARCHIVED).read_text()))
        st = os.stat(found.path, follow_symlinks=False)
    except (OSError, ValueError, TypeError):
        return None
    if found.state != state or (st.st_ino, st.st_size, st.st_mtime_ns) != (found.ino, found.size, found.mtime_ns):
        return None
    return found


def copy_previous(found: Previous, output: Path) -> bool:
    """The recorded archive's bytes into the (existing) partial file, flushed to disk, then the
    copy read back and hashed; False, with the partial emptied, when it is not the recorded
    archive (damaged since). copy_file_range: the kernel copies, or shares the blocks where the
    filesystem has reflinks."""
    with open(found.path, "rb", buffering=0) as src, open(output, "r+b", buffering=0) as dst:
        dst.truncate(0)
        _copy(src.fileno(), dst.fileno(), found.size)
        os.fsync(dst.fileno())
        dst.seek(0)
        sha = hashlib.sha256()
        while chunk := dst.read(COPY_CHUNK):
            sha.update(chunk)
        same = sha.hexdigest() == found.sha256 and dst.tell() == found.size
        if not same:
            dst.truncate(0)
            os.fsync(dst.fileno())
    return same


def _copy(src: int, dst: int, size: int) -> None:
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src, dst, size - done)
            if n == 0:
                return  # shorter than recorded: the digest says so
            done += n
    except OSError:  # no copy_file_range between these two: through this process
        os.lseek(src, done, os.SEEK_SET)
        os.lseek(dst, done, os.SEEK_SET)
        while chunk := os.read(src, COPY_CHUNK):
            os.write(dst, chunk)


def remember(mirror: Path, state: str | None, output: Path, sha256: str, tar_bytes: int) -> None:
    """Record the archive just written into `output` as this state's (or forget any record,
    when the state cannot be told)."""
    if state is None:
        (mirror / ARCHIVED).unlink(missing_ok=True)
        return
    st = os.stat(output)
    record = Previous(state, str(final_of(output)), st.st_ino, st.st_size, st.st_mtime_ns, sha256, tar_bytes)
    write_durably(mirror / ARCHIVED, json.dumps(asdict(record)))


def forget(mirror: Path) -> None:
    (mirror / ARCHIVED).unlink(missing_ok=True)
