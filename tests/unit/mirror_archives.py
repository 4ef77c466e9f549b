"""What a tar archive of a folder holds, member by member, as the archive worker makes it
(sidecar/worker/archive.py's tar command, uncompressed): the staging mirror's invariant is
that the archive of the mirror equals the archive of a plain read of the quiesced volume."""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

from sidecar.worker.archive import listing, tar_command
from sidecar.mirror.worker import SPECIAL, TREE
from sidecar.worker.special import HeaderPatcher, load_special


def members(root: Path, exclude: tuple[str, ...] = (), special: Path | None = None) -> dict[str, tuple]:
    """Each member's header fields, PAX records, sparse map and data digest; `special`: a
    mirror's special.json, applied as the archive worker applies it."""
    listed = bool(exclude)
    feed = b"".join(listing(root, exclude)) if listed else None
    argv = [a for a in tar_command(root, listed) if not a.startswith("--checkpoint")]
    done = subprocess.run(argv, input=feed, capture_output=True, check=False)
    assert done.returncode in (0, 1), done.stderr.decode(errors="replace")
    raw = done.stdout
    if special is not None:
        raw = b"".join(HeaderPatcher(load_special(special)).feed(raw))
    rows = {}
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        for m in tar:
            data = tar.extractfile(m).read() if m.isreg() else b""
            pax = dict(m.pax_headers)  # mtime to the nanosecond, xattrs, GNU.sparse.*
            rows[m.name] = (m.type, m.mode, m.uid, m.gid, m.mtime, m.size, m.linkname, m.devmajor, m.devminor,
                            tuple(sorted(pax.items())), tuple(m.sparse or ()), hashlib.sha256(data).hexdigest())
    return rows


def differences(mirror: Path, volume: Path, exclude: tuple[str, ...] = ()) -> list[str]:
    """Members that differ, said per member (empty: the two archives hold the same).
    `mirror`: a mirror's tree (its special.json beside it is applied) or any folder."""
    special = mirror.parents[1] / SPECIAL if mirror.name == TREE.rpartition("/")[2] else None
    a = members(mirror, exclude, special if special is not None and special.exists() else None)
    b = members(volume, exclude)
    out = [f"{name}: only in the {'mirror' if name in a else 'volume'}'s archive" for name in sorted(set(a) ^ set(b))]
    out += [f"{name}: mirror {a[name]} volume {b[name]}" for name in sorted(set(a) & set(b)) if a[name] != b[name]]
    return out
