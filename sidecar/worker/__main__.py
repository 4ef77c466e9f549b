"""`python -m sidecar.worker COMMAND ...` (see the package docstring)."""

import sys

from . import watch_parent
from .cli import main

watch_parent()

sys.exit(main(sys.argv[1:]))
