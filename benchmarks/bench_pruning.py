"""One-shot pruning: NNI 2.10.1 vs purecompress, side by side in one process, as ratios.

1. compress time (metric + allocation + masks) for Level, L1 and FPGM on a 20-layer 1024-wide MLP
   and a VGG-style conv net: NNI's pruner, purecompress.compat's pruner, the functional core;
   masks are checked identical.
2. forward and forward+backward time of the masked model vs the plain model: the functional path
   (functional_call + apply_masks), the compat wrapper, and NNI's wrapper.

Run: ``python benchmarks/bench_pruning.py`` (about two minutes on 2 cores; needs nni for the NNI
columns).
"""

from __future__ import annotations

import copy
import logging
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models  # noqa: E402
from _timing import environment, median_time, paired_ratio, table  # noqa: E402

import purecompress as pc  # noqa: E402

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

try:
    import nni.compression.pytorch.pruning as nni_pruning
except ImportError:  # pragma: no cover
    nni_pruning = None
try:
    import purecompress.compat as compat

    if not hasattr(compat, "LevelPruner"):  # compat not built yet
        compat = None
except ImportError:  # pragma: no cover
    compat = None


def mlp(depth: int = 20, width: int = 1024) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def vgg() -> nn.Module:
    return _models.vgg()


ALGOS: dict[str, tuple[str, Callable[..., pc.Metrics], str]] = {
    "Level": ("LevelPruner", pc.level, "Linear Conv2d"),
    "L1": ("L1NormPruner", pc.l1_norm, "Linear Conv2d"),
    "FPGM": ("FPGMPruner", pc.fpgm, "Linear Conv2d"),
}


def config(types: str) -> list[dict[str, object]]:
    return [{"sparsity": 0.5, "op_types": types.split()}]


def nni_compress(cls_name: str, model: nn.Module, types: str) -> dict[str, dict[str, torch.Tensor]]:
    pruner = getattr(nni_pruning, cls_name)(model, config(types))
    _, masks = pruner.compress()
    pruner._unwrap_model()
    return masks


def compat_compress(cls_name: str, model: nn.Module, types: str) -> dict[str, dict[str, torch.Tensor]]:
    pruner = getattr(compat, cls_name)(model, config(types))
    _, masks = pruner.compress()
    pruner._unwrap_model()
    return masks


def fresh_time(model: nn.Module, compress: Callable[[nn.Module], object], repeats: int = 3) -> float:
    """Median time of ``compress`` on fresh copies of ``model`` (copying is not timed)."""
    copies = [copy.deepcopy(model) for _ in range(repeats)]
    times = []
    for m in copies:
        start = time.perf_counter()
        compress(m)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def compare_masks(nni_masks: dict[str, dict[str, torch.Tensor]], ours: pc.Masks, metrics: pc.Metrics) -> str:
    """'identical', 'ties only (n)' when every differing entry has the same score as one it
    swapped with (NNI's topk breaks ties arbitrarily, ours by index), else 'DIFFERENT'."""
    converted = pc.masks_to_nni(ours)
    swapped = 0
    for module, targets in nni_masks.items():
        for target, mask in targets.items():
            other = converted.get(module, {}).get(target)
            if mask is None or torch.equal(other, mask):
                continue
            metric = metrics.get(f"{module}.{target}")
            if metric is None or other.sum() != mask.sum():
                return "DIFFERENT"
            score = pc.pruning.expand_blocks(metric.score, metric.shape).expand(metric.shape)
            gained, lost = score[(other > mask)], score[(other < mask)]
            if not (torch.equal(gained.unique(), lost.unique()) and gained.unique().numel() == 1):
                return "DIFFERENT"
            swapped += int(gained.numel())
    return "identical" if swapped == 0 else f"ties only ({swapped} swapped)"


def compress_rows() -> list[list[str]]:
    rows = []
    for model_name, build in (("MLP 20x1024", mlp), ("VGG-style", vgg)):
        torch.manual_seed(0)
        model = build()
        params = pc.params_of(model)
        for algo, (cls_name, metric, types) in ALGOS.items():
            plan = pc.select(model, pc.from_config_list(config(types)))
            ours = pc.prune(params, plan, metric)
            scores = metric(params, plan)
            t_func = median_time(lambda: pc.prune(params, plan, metric), repeats=5)
            row = [model_name, algo, f"{t_func * 1e3:.1f}"]
            if compat is not None:
                t_compat = fresh_time(model, lambda m: compat_compress(cls_name, m, types))
                row.append(f"{t_compat * 1e3:.1f}")
            else:
                t_compat = None
                row.append("n/a")
            if nni_pruning is not None:
                masks = nni_compress(cls_name, copy.deepcopy(model), types)
                t_nni = fresh_time(model, lambda m: nni_compress(cls_name, m, types))
                row += [f"{t_nni * 1e3:.1f}", f"{t_nni / t_func:.1f}x",
                        f"{t_nni / t_compat:.1f}x" if t_compat else "n/a", compare_masks(masks, ours, scores)]
            else:
                row += ["n/a"] * 4
            rows.append(row)
            print("  ", " | ".join(row), flush=True)
    return rows


def forward_rows() -> list[list[str]]:
    torch.manual_seed(0)
    model = mlp()
    x = torch.randn(256, 1024)
    params = pc.params_of(model)
    trainable = {k: v.clone().requires_grad_() for k, v in params.items()}
    rows = []
    for algo in ("L1", "Level"):
        cls_name, metric, types = ALGOS[algo]
        plan = pc.select(model, pc.from_config_list(config(types)))
        masks = pc.prune(params, plan, metric)

        def plain_fwd() -> None:
            with torch.no_grad():
                functional_call(model, params, (x,))

        def masked_fwd() -> None:
            with torch.no_grad():
                functional_call(model, pc.apply_masks(params, masks), (x,))

        def plain_fb() -> None:
            functional_call(model, trainable, (x,)).sum().backward()

        def masked_fb() -> None:
            functional_call(model, pc.apply_masks(trainable, masks), (x,)).sum().backward()

        rows.append([algo, "functional", f"{paired_ratio(masked_fwd, plain_fwd):.3f}x",
                     f"{paired_ratio(masked_fb, plain_fb):.3f}x"])
        for label, module in (("compat wrapper", compat), ("NNI wrapper", nni_pruning)):
            if module is None:
                continue
            wrapped = copy.deepcopy(model)
            pruner = getattr(module, cls_name)(wrapped, config(types))
            pruner.compress()

            def w_fwd(w: nn.Module = wrapped) -> None:
                with torch.no_grad():
                    w(x)

            def w_fb(w: nn.Module = wrapped) -> None:
                w(x).sum().backward()

            def p_fwd() -> None:
                with torch.no_grad():
                    model(x)

            def p_fb() -> None:
                model(x).sum().backward()

            rows.append([algo, label, f"{paired_ratio(w_fwd, p_fwd):.3f}x", f"{paired_ratio(w_fb, p_fb):.3f}x"])
        for row in rows[-3:]:
            print("  ", " | ".join(row), flush=True)
    return rows


def main() -> None:
    print(environment())
    print("compress time, ms (median); speed-up = NNI time / our time")
    crow = compress_rows()
    print()
    print(table(["model", "pruner", "functional ms", "compat ms", "NNI ms", "NNI/functional",
                 "NNI/compat", "masks vs NNI"], crow))
    print()
    print("masked vs plain MLP 20x1024, batch 256 (median of paired ratios; 1.00x = no overhead)")
    frow = forward_rows()
    print()
    print(table(["masks", "path", "forward", "forward+backward"], frow))


if __name__ == "__main__":
    main()
