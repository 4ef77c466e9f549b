"""Writes to /data/app.db in WAL mode as fast as it can: each transaction inserts a row and
counts it in `meta`, so count(items) == meta.n holds in every consistent state.
`writer.py idle` only waits (a container to restore into); `writer.py check` prints
"integrity|rows|counted" for the database."""

import signal
import sqlite3
import sys
import time

PATH = "/data/app.db"


def check() -> None:
    con = sqlite3.connect(PATH)
    verdict = con.execute("PRAGMA integrity_check").fetchone()[0]
    rows = con.execute("SELECT count(*) FROM items").fetchone()[0]
    counted = con.execute("SELECT n FROM meta WHERE k = 'rows'").fetchone()[0]
    print(f"{verdict}|{rows}|{counted}")


def write() -> None:
    con = sqlite3.connect(PATH, timeout=30, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, v TEXT)")
    con.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, n INTEGER)")
    con.execute("INSERT OR IGNORE INTO meta VALUES ('rows', 0)")
    while True:
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO items (v) VALUES (?)", ("x" * 200,))
        con.execute("UPDATE meta SET n = n + 1 WHERE k = 'rows'")
        con.execute("COMMIT")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    mode = sys.argv[1] if len(sys.argv) > 1 else "write"
    if mode == "check":
        check()
    elif mode == "idle":
        while True:
            time.sleep(1)
    else:
        write()
