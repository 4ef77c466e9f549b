#!/usr/bin/env python3
"""Where each backup's time went, from the logs bench.py keeps (BENCH_KEEP_LOGS=FILE, best
with --env LOG_LEVEL=DEBUG for each worker's start and end): one line per log record, its
time since the run's start and since the record before, with the fields that say what it
did (purpose, seconds, copied, bytes, downtime).

    .venv/bin/python bench/phases.py FILE
"""

from __future__ import annotations

import json
import sys
from datetime import datetime

FIELDS = ("purpose", "seconds", "copied", "copied_bytes", "entries", "downtime_seconds", "exit_code", "bytes",
          "tar_bytes")
QUIET = ("backup in progress",)


def _when(record: dict) -> float:
    return datetime.strptime(record["time"], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def runs(lines) -> list[tuple[str, list[dict]]]:
    """(command, records) of each run in a kept log ("# command" starts a run)."""
    found: list[tuple[str, list[dict]]] = []
    for line in lines:
        if line.startswith("# "):
            found.append((line[2:].strip(), []))
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if found and isinstance(record, dict) and "message" in record and "time" in record:
            found[-1][1].append(record)
    return found


def main(argv: list[str]) -> int:
    with open(argv[1]) as f:
        kept = runs(f)
    for number, (command, records) in enumerate(kept, 1):
        print(f"--- run {number}: {command}")
        if not records:
            continue
        start = previous = _when(records[0])
        for record in records:
            if record["message"] in QUIET:
                continue
            at = _when(record)
            fields = {k: record[k] for k in FIELDS if k in record}
            print(f"{at - start:7.2f} (+{at - previous:5.2f}) {record['message'][:48]:48s} {fields}")
            previous = at
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
