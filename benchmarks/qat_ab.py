"""A/B of the MLP QAT step between two trees: run once per checkout, alternating.

``python benchmarks/qat_ab.py TREE`` (TREE: a checkout, e.g. ``git worktree add /tmp/old <rev>``)
imports ``purecompress`` and bench_qat's step functions from TREE and prints the median step times
of plain, functional QAT, compiled plain and compiled QAT on the 8x512 MLP (batch 64, 1 thread,
7 interleaved rounds of 10 steps) with the two ratios. Run it for the two trees in turn, twice.
"""

from __future__ import annotations

import copy
import sys

import torch


def main(tree: str) -> None:
    sys.path.insert(0, tree)
    import purecompress
    from benchmarks import bench_qat as b
    from benchmarks._timing import interleaved_medians

    if not purecompress.__file__ or not purecompress.__file__.startswith(tree):
        raise SystemExit(f"purecompress was imported from {purecompress.__file__}, not from {tree}")
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 512, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    base = b.mlp()
    steps = {"plain": b.plain_step(copy.deepcopy(base), x, y),
             "qat": b.functional_step(copy.deepcopy(base), x, y, compiled=False),
             "plain_c": b.functional_step(copy.deepcopy(base), x, y, compiled=True, quantize=False),
             "qat_c": b.functional_step(copy.deepcopy(base), x, y, compiled=True)}
    med = interleaved_medians(steps, repeats=7, inner=10, warmup=3)
    ms = {k: round(v * 1e3, 2) for k, v in med.items()}
    print(f"{tree}: {ms}; eager QAT / plain {med['qat'] / med['plain']:.2f}x, "
          f"compiled QAT / compiled plain {med['qat_c'] / med['plain_c']:.2f}x")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
