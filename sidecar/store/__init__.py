"""Where backups are kept and what the sidecar remembers beside them (adapters).

- `storage`: the backup volume (BACKUP_DIR): archives and their checksums, stale partial
  files, the journal of interrupted containers, per-target locks;
- `state`: `JsonState`, the small JSON documents on the backup volume every process shares
  (atomic writes, a lock around read-modify-write);
- `image_index`: which image IDs have been exported already;
- `restic`: a restic repository, driven through the restic program as a child process.
"""
