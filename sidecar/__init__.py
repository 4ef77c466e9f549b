"""backup-sidecar: label-driven backups of Docker Compose volumes.

The folders are the layers (docs/architecture.md), each importing only those below it:
  core/                                   pure decisions: settings, labels, model, names, retention
  docker/ tarball/ store/ readers/ mirror/ worker/ destinations/ notify/ pings/ telemetry/
                                          adapters: the engine, the archive file, the backup
                                          volume and restic, how volumes are read, off-site
                                          copies, what operators are told
  actions/                                one module per command, with the source and format seams
  cli.py, __main__.py, doctables.py       the command line, the only place that reads argv
"""

__version__ = "0.1.0"
