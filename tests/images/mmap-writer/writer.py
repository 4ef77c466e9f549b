"""Writes through a shared memory map of /data/map.db, never msync'ed, as LMDB does.

At start it prints `found <sha256>` of the file as the last stop left it (`found none`
the first time), then maps the file (1 MiB) and writes a counter into its first page
every few milliseconds: only the first write faults and moves the file's mtime; the
page then stays dirty and writable (on tmpfs, for ever), so no later write moves any
time. On SIGTERM it writes `stopped n=<counter>` there and exits, still without msync:
the page cache holds the only copy, which a stop backup must archive."""

import hashlib
import mmap
import os
import signal
import sys
import time

PATH = "/data/map.db"
SIZE = 1 << 20


def main() -> None:
    try:
        with open(PATH, "rb") as f:
            print("found", hashlib.sha256(f.read()).hexdigest(), flush=True)
    except FileNotFoundError:
        print("found none", flush=True)
        with open(PATH, "wb") as f:
            f.truncate(SIZE)
    fd = os.open(PATH, os.O_RDWR)
    page = mmap.mmap(fd, SIZE)
    n = 0

    def stop(*_):
        page[:64] = f"stopped n={n}".encode().ljust(64, b".")
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    page[:64] = b"started".ljust(64, b".")
    print("mapped", time.time(), flush=True)
    while True:
        n += 1
        page[:64] = f"running n={n}".encode().ljust(64, b".")
        time.sleep(0.005)


if __name__ == "__main__":
    main()
