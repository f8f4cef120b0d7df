"""Identical masks on every rank under torch.distributed: 2 CPU processes (gloo), different data shards.

One spawn runs every distributed scenario (process start-up dominates the cost) and saves each
rank's results; the tests compare them with each other and with a single process on the union of
the shards. examples/ddp_taylor.py runs alongside as a subprocess.
"""

from __future__ import annotations

import datetime
import os
import time
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

import purecompress as pc
from purecompress.pruning import (
    ActivationStats,
    TaylorStats,
    all_reduce_stats,
    apoz,
    broadcast_masks,
    collect_activations,
    collect_taylor,
    resolve_sync,
    taylor_fo,
)
from tests.examples_loader import load_example

if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with the gloo backend is not available in this torch build",
                allow_module_level=True)

WORLD = 2
TIMEOUT_S = 120
CONV = ["0", "2"]
WEIGHTS = [f"{n}.weight" for n in CONV]
CONFIG = [{"sparsity": 0.5, "op_types": ["Conv2d"]}]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Conv2d(6, 8, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 3))


def _shard(rank: int) -> list[tuple[Tensor, Tensor]]:
    """Three batches of 4, from a different distribution on each rank."""
    gen = torch.Generator().manual_seed(10 + rank)
    return [(torch.randn(4, 1, 8, 8, generator=gen) * (1 + 2 * rank) + 2 * rank,
             torch.randint(0, 3, (4,), generator=gen)) for _ in range(3)]


def _keep(masks: pc.Masks) -> dict[str, Tensor]:
    return {n: m.keep for n, m in masks.items()}


def _taylor_masks(stats: dict[str, TaylorStats]) -> dict[str, Tensor]:
    return _keep(pc.allocate_per_layer(taylor_fo(stats), 0.5))


def _apoz_masks(stats: dict[str, ActivationStats], params: pc.Params) -> dict[str, Tensor]:
    return _keep(pc.allocate_per_layer(apoz(stats, params), 0.5))


def _flat_stats(taylor: dict[str, TaylorStats], acts: dict[str, ActivationStats]) -> dict[str, Any]:
    return {"taylor": {n: s.score for n, s in taylor.items()}, "steps": {n: s.steps for n, s in taylor.items()},
            "zeros": {n: s.zeros for n, s in acts.items()}, "total": {n: s.total for n, s in acts.items()},
            "samples": {n: s.samples for n, s in acts.items()}, "batches": {n: s.batches for n, s in acts.items()}}


def _functional(rank: int, sync: bool) -> dict[str, Any]:
    model = _model()
    params = pc.params_of(model)
    taylor = collect_taylor(model, params, _shard(rank), nn.functional.cross_entropy, WEIGHTS, sync=sync)
    acts = collect_activations(model, params, _shard(rank), CONV, sync=sync)
    return {**_flat_stats(taylor, acts), "taylor_masks": _taylor_masks(taylor), "apoz_masks": _apoz_masks(acts, params)}


def _compat(rank: int, name: str, sync: bool, *, wrap_first: bool = False) -> dict[str, Tensor]:
    """A compat pruner on this rank's shard; DDP wraps the model in the training function, or before pruning."""
    from purecompress.compat.evaluator import TorchEvaluator
    from purecompress.compat.pruning import ActivationAPoZRankPruner, MovementPruner, TaylorFOWeightPruner

    model, data = _model(), _shard(rank)
    if wrap_first:
        model = DistributedDataParallel(model)

    def training(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: Any, lr_schedulers: Any = None,
                 max_steps: int | None = None, max_epochs: int | None = None) -> None:
        ddp = model if wrap_first else DistributedDataParallel(model)
        for x, y in data:
            optimizer.zero_grad()
            criterion(ddp(x), y).backward()
            optimizer.step()

    evaluator = TorchEvaluator(training, torch.optim.SGD(model.parameters(), lr=0.05), nn.functional.cross_entropy)
    if name == "taylor":
        pruner: Any = TaylorFOWeightPruner(model, CONFIG, evaluator, training_steps=3)
    elif name == "apoz":
        pruner = ActivationAPoZRankPruner(model, CONFIG, evaluator, training_steps=12)  # samples (NNI)
    else:
        pruner = MovementPruner(model, CONFIG, evaluator, warm_up_step=1, cool_down_beginning_step=2,
                                training_epochs=1)
    if not sync:
        pruner.data_collector.sync = False
    _, masks = pruner.compress()
    return {n: m["weight"] for n, m in masks.items()}


