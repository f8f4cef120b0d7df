"""``python -m purecompress.compat SCRIPT.py [args]``: run an unchanged NNI 2.x script on purecompress.

The script runs as ``__main__`` with ``sys.argv = [SCRIPT.py, *args]``; its ``nni`` imports are
served by purecompress.compat (see :mod:`purecompress.compat._shim`), whether or not NNI is installed.
"""

from __future__ import annotations

import os
import runpy
import sys

from purecompress.compat._shim import install

USAGE = "usage: python -m purecompress.compat SCRIPT.py [args...]"


def main(argv: list[str] | None = None) -> int:
    """Run the script named by ``argv[0]`` with the NNI shim installed."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    script = args[0]
    if not os.path.isfile(script):
        print(f"{USAGE}\nerror: no such script: {script}", file=sys.stderr)
        return 2
    install()
    sys.argv = [script, *args[1:]]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
