"""Shrinking a pruned model: NNI 2.10.1's ModelSpeedup vs purecompress, in one process, as ratios.

1. shrink time on a VGG-style CIFAR net (50% L1 channel masks on every conv, the same masks for
   everyone): NNI's ``ModelSpeedup``, ``purecompress.compat.speedup.ModelSpeedup`` and the core's
   ``shrink``; compact shapes are checked equal to NNI's.
2. inference latency of the compact model vs the dense one (batch 16, 32x32, CPU).

Run: ``python benchmarks/bench_shrink.py [--threads 1]`` (under a minute; the NNI column needs nni).
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models  # noqa: E402
from _timing import environment, median_time, table  # noqa: E402

import purecompress as pc  # noqa: E402
from purecompress.compat.speedup import ModelSpeedup  # noqa: E402
from purecompress.graph import shrink

warnings.filterwarnings("ignore")
try:
    from nni.compression.pytorch.speedup import ModelSpeedup as NniModelSpeedup
except ImportError:  # pragma: no cover
    NniModelSpeedup = None
logging.disable(logging.WARNING)  # NNI logs every node at INFO


def vgg() -> nn.Module:
    return _models.vgg(hidden=512)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = vgg().eval()
    x = torch.randn(16, 3, 32, 32)
    plan = pc.select(model, pc.from_config_list([{"sparsity": 0.5, "op_types": ["Conv2d"]}]))
    masks = pc.prune(pc.params_of(model), plan, pc.l1_norm)
    nni_masks: dict = {}
    for key, mask in masks.items():
        module, _, target = key.rpartition(".")
        nni_masks.setdefault(module, {})[target] = mask.to_dense()

    rows = []
    ours_s = median_time(lambda: shrink(model, masks, x[:1]), repeats=5)
    compat_s = median_time(lambda: ModelSpeedup(copy.deepcopy(model), x[:1], nni_masks).speedup_model(), repeats=5)
    compact, report = shrink(model, masks, x[:1])
    if NniModelSpeedup is not None:
        def nni_run() -> nn.Module:
            m = copy.deepcopy(model)
            NniModelSpeedup(m, x[:1], copy.deepcopy(nni_masks)).speedup_model()
            return m
        theirs = nni_run()
        same = {k: v.shape for k, v in theirs.state_dict().items()} == \
            {k: v.shape for k, v in compact.state_dict().items()}
        nni_s = median_time(nni_run, repeats=1, warmup=0)
        rows.append(["NNI 2.10.1 ModelSpeedup", f"{nni_s * 1000:.0f} ms", "1.0x", "reference"])
        rows.append(["compat ModelSpeedup", f"{compat_s * 1000:.0f} ms", f"{nni_s / compat_s:.1f}x",
                     f"shapes equal NNI's: {same}"])
        rows.append(["core shrink()", f"{ours_s * 1000:.0f} ms", f"{nni_s / ours_s:.1f}x", ""])
    else:
        rows.append(["core shrink()", f"{ours_s * 1000:.0f} ms", "n/a", "nni not installed"])
    print(f"## Shrink time, VGG-style net (13 convs, 50% channels)\n\n{environment()}\n")
    print(table(["shrink", "time", "speed vs NNI", "note"], rows))

    with torch.no_grad():
        dense_s = median_time(lambda: model(x), repeats=7)
        compact_s = median_time(lambda: compact(x), repeats=7)
    print("\n## Inference latency, batch 16 x 3x32x32, CPU\n")
    print(table(["model", "params", "FLOPs/sample", "latency", "speed-up"], [
        ["dense", f"{report.params_before}", f"{report.flops_before}", f"{dense_s * 1000:.1f} ms", "1.0x"],
        ["compact (50% channels of every conv)", f"{report.params_after}", f"{report.flops_after}",
         f"{compact_s * 1000:.1f} ms", f"{dense_s / compact_s:.2f}x"],
    ]))
    print(f"\ncompact vs masked output rel. error on the example: {report.output_error:.1e} "
          "(folds behind zero-padded convs are inexact; report.masks with report.params give the compact "
          "model's function exactly)")


if __name__ == "__main__":
    main()
