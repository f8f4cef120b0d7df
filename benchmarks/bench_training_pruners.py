"""Data-driven pruning: APoZ and Taylor FO, NNI 2.10.1 vs purecompress, one process, as ratios.

Task: channel masks at 50% for every conv of a VGG-style net from the statistics of the same
``BATCHES`` batches (time = pruner construction + collection + metric + allocation):

- NNI: its pruner with the old API and a trainer over those batches, as NNI's docs and tests
  write it (the trainer trains: activation and gradient statistics are only gathered through
  the training loop); ``training_batches`` is set so every batch counts (APoZ counts samples).
- purecompress.compat: the same script against ``purecompress.compat`` (same training).
- purecompress functional: ``collect_activations`` (forward passes under no_grad) or
  ``collect_taylor`` (one ``torch.func.grad`` per batch, no optimizer), then metric + allocate.
- forward-only: NNI and compat with a trainer that only runs forwards (the least work NNI's API
  allows for APoZ); the functional path does the same work, so this row is the pure overhead.
- dependency-aware: the same with ``mode='dependency_aware'`` (NNI traces with ``torch.jit``,
  purecompress with ``torch.fx``).

Times are median CPU seconds of this process with one torch thread (the machine is shared).

Run: ``python benchmarks/bench_training_pruners.py [--repeats 3]`` (well under 90 s on 2 idle cores).
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models  # noqa: E402
from _timing import environment, table  # noqa: E402

import purecompress as pc  # noqa: E402
from purecompress.compat import pruning as compat  # noqa: E402
from purecompress.pruning import apoz, collect_activations, collect_taylor, taylor_fo

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
try:
    import nni
    import nni.compression.pytorch.pruning as nni_pruning
except ImportError:  # pragma: no cover
    nni = nni_pruning = None

BATCHES, BATCH_SIZE = 4, 16
CONFIG = [{"sparsity": 0.5, "op_types": ["Conv2d"]}]


def vgg() -> nn.Module:
    return _models.vgg([32, 32, "M", 64, 64, "M", 128, 128, "M"])


_g = torch.Generator().manual_seed(0)
DATA = [(torch.randn(BATCH_SIZE, 3, 32, 32, generator=_g), torch.randint(0, 10, (BATCH_SIZE,), generator=_g))
        for _ in range(BATCHES)]


def trainer(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: Callable) -> None:
    model.train()
    for x, y in DATA:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()


def forward_trainer(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: Callable) -> None:
    del optimizer, criterion
    with torch.no_grad():
        for x, _ in DATA:
            model(x)


def run_pruner(cls: type, base: nn.Module, train: Callable, traced: bool, **kwargs: Any) -> dict:
    model = copy.deepcopy(base)
    sgd = nni.trace(torch.optim.SGD) if traced else torch.optim.SGD
    pruner = cls(model, copy.deepcopy(CONFIG), trainer=train, traced_optimizer=sgd(model.parameters(), lr=0.01),
                 criterion=F.cross_entropy, **kwargs)
    return pruner.compress()[1]


def cpu_time(fn: Callable[[], object], *, repeats: int) -> float:
    """Median CPU seconds of this process over ``repeats`` runs after one warm-up.

    CPU time, not wall time: the benchmark machine is shared, and with one torch thread CPU time is
    what a run costs whatever else the machine does.
    """
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def functional_apoz(model: nn.Module, params: pc.Params) -> pc.Masks:
    plan = pc.select(model, pc.from_config_list(CONFIG))
    return pc.allocate(apoz(collect_activations(model, params, DATA, plan), params), plan)


def functional_apoz_dependency(model: nn.Module, params: pc.Params) -> pc.Masks:
    from purecompress.graph import capture, channel_dependency, group_dependency
    from purecompress.pruning import allocate_dependency_aware

    plan = pc.select(model, pc.from_config_list(CONFIG))
    graph = capture(model, torch.rand(1, 3, 32, 32))
    metrics = apoz(collect_activations(model, params, DATA, plan), params)
    return allocate_dependency_aware(metrics, 0.5, channel_sets=channel_dependency(graph),
                                     groups=group_dependency(graph))


def functional_taylor(model: nn.Module, params: pc.Params) -> pc.Masks:
    plan = pc.select(model, pc.from_config_list(CONFIG))
    return pc.allocate(taylor_fo(collect_taylor(model, params, DATA, F.cross_entropy, plan)), plan)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    base = vgg().train()
    params = {k: v.clone() for k, v in pc.params_of(base).items()}

    def measured(fn: Callable[[], object]) -> float:
        return cpu_time(fn, repeats=args.repeats)
    apoz_kw = {"training_batches": BATCHES * BATCH_SIZE}  # NNI counts samples (quirk)
    taylor_kw = {"training_batches": BATCHES}
    rows = []

    def measure(name: str, nni_cls: str, ours_cls: type, functional: Callable, kw: dict) -> None:
        t_func = measured(lambda: functional(base, params))
        t_compat = measured(lambda: run_pruner(ours_cls, base, trainer, False, **kw))
        t_nni = measured(lambda: run_pruner(getattr(nni_pruning, nni_cls), base, trainer, True, **kw)) \
            if nni_pruning else float("nan")
        rows.append([name, f"{t_nni * 1e3:.0f}", f"{t_compat * 1e3:.0f}", f"{t_func * 1e3:.0f}",
                     f"{t_nni / t_compat:.2f}x", f"{t_nni / t_func:.2f}x"])

    measure("APoZ", "ActivationAPoZRankPruner", compat.ActivationAPoZRankPruner, functional_apoz, apoz_kw)
    measure("Taylor FO", "TaylorFOWeightPruner", compat.TaylorFOWeightPruner, functional_taylor, taylor_kw)
    dependency = {**apoz_kw, "mode": "dependency_aware", "dummy_input": torch.rand(1, 3, 32, 32)}
    measure("APoZ dependency-aware", "ActivationAPoZRankPruner", compat.ActivationAPoZRankPruner,
            functional_apoz_dependency, dependency)
    if nni_pruning:
        t_fwd = measured(lambda: run_pruner(nni_pruning.ActivationAPoZRankPruner, base, forward_trainer, True,
                                            **apoz_kw))
        t_compat = measured(lambda: run_pruner(compat.ActivationAPoZRankPruner, base, forward_trainer, False,
                                               **apoz_kw))
        t_func = measured(lambda: functional_apoz(base, params))
        rows.append(["APoZ, forward-only trainer", f"{t_fwd * 1e3:.0f}", f"{t_compat * 1e3:.0f}",
                     f"{t_func * 1e3:.0f}", f"{t_fwd / t_compat:.2f}x", f"{t_fwd / t_func:.2f}x"])
    print(f"# Training-aware pruners, VGG-style net, {BATCHES} batches of {BATCH_SIZE}x3x32x32, 50% channels")
    print(environment())
    print()
    print(table(["pruner", "NNI ms", "compat ms", "functional ms", "NNI/compat", "NNI/functional"], rows))


if __name__ == "__main__":
    main()
