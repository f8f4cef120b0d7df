"""AGP end to end: NNI 2.10.1 AGPPruner vs purecompress AGPPruner vs the functional schedule.

Same model (a 4-layer 256-wide MLP), same data, same iterations (N=5, level pruner, 80%), same
finetuning (a few SGD steps per iteration on fixed batches). One run each, wall time, as ratios;
the final masks of NNI and of purecompress's AGPPruner are checked identical. NNI's task files
are pickled modules that torch >= 2.6 will not load by default: ``torch.load`` is patched while
NNI runs (only there).

Run: ``python benchmarks/bench_agp.py`` (under a minute on 2 cores; needs nni for its column).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import platform
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad
from zoo_import import install_import_hook  # benchmarks/ is sys.path[0]

import purecompress as pc  # noqa: E402
from purecompress.compat.pruning import AGPPruner
from purecompress.pruning import agp_schedule, gradual

install_import_hook()  # NNI -> Lightning -> torchvision on the CPU torch

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
torch.set_num_threads(1)  # the same single thread for every column: less noise on a shared machine

ITERATIONS, SPARSITY, STEPS, WIDTH, DEPTH = 5, 0.8, 2, 256, 4
CONFIG = [{"op_types": ["Linear"], "sparsity": SPARSITY}]
_gen = torch.Generator().manual_seed(0)
BATCHES = [(torch.randn(64, WIDTH, generator=_gen), torch.randint(0, 10, (64,), generator=_gen)) for _ in range(STEPS)]


def environment() -> str:
    """One line naming the machine and versions."""
    return (f"{platform.machine()}, {torch.get_num_threads()} thread(s), python {platform.python_version()}, "
            f"torch {torch.__version__}")


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(row) + " |" for row in rows])


def model() -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(DEPTH - 1):
        layers += [nn.Linear(WIDTH, WIDTH), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(WIDTH, 10))


def finetuner(m: nn.Module) -> None:
    optimizer = torch.optim.SGD(m.parameters(), lr=0.01)
    for x, y in BATCHES:
        optimizer.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        optimizer.step()


@contextlib.contextmanager
def pickled_loads() -> Iterator[None]:
    load = torch.load
    torch.load = functools.partial(load, weights_only=False)  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.load = load  # type: ignore[assignment]


def run_nni() -> dict[str, Tensor] | None:
    try:
        from nni.compression.pytorch.pruning import AGPPruner as NniAGPPruner
    except ImportError:
        return None
    with pickled_loads(), tempfile.TemporaryDirectory() as log_dir:
        pruner = NniAGPPruner(model(), copy.deepcopy(CONFIG), "level", ITERATIONS, log_dir=log_dir, finetuner=finetuner)
        pruner.compress()
        masks = pruner.get_best_result()[2]
    return {k: v["weight"] for k, v in masks.items()}


def run_compat() -> dict[str, Tensor]:
    with tempfile.TemporaryDirectory() as log_dir:
        pruner = AGPPruner(model(), copy.deepcopy(CONFIG), "level", ITERATIONS, log_dir=log_dir, finetuner=finetuner)
        pruner.progress = False
        pruner.compress()
        masks = pruner.get_best_result()[2]
    return {k: v["weight"] for k, v in masks.items()}


def run_functional() -> dict[str, Tensor]:
    net = model()
    params = {k: v.clone() for k, v in pc.params_of(net).items()}
    plan = pc.select(net, pc.from_config_list(CONFIG))
    prune = gradual(functools.partial(agp_schedule, final=SPARSITY, end=ITERATIONS), plan)
    state = prune.init(params)

    def loss(p: pc.Params, x: Tensor, y: Tensor) -> Tensor:
        return nn.functional.cross_entropy(functional_call(net, p, (x,)), y)

    step = grad(loss)
    for _ in range(ITERATIONS + 1):  # iterations 0..N, as NNI's tasks
        params, state = prune.update(params, state)
        for x, y in BATCHES:
            g = step(pc.apply_masks(params, state.masks), x, y)
            params = pc.apply_masks({k: v - 0.01 * g[k] for k, v in params.items()}, state.masks)
    return {k[: -len(".weight")]: m.to_dense() for k, m in state.masks.items() if k.endswith(".weight")}


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    run_compat()  # warm-up: imports and first-call costs, for every column alike
    t_nni, nni_masks = timed(run_nni)
    t_compat, compat_masks = timed(run_compat)
    t_func, func_masks = timed(run_functional)
    base = t_nni if nni_masks is not None else t_compat
    rows = [["purecompress AGPPruner (compat)", f"{t_compat:.2f}", f"{base / t_compat:.2f}x"],
            ["purecompress gradual (functional)", f"{t_func:.2f}", f"{base / t_func:.2f}x"]]
    if nni_masks is not None:
        same = all(torch.equal(nni_masks[k].bool(), compat_masks[k].bool()) for k in nni_masks)  # type: ignore
        rows.insert(0, ["NNI 2.10.1 AGPPruner", f"{t_nni:.2f}", "1.00x"])
        print(f"final masks identical (NNI vs compat): {same}")
    sparsity = {k: round(float(1 - v.float().mean()), 3) for k, v in func_masks.items()}  # type: ignore[union-attr]
    print(f"functional final sparsity per layer: {sorted(set(sparsity.values()))}")
    print(f"AGP, {DEPTH}x{WIDTH} MLP, N={ITERATIONS}, level {SPARSITY:.0%}, {STEPS} SGD steps per iteration "
          f"({environment()})")
    print(table(["run", "wall s", "speed-up vs " + ("NNI" if nni_masks is not None else "compat")], rows))


if __name__ == "__main__":
    main()
