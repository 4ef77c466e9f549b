"""The pure core: what the sidecar decides, with no Docker, no network and no child process
(tests/unit/test_layers.py holds it to that). Everything above it imports from here; it
imports nothing above it.

- values in: `settings` (the environment, one table), `labels` (container labels, one
  table), `values` (the text -> value parsers both tables share), `config` and `keys`
  (typed destination configs, age keys), `notify_urls` and `ping_urls` (notification and
  ping settings as values), `errors` (the one error hierarchy);
- the model: `model` (typed values passed between the layers), `swarm` (what a task's labels
  and its service say), `stacks` (which Compose projects keep their definition);
- decisions: `discovery` (containers -> targets), `groups`, `schedule`, `naming` (archive
  names), `retention` (what to keep), `consistency` (can a target's archives be trusted),
  `members` (which members of an archive a user means), `presetnames`, `snapshots` (restic
  snapshots in the sidecar's vocabulary);
- `fsutil`: the durable JSON write every state file on the backup volume goes through.
"""
