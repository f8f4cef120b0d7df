"""``python -m purecompress``: the same command line as the ``purecompress`` script."""

from __future__ import annotations

import sys

from purecompress.demo.cli import main

if __name__ == "__main__":
    sys.exit(main())
