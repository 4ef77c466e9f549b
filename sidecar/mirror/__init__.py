"""The staging mirror: a `stop` or `pause` target's volume is copied ahead, while it runs, to
a mirror on the backup volume, so the container is quiesced only for what changed.

- `diff`: the change detection, pure (core): what a pass must copy again, the manifest;
- `reader`: the mirror Reader (the sidecar's side): the passes before and during the
  quiesce, then the archive made from the mirror;
- `worker`: one mirror pass, run inside a worker container (`python -m sidecar.worker mirror`).

Nothing is imported here, so a worker loading `worker` never loads the reader's engine code.
"""
