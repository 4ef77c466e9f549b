"""Issue 11 item 4: a round-trip property test. Hypothesis generates trees (depth, unicode,
space and newline names, modes, owners, nanosecond mtimes, symlinks, hard links, sparse and
empty files, empty folders, user xattrs where the volume's filesystem has them); each is
written into a real volume, backed up and restored through worker containers, and the tree
read back inside a container must equal the original member by member.

A few examples by default (each costs a dozen containers); many more with --slow."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from .support import Lab, stderr_records

# Builds the tree described by argv[1] (JSON) under /data. Metadata goes on last, folders
# deepest first, so creating an entry never changes what was already set.
POPULATE = r"""
import json, os, random, sys
spec = json.loads(sys.argv[1])
root = "/data"
def data(seed, n):
    return random.Random(seed).randbytes(n)
xattrs = True
for e in spec["entries"]:
    p = os.path.join(root, e["path"])
    k = e["kind"]
    if k == "dir":
        os.mkdir(p, 0o700)
    elif k == "file":
        with open(p, "wb") as f:
            if e.get("sparse"):
                f.truncate(e["size"])
                for off, n in e["sparse"]:
                    f.seek(off); f.write(data(e["seed"] + off, n))
            else:
                f.write(data(e["seed"], e["size"]))
    elif k == "link":
        os.link(os.path.join(root, e["to"]), p)
    elif k == "symlink":
        os.symlink(e["target"], p)
for e in spec["entries"]:
    p = os.path.join(root, e["path"])
    for key, value in (e.get("xattrs") or {}).items():
        try:
            os.setxattr(p, key, value.encode())
        except OSError:
            xattrs = False
def meta(e, p):
    os.chown(p, e["uid"], e["gid"], follow_symlinks=False)
    if e["kind"] != "symlink":
        os.chmod(p, e["mode"])
    os.utime(p, ns=(e["mtime_ns"], e["mtime_ns"]), follow_symlinks=False)
for e in spec["entries"]:
    if e["kind"] in ("file", "symlink"):
        meta(e, os.path.join(root, e["path"]))
for e in sorted((e for e in spec["entries"] if e["kind"] == "dir"), key=lambda e: -e["path"].count("/")):
    meta(e, os.path.join(root, e["path"]))
