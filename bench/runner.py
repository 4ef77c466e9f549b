"""The sidecar's CLI, with one reader forced: `python bench/runner.py [--reader NAME] ARGS...`
runs `backup-sidecar ARGS...` in this process (so the benchmark's wait4 sees this
process's peak RSS), and with `--reader` every volume goes through the registered reader
of that name (`sidecar.readers.READERS`) instead of the first usable one of
DEFAULT_ORDER. Each time the reader is chosen it prints one line
`{"bench_reader": NAME}` to stderr, so the benchmark can check the forcing took effect.
"""

from __future__ import annotations

import json
import sys

from sidecar import cli, readers


def force_reader(name: str) -> None:
    readers.get(name)  # unknown name: the sidecar's own ConfigError, listing the registered ones
    original = readers.choose

    def choose(engine, request, *args, **kwargs):
        # Whatever else choose takes (its order is the third argument or `order`), only the order changes.
        kwargs.pop("order", None)
        chosen = original(engine, request, (name,), *args[1:], **kwargs)
        print(json.dumps({"bench_reader": chosen.name}), file=sys.stderr, flush=True)
        return chosen

    readers.choose = choose  # the volumes source calls readers.choose at backup time


def main(argv: list[str]) -> int:
    if argv[:1] == ["--reader"]:
        force_reader(argv[1])
        argv = argv[2:]
    try:
        return cli.main(argv)
    finally:
        say_own_peak_rss()


def say_own_peak_rss() -> None:
    """This process's own peak RSS (VmHWM), as `{"bench_self_max_rss": BYTES}` on stderr:
    wait4's figure also counts the children it waited for (restic, for BACKUP_FORMAT=restic)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            print(json.dumps({"bench_self_max_rss": int(line.split()[1]) * 1024}), file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
