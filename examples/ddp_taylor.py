"""Taylor channel pruning under DDP: 2 CPU processes (gloo), each with its own data, one set of masks.

Each rank trains a tiny CNN on its own shard of synthetic data inside
``DistributedDataParallel``. Two ways to get Taylor masks, both identical on every rank:

- NNI style: ``TaylorFOWeightPruner`` with a ``TorchEvaluator`` whose training function wraps
  the model in DDP; the pruner sums its ``(w * grad)**2`` statistics over the ranks itself.
- functional: ``collect_taylor`` (``sync='auto'``: summed over the ranks) -> ``taylor_fo`` ->
  ``allocate``, equal to one process on the union of the shards.

Rank 0 gathers every rank's masks and prints whether they agree.

Run: ``python examples/ddp_taylor.py [--world 2] [--steps 4] [--sparsity 0.5]`` (a few seconds).
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

import purecompress as pc
from purecompress.compat.evaluator import TorchEvaluator
from purecompress.compat.pruning import TaylorFOWeightPruner
from purecompress.pruning import collect_taylor, taylor_fo

CONFIG = [{"sparsity": 0.5, "op_types": ["Conv2d"]}]


def model_fn() -> nn.Module:
    """A tiny CNN on ``[N, 1, 8, 8]`` images, 3 classes (same initial weights on every rank)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Conv2d(6, 8, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 3))


def shard(rank: int, batches: int, batch_size: int = 4) -> list[tuple[Tensor, Tensor]]:
    """This rank's own batches (different on every rank)."""
    gen = torch.Generator().manual_seed(100 + rank)
    return [(torch.randn(batch_size, 1, 8, 8, generator=gen) * (1 + rank),
             torch.randint(0, 3, (batch_size,), generator=gen)) for _ in range(batches)]


def kept(masks: dict[str, dict[str, Tensor]]) -> dict[str, list[int]]:
    """Kept output channels of each layer, from NNI-format masks."""
    return {name: m["weight"].flatten(1).amax(1).nonzero().flatten().tolist() for name, m in masks.items()}


def nni_style(rank: int, steps: int, sparsity: float) -> dict[str, list[int]]:
    """TaylorFOWeightPruner with a DDP training loop."""
    model = model_fn()
    data = shard(rank, steps)

    def training(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: object, lr_schedulers: object = None,
                 max_steps: int | None = None, max_epochs: int | None = None) -> None:
        ddp = DistributedDataParallel(model)
        for x, y in data[:max_steps]:
            optimizer.zero_grad()
            criterion(ddp(x), y).backward()  # type: ignore[operator]
            optimizer.step()

    evaluator = TorchEvaluator(training, torch.optim.SGD(model.parameters(), lr=0.01), nn.functional.cross_entropy)
    pruner = TaylorFOWeightPruner(model, [{**CONFIG[0], "sparsity": sparsity}], evaluator, training_steps=steps)
    _, masks = pruner.compress()
    return kept(masks)


def functional(rank: int, steps: int, sparsity: float) -> dict[str, list[int]]:
    """collect_taylor summed over the ranks, then taylor_fo and allocate."""
    model = model_fn()
    params = pc.params_of(model)
    plan = pc.select(model, pc.from_config_list([{**CONFIG[0], "sparsity": sparsity}]))
    stats = collect_taylor(model, params, shard(rank, steps), nn.functional.cross_entropy, plan)
    masks = pc.allocate(taylor_fo(stats), plan)
    return {name.removesuffix(".weight"): m.keep.flatten().nonzero().flatten().tolist()
            for name, m in masks.items() if name.endswith(".weight")}


def run(rank: int, world: int, steps: int, sparsity: float) -> list[str]:
    """Both ways on this rank; rank 0 gathers every rank's masks and returns what to print."""
    mine = {"nni_style": nni_style(rank, steps, sparsity), "functional": functional(rank, steps, sparsity)}
    everyone: list[object] = [None] * world
    dist.all_gather_object(everyone, mine)
    if rank != 0:
        return []
    lines = []
    for way in mine:
        lines.append(f"{way}: kept channels {mine[way]}")
        lines.append(f"{way}: masks identical on all {world} ranks: {all(r[way] == mine[way] for r in everyone)}")
    return lines


def worker(rank: int, world: int, init_file: str, steps: int, sparsity: float) -> None:
    """One process: join the group (gloo, a file store), :func:`run`, print."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        for line in run(rank, world, steps, sparsity):
            print(line)
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--sparsity", type=float, default=0.5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "store")
        mp.spawn(worker, args=(args.world, init_file, args.steps, args.sparsity), nprocs=args.world)


if __name__ == "__main__":
    main()
