"""Code that runs inside a short-lived worker container started by the sidecar from its own
image (see Engine.run_worker): `python -m sidecar.worker COMMAND ...`.

Commands: `archive` (a volume mounted read-only -> a compressed, hashed and optionally
encrypted archive written into a partial file on the backup volume; see archive.py),
`mirror` (a pass bringing a staging mirror on the backup volume up to date with a volume;
see mirror.py), `restic` (restic next to the data, for BACKUP_FORMAT=restic; see restic.py) and `probe` (says whether this image can do that). Output is one JSON object per line on
stdout (the sidecar reads it back through the engine's logs endpoint); PROTOCOL changes
whenever the sidecar and the worker must agree on something new.
"""

PROTOCOL = 3
