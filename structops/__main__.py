"""``python -m structops``: the same command line as ``structops``."""

import sys

from .apps.cli import main

if __name__ == "__main__":
    sys.exit(main())
