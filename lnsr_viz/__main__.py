"""``python -m lnsr_viz``: see :mod:`lnsr_viz.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