meta(spec["root"], root)
print(json.dumps({"xattrs": xattrs}))
"""

# Every entry of /data with what a restore must keep, as JSON.
MANIFEST = r"""
import hashlib, json, os, stat
root = "/data"
rows, inodes = {}, {}
def row(rel, p):
    st = os.lstat(p)
    r = {"mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid, "mtime_ns": st.st_mtime_ns}
    if stat.S_ISLNK(st.st_mode):
        r.update(kind="symlink", target=os.readlink(p))
        del r["mode"]  # a symlink's mode means nothing on Linux
    elif stat.S_ISDIR(st.st_mode):
        r.update(kind="dir")
    else:
        with open(p, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        r.update(kind="file", size=st.st_size, sha256=digest, nlink=st.st_nlink,
                 sparse=st.st_blocks * 512 < st.st_size)
        inodes.setdefault(st.st_ino, []).append(rel)
    if not stat.S_ISLNK(st.st_mode):
        r["xattrs"] = {k: os.getxattr(p, k).hex() for k in sorted(os.listxattr(p)) if k.startswith("user.")}
    rows[rel] = r
row(".", root)
for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames + filenames:
        p = os.path.join(dirpath, name)
        row(os.path.relpath(p, root), p)
for names in inodes.values():
    for n in names:
        rows[n]["same_inode_as"] = sorted(names)
print(json.dumps(rows, sort_keys=True))
"""

NAMES = (st.sampled_from(["a b", "line\nbreak", " lead", "trail ", "ünïcödé файл", "文件", "-dash", "*?[x]", "tab\t"])
         | st.text(st.characters(codec="utf-8", exclude_characters="/\0", exclude_categories=("Cs",)),
                   min_size=1, max_size=12).filter(lambda n: n not in (".", "..")))
OWNERS = st.sampled_from([0, 1, 33, 999, 1000, 65534, 100000])
MTIMES = st.integers(0, 4_102_444_800 * 10**9)  # 1970 to 2100, nanoseconds
XATTRS = st.dictionaries(st.sampled_from(["user.a", "user.note", "user.ünï"]),
                         st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=40), max_size=2)


@st.composite
def trees(draw) -> dict:
    used: dict[str, set[str]] = {"": set()}
    entries: list[dict] = []

    def new_path(parents: list[str]) -> str:
        parent = draw(st.sampled_from(parents))
        name = draw(NAMES.filter(lambda n: n not in used[parent]))
        used[parent].add(name)
        return f"{parent}/{name}" if parent else name

    def common(kind: str, mode_bits: st.SearchStrategy) -> dict:
        return {"kind": kind, "mode": draw(mode_bits), "uid": draw(OWNERS), "gid": draw(OWNERS),
                "mtime_ns": draw(MTIMES)}

    dirs = [""]
    for _ in range(draw(st.integers(0, 6))):
        path = new_path([d for d in dirs if d.count("/") < 4])  # depth up to 5
        used[path] = set()
        dirs.append(path)
        entries.append({**common("dir", st.integers(0, 0o777) | st.just(0o2775)), "path": path,
                        "xattrs": draw(XATTRS)})
    files = []
    for _ in range(draw(st.integers(1, 10))):
        entry = {**common("file", st.integers(0, 0o777) | st.just(0o1644)), "path": new_path(dirs),
                 "seed": draw(st.integers(0, 2**32)), "xattrs": draw(XATTRS)}
        if draw(st.booleans()) and draw(st.booleans()):  # a quarter sparse
            size = draw(st.integers(1 << 20, 4 << 20))
            offsets = sorted(draw(st.sets(st.integers(0, size // 4096 - 2), max_size=3)))
            entry.update(size=size, sparse=[[o * 4096, 4096] for o in offsets])
        else:
            entry.update(size=draw(st.sampled_from([0, 1, 511, 512, 513]) | st.integers(0, 70_000)))
        entries.append(entry)
        files.append(entry["path"])
    for _ in range(draw(st.integers(0, 3))):
        entries.append({"kind": "link", "path": new_path(dirs), "to": draw(st.sampled_from(files))})
    targets = files + dirs[1:]
    for _ in range(draw(st.integers(0, 3))):
        entry = {**common("symlink", st.just(0o777)), "path": new_path(dirs)}
        if draw(st.booleans()):  # to something in the tree, relative to the symlink's folder
            entry["target"] = os.path.relpath(draw(st.sampled_from(targets)), os.path.dirname(entry["path"]) or ".")
        else:
            entry["target"] = "missing-" + draw(NAMES)
        entries.append(entry)
    root = common("dir", st.sampled_from([0o755, 0o750, 0o2770]))
    return {"entries": entries, "root": root}


def _python(lab: Lab, image: str, script: str, volume: str, *args: str, mode: str = "rw") -> str:
    out = lab.client.containers.run(image, ["-c", script, *args], entrypoint=["python"], user="0", remove=True,
                                    network_mode="none", volumes={volume: {"bind": "/data", "mode": mode}})
    return out.decode()


def _round_trip(docker_client, tmp_path_factory, image: str, tree: dict) -> None:
    lab = Lab(docker_client, tmp_path_factory.mktemp("prop"))
    try:
        volume = lab.volume("data")
        populated = json.loads(_python(lab, image, POPULATE, volume, json.dumps(tree)))
        original = json.loads(_python(lab, image, MANIFEST, volume, mode="ro"))
        assert len(original) == len(tree["entries"]) + 1
        if not populated["xattrs"]:  # the volume's filesystem has none: compare without them
            for row in original.values():
                row.pop("xattrs", None)
        lab.workload("app", {"backup.enable": "true", "backup.strategy": "hot"}, {volume: "/data"})
        backup = lab.cli("backup", "app", BACKUP_WORKER_IMAGE=image)
        assert backup.returncode == 0, backup.stderr
        lab.run_oneshot("echo junk > junk; mkdir -p more/deep", {volume: "/data"})
        restored = lab.cli("restore", "app", "--volume", "data", "--force", BACKUP_WORKER_IMAGE=image)
        assert restored.returncode == 0, restored.stderr
        assert [r.get("path") for r in stderr_records(restored.stderr) if r.get("message") == "volume unpacked"] \
            == ["worker"]
        after = json.loads(_python(lab, image, MANIFEST, volume, mode="ro"))
        if not populated["xattrs"]:
            for row in after.values():
                row.pop("xattrs", None)
        assert sorted(after) == sorted(original)
        for name in original:
            assert after[name] == original[name], name
    finally:
        lab.cleanup()


COMMON = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(max_examples=3, **COMMON)
@given(tree=trees())
def test_generated_trees_round_trip_through_the_worker(docker_client, tmp_path_factory, worker_image, tree):
    _round_trip(docker_client, tmp_path_factory, worker_image, tree)


@pytest.mark.slow
@settings(max_examples=20, **COMMON)  # about 15 s each on a quiet machine
@given(tree=trees())
def test_many_generated_trees_round_trip_through_the_worker(docker_client, tmp_path_factory, worker_image, tree):
    _round_trip(docker_client, tmp_path_factory, worker_image, tree)


def test_the_generator_covers_what_the_issue_asks_for():
    """The strategy can produce every feature (checked on drawn examples, no engine)."""
    seen: set[str] = set()

    @settings(max_examples=120, database=None, deadline=None)
    @given(tree=trees())
    def collect(tree):
        for e in tree["entries"]:
            seen.add(e["kind"])
            seen.update({"sparse"} if e.get("sparse") else ())
            seen.update({"empty"} if e.get("size") == 0 else ())
            seen.update({"xattr"} if e.get("xattrs") else ())
            seen.update({"newline"} if "\n" in e["path"] else ())
            seen.update({"space"} if " " in e["path"] else ())
            seen.update({"non-ascii"} if not e["path"].isascii() else ())
            seen.update({"deep"} if e["path"].count("/") >= 3 else ())
    collect()
    assert {"dir", "file", "link", "symlink", "sparse", "empty", "xattr", "space", "newline", "non-ascii",
            "deep"} <= seen, seen
