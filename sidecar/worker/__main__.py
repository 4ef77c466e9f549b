"""`python -m sidecar.worker COMMAND ...` (see the package docstring)."""

import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