def _mismatch_raises(rank: int) -> bool:
    stats = {"a": torch.ones(3)} if rank == 0 else {"b": torch.ones(4)}
    try:
        all_reduce_stats(stats)
    except ValueError:
        return True
    return False


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        local = _functional(rank, sync=False)
        params = pc.params_of(_model())
        raw = {n: pc.Mask(k, tuple(params[n].shape)) for n, k in local["taylor_masks"].items()}
        result = {
            "synced": _functional(rank, sync=True),
            "local": local,
            "broadcast": _keep(broadcast_masks(raw, src=1)),
            "compat": {name: _compat(rank, name, sync=True) for name in ("taylor", "apoz", "movement")},
            "compat_wrapped": {name: _compat(rank, name, sync=True, wrap_first=True) for name in ("taylor", "apoz")},
            "compat_local": {name: _compat(rank, name, sync=False) for name in ("taylor", "apoz")},
            "mismatch_raises": _mismatch_raises(rank),
            "example": load_example("ddp_taylor").run(rank, WORLD, 3, 0.5),
        }
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _start_method() -> str:
    # fork skips re-importing torch in every rank (seconds each); each rank runs one thread, as
    # DataLoader workers do. spawn where fork does not exist.
    return "fork" if "fork" in mp.get_all_start_methods() else "spawn"


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Every rank's results (saved by the ranks, read back here)."""
    tmp = tmp_path_factory.mktemp("ddp")
    context = mp.start_processes(_worker, args=(str(tmp / "store"), str(tmp)), nprocs=WORLD, join=False,
                                 start_method=_start_method())
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"the {WORLD} ranks did not finish within {TIMEOUT_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _same_masks(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _single_process() -> dict[str, Any]:
    """What one process computes on the union of the ranks' shards."""
    model = _model()
    params = pc.params_of(model)
    union = [batch for rank in range(WORLD) for batch in _shard(rank)]
    taylor = collect_taylor(model, params, union, nn.functional.cross_entropy, WEIGHTS, sync=False)
    acts = collect_activations(model, params, union, CONV, sync=False)
    return {**_flat_stats(taylor, acts), "taylor_masks": _taylor_masks(taylor), "apoz_masks": _apoz_masks(acts, params)}


def test_functional_sync_equals_single_process_on_the_union(ranks: list[dict[str, Any]]) -> None:
    results = ranks
    one = _single_process()
    for result in results:
        synced = result["synced"]
        for kind in ("taylor_masks", "apoz_masks"):
            assert _same_masks(synced[kind], one[kind]), kind
        for field in ("taylor", "total"):
            for name in one[field]:
                torch.testing.assert_close(synced[field][name], one[field][name], rtol=1e-5, atol=1e-6)
        for field in ("zeros", "steps", "samples", "batches"):
            assert synced[field] == one[field] if field != "zeros" else \
                all(torch.equal(synced[field][n], one[field][n]) for n in one[field])
    assert results[0]["synced"]["steps"] == {n: 6 for n in WEIGHTS}
    assert results[0]["synced"]["samples"] == {n: 24 for n in CONV}


def test_compat_pruners_under_ddp_give_identical_masks(ranks: list[dict[str, Any]]) -> None:
    results = ranks
    for way, names in (("compat", ("taylor", "apoz", "movement")), ("compat_wrapped", ("taylor", "apoz"))):
        for name in names:
            masks = [r[way][name] for r in results]
            assert all(_same_masks(m, masks[0]) for m in masks), (way, name)
            assert all(0 < float(m.mean()) < 1 for m in masks[0].values()), (way, name)  # something was pruned
    assert set(results[0]["compat_wrapped"]["taylor"]) == {"module.0", "module.2"}


def test_without_sync_the_ranks_disagree(ranks: list[dict[str, Any]]) -> None:
    """The scenario is sensitive: rank-local statistics give different masks."""
    results = ranks
    for kind in ("taylor_masks", "apoz_masks"):
        assert not _same_masks(results[0]["local"][kind], results[1]["local"][kind]), kind
    for name in ("taylor", "apoz"):
        assert not _same_masks(results[0]["compat_local"][name], results[1]["compat_local"][name]), name


def test_broadcast_masks_and_mismatch(ranks: list[dict[str, Any]]) -> None:
    results = ranks
    for result in results:
        assert _same_masks(result["broadcast"], results[1]["local"]["taylor_masks"])
        assert result["mismatch_raises"]  # a clear error on every rank, not a hang


def test_ddp_example(ranks: list[dict[str, Any]]) -> None:
    """examples/ddp_taylor.py's ``run`` on the ranks (its ``main`` only spawns them, which costs seconds)."""
    lines = ranks[0]["example"]
    for way in ("nni_style", "functional"):
        assert f"{way}: masks identical on all 2 ranks: True" in lines, lines
    assert ranks[1]["example"] == []


def test_not_distributed_is_a_no_op() -> None:
    stats = {"w": TaylorStats(torch.ones(2), 1)}
    assert all_reduce_stats(stats) is stats
    assert resolve_sync("auto") == (False, None)
    with pytest.raises(RuntimeError, match="init_process_group"):
        resolve_sync(True)
    with pytest.raises(ValueError, match="sync must be"):
        resolve_sync("yes")  # type: ignore[arg-type]
