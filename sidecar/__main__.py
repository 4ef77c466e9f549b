"""`python -m sidecar`: the command line (sidecar/cli.py)."""

from .cli import main

raise SystemExit(main())
