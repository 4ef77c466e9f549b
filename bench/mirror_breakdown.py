#!/usr/bin/env python3
"""Where a mirror backup's time goes (issue 20), without Docker: the worker's own functions
run in this process on a folder of this machine, each phase timed, next to the
`tar | zstd -3 -T0` baseline of the same folder measured in the same run, page cache warm
and (when this process may write /proc/sys/vm/drop_caches) cold.

    .venv/bin/python bench/mirror_breakdown.py [--size-mb 300] [--files 6000]

Phases: syncfs of the volume (T for the racy rule), the walk (lstat of every entry), the pass (copies, or compares with the manifest),
recording the mirror side, syncfs, the manifest; the first mirror by the Python copier, as
a backup makes it (run_mirror: `tar | tar`, each copy checked, the rest by the Python
copier) and by `cp -a --reflink=auto` (for comparison). A steady-state pass is timed
as if the data were older than the racy margin (set to 0 for it: data written in the
2 s before a pass is re-read on purpose). Worker container start-up is not in here
(bench/bench.py's backup figures include it); `docker run` of a probe measures it apart.

Ratios are printed only when the machine was quiet before the start (results.quiet_before_start):
figures taken beside other work are said to be so.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import results  # noqa: E402  (bench/, this script's folder)
from sidecar.mirror import diff as mirrordiff  # noqa: E402
from sidecar.mirror import worker as wm  # noqa: E402


def make_data(root: Path, total: int, files: int) -> None:
    """A third random, a third text, a third in `files` small files (bench/bench.py's mix)."""
    root.mkdir(parents=True)
    third = total // 3
    with open(root / "random.bin", "wb") as f:
        for _ in range(third // (1 << 20)):
            f.write(os.urandom(1 << 20))
    line = b"the quick brown fox jumps over the lazy dog 0123456789\n"
    with open(root / "text.log", "wb") as f:
        f.write(line * (third // len(line)))
    each = max(1, third // files)
    for i in range(files):
        folder = root / "small" / f"{i // 200:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i}.dat").write_bytes(os.urandom(each // 2) + line * (each // 2 // len(line)))


def timed(fn, *args) -> tuple[float, object]:
    start = time.monotonic()
    out = fn(*args)
    return time.monotonic() - start, out


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def tar_zstd(root: Path, out: Path) -> float:
    start = time.monotonic()
    subprocess.run(["sh", "-c", f"tar -C '{root}' -cf - . | zstd -3 -T0 -q > '{out}'"], check=True)
    return time.monotonic() - start


def phases(source: Path, mirror: Path) -> dict[str, float]:
    """One pass, timed by phase (the functions run_mirror calls, in its order)."""
    out = {}
    wm._make_vault(mirror)
    previous = wm.load_manifest(mirror)
    out["syncfs of the volume"], synced = timed(wm.sync_sources, source)
    out["walk"], (entries, children) = timed(wm.walk, source)
    p = wm.MirrorPass(wm.MirrorJob(source, mirror), previous, synced=synced)
    (mirror / wm.DIRTY).touch()
    out["pass"], manifest = timed(p.run, entries, children)
    out["record mirror side"], _ = timed(p.record_mirror_side)
    out["syncfs"], _ = timed(wm.sync_filesystem, mirror)
    out["manifest"], _ = timed(wm._write_durably, mirror / wm.MANIFEST, mirrordiff.dumps(manifest))
    (mirror / wm.DIRTY).unlink()
    out["copied MB"] = p.copied_bytes / 1e6
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=300)
    parser.add_argument("--files", type=int, default=6000)
    parser.add_argument("--dir", type=Path, default=None, help="where to build the data (default: a temp folder)")
    args = parser.parse_args()
    quiet = results.quiet_before_start()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = Path(tmp)
        source = base / "volume"
        make_data(source, args.size_mb << 20, args.files)
        rows: list[tuple[str, float, str]] = []
        tar_zstd(source, base / "warmup.tar.zst")
        warm = tar_zstd(source, base / "b.tar.zst")
        cold_ok = drop_caches()
        cold = tar_zstd(source, base / "c.tar.zst") if cold_ok else None
        rows.append(("tar | zstd -3 -T0, warm", warm, "baseline (warm)"))
        rows.append(("tar | zstd -3 -T0, cold", cold if cold is not None else float("nan"),
                     "baseline (cold)" if cold_ok else "drop_caches not permitted: no cold figure"))
        first = phases(source, base / "m1")
        rows += [(f"first mirror: {k}", v, "") for k, v in first.items() if k != "copied MB"]
        rows.append(("first mirror: total", sum(v for k, v in first.items() if k != "copied MB"), "python copier"))
        native, _ = timed(wm.run_mirror, wm.MirrorJob(source, base / "m2", check_room=False), lambda record: None)
        rows.append(("first mirror as a backup makes it (tar | tar, checked)", native, "run_mirror, whole pass"))
        start = time.monotonic()
        subprocess.run(["cp", "-a", "--reflink=auto", f"{source}/.", str(base / "cp")], check=True)
        subprocess.run(["sync", "-f", str(base / "cp")], check=True)
        rows.append(("first copy by cp -a --reflink=auto (+ sync -f)", time.monotonic() - start, "native copier"))
        saved = mirrordiff.RACY_MARGIN_NS
        mirrordiff.RACY_MARGIN_NS = -10**18  # as if the data were older than the writeback window
        wm_window = wm.writeback_window_ns
        wm.writeback_window_ns = lambda expire, every: 0
        try:
            phases(source, base / "m1")  # the records are now trusted ones
            steady = phases(source, base / "m1")
        finally:
            mirrordiff.RACY_MARGIN_NS, wm.writeback_window_ns = saved, wm_window
        rows += [(f"steady pass: {k}", v, "") for k, v in steady.items() if k != "copied MB"]
        rows.append(("steady pass: total", sum(v for k, v in steady.items() if k != "copied MB"), "nothing changed"))
        mirror_tar = tar_zstd(base / "m1" / wm.TREE, base / "m.tar.zst")
        rows.append(("archive of the mirror (tar | zstd), warm", mirror_tar, ""))
    print(f"data: {args.size_mb} MB, {args.files} small files; {quiet.text()}; page cache: warm unless said")
    for name, seconds, note in rows:
        ratio = f"{seconds / warm:6.2f}x" if quiet.ok and warm else "   -   "
        print(f"{name:52s} {seconds:8.3f} s  {ratio}  {note}")
    if not quiet.ok:
        print("no ratios: other work was running when the bench started; these seconds were taken beside it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
