"""The ``purecompress`` command line: ``purecompress demo`` (the main job)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _non_negative(text: str) -> int:
    """An argparse type: an int >= 0 (argparse reports the error and exits with status 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``purecompress`` command."""
    parser = argparse.ArgumentParser(prog="purecompress", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small CNN on digits, prune and quantize it, print a table")
    demo.add_argument("--out", default="purecompress-out", help="output folder (default: %(default)s)")
    demo.add_argument("--epochs", type=_non_negative, default=8,
                      help="dense training epochs, >= 0 (default: %(default)s)")
    demo.add_argument("--finetune-epochs", type=_non_negative, default=3,
                      help="fine-tuning epochs per recipe, >= 0 (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0,
                      help="seed of the train/test split, the initial weights and the batch order "
                           "(default: %(default)s)")
    demo.add_argument("--verbose", action="store_true", help="print the per-layer sparsity of each recipe")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from purecompress.demo.recipes import format_rows, run_demo

        rows = run_demo(args.out, epochs=args.epochs, finetune_epochs=args.finetune_epochs, seed=args.seed,
                        verbose=args.verbose)
        print(format_rows(rows))
        for row in rows:
            if row.compact:
                print(f"\n{row.name} {row.compact}")
        print(f"\nwrote dense and compressed state_dicts, masks and quantization parameters (safetensors) "
              f"to {args.out}/")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
