"""Sensitivity analysis: K = 16 candidate sparsities per layer in one vmapped pass vs a loop.

A small VGG-style CNN in eval mode on CPU, one batch; every conv/linear weight analysed with L1.
Prints the paired time ratio loop / vmapped and checks the two give the same scores.

    python benchmarks/bench_sensitivity.py [--batch 4 16 64] [--threads 1]

The vmapped pass saves the per-candidate Python and dispatch work; the arithmetic is the same, so
the gain shrinks as the batch (the work per candidate) grows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).parent))
from _models import vgg  # noqa: E402
from _timing import environment, paired_ratio, table  # noqa: E402

import purecompress as pc  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = vgg((16, "M", 32, "M", 64, "M"), classes=10, spatial=16).eval()
    params = pc.params_of(model)
    layers = [n for n, p in params.items() if n.endswith(".weight") and p.dim() in (2, 4)]
    sparsities = [i / 16 for i in range(16)]
    rows = []
    for batch in args.batch:
        x, y = torch.randn(batch, 3, 16, 16), torch.randint(0, 10, (batch,))

        def loss(p: pc.Params, x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            return nn.functional.cross_entropy(functional_call(model, p, (x,)), y)

        with torch.no_grad():
            fast = pc.sensitivity(params, layers, sparsities, loss)
            slow = pc.sensitivity(params, layers, sparsities, loss, vmapped=False)
            same = torch.allclose(fast.scores, slow.scores, rtol=1e-4, atol=1e-5)
            ratio = paired_ratio(lambda: pc.sensitivity(params, layers, sparsities, loss, vmapped=False),
                                 lambda: pc.sensitivity(params, layers, sparsities, loss), repeats=args.repeats)
        rows.append([f"VGG-style CNN, eval, batch {batch}", str(len(layers)), "16", f"{ratio:.2f}x", str(same),
                     str(len(fast.looped))])
    print(environment())
    print(table(["case", "layers", "K", "loop / vmapped", "same scores", "looped layers"], rows))


if __name__ == "__main__":
    main()
