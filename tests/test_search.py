"""Search: counting, simulated annealing, AMC's DDPG with a FLOPs budget."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

import purecompress as pc
from purecompress.search import (
    DDPG,
    Annealer,
    DDPGConfig,
    amc_layers,
    amc_search,
    anneal_sparsities,
    correct_action,
    count_flops_params,
    rescale_to_budget,
)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 4 * 4, 10))


def test_counting_matches_nni_on_dense_and_channel_masks() -> None:
    nni_counter = pytest.importorskip("nni.compression.pytorch.utils.counter", reason="nni oracle")
    model, x = _net(), torch.randn(2, 1, 8, 8)
    flops, params, _ = nni_counter.count_flops_params(model, x, verbose=False)
    ours = count_flops_params(model, x)
    assert (ours.flops, ours.params) == (flops, params)


def test_counting_kept_channels_and_purity() -> None:
    model, x = _net(), torch.randn(2, 1, 8, 8)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = pc.select(model, pc.from_config_list([{"sparsity": 0.5, "op_names": ["3"]}]))
    masks = pc.prune(pc.params_of(model), plan, pc.l1_norm)
    dense, pruned = count_flops_params(model, x), count_flops_params(model, x, masks)
    assert pruned.layers["3"].flops == dense.layers["3"].flops // 2
    assert pruned.layers["3"].params == (8 * 9 + 1) * 8
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training


def test_rescale_meets_budget() -> None:
    sizes = [100, 1000, 5000]
    s = rescale_to_budget([0.3, 0.1, 0.5], sizes, 0.6)
    assert s == sorted(s)
    assert sum(int(n * x) for n, x in zip(sizes, s)) / sum(sizes) == pytest.approx(0.6, abs=1e-3)
    assert rescale_to_budget([0.0, 0.0], [1, 2], 0.5) is None


def test_annealing_stops_and_keeps_budget_and_order() -> None:
    sizes = {"a": 50, "b": 500, "c": 2000}
    r = anneal_sparsities(lambda s: random.Random(len(s)).random() - s["c"], sizes, 0.8, seed=1)
    # 100 * 0.9^k < 20 after 16 accepted moves: at least 17 evaluations
    assert len(r.history) >= 17
    for alloc, _ in r.history:
        assert alloc["a"] <= alloc["b"] <= alloc["c"] < 1
        pruned = sum(int(sizes[n] * alloc[n]) for n in sizes) / sum(sizes.values())
        assert pruned == pytest.approx(0.8, abs=2e-3)
    assert r.score == max(score for _, score in r.history)


def test_annealer_zero_total_and_deterministic() -> None:
    annealer = Annealer([{"a": 10, "b": 20}], [0.0])
    assert annealer.init(random.Random(0)).candidate == ((0.0, 0.0),)
    a = anneal_sparsities(lambda s: s["a"], {"a": 10, "b": 20}, 0.5, seed=3)
    b = anneal_sparsities(lambda s: s["a"], {"a": 10, "b": 20}, 0.5, seed=3)
    assert a == b


def test_correct_action_clamps_to_budget() -> None:
    model = _net()
    layers, _ = amc_layers(model, torch.randn(1, 1, 8, 8), ["0", "3"], max_sparsity=0.8)
    costs = {la.name: la.cost for la in layers}
    total = sum(costs.values())
    # the last layer must take all the rest of the budget
    a = correct_action(0.0, 1, layers, costs, 0.3)
    assert a * costs["3"] == pytest.approx(min(0.3 * total, 0.8 * costs["3"]))
    assert correct_action(1.0, 0, layers, costs, 0.3) * costs["0"] <= 0.3 * total + 1e-6


def test_amc_meets_flops_budget() -> None:
    model, x = _net(), torch.randn(1, 1, 8, 8)
    names = ["0", "3"]
    layers, dense = amc_layers(model, x, names, max_sparsity=0.9)
    params = pc.params_of(model)

    def masks_for(alloc: dict[str, float]) -> pc.Masks:
        masks: pc.Masks = {}
        for name, s in alloc.items():
            metric = pc.l1_norm(params, [f"{name}.weight"])
            masks.update(pc.allocate_per_layer(metric, s))
        return masks

    def measure(alloc: dict[str, float]) -> dict[str, float]:
        counts = count_flops_params(model, x, masks_for(alloc))
        return {n: float(counts.layers[n].flops) for n in names}

    result = amc_search(layers, lambda a: 1 - a["0"], measure, total_sparsity=0.5, episodes=6,
                        ddpg=DDPGConfig(hidden1=16, hidden2=16, warmup=2, bsize=4))
    assert len(result.history) == 6
    for alloc, _ in result.history:
        after = measure(alloc)
        assert sum(after.values()) <= 0.5 * sum(la.cost for la in layers) + 1e-6


def test_ddpg_learns_without_touching_global_rng() -> None:
    state = torch.random.get_rng_state()
    agent = DDPG(3, DDPGConfig(hidden1=8, hidden2=8, bsize=4, warmup=0), seed=0)
    for i in range(6):
        agent.observe(float(i), torch.zeros(3), 0.5, torch.ones(3), i == 5)
    agent.update_policy()
    assert torch.equal(state, torch.random.get_rng_state())
    assert 0.0 <= agent.select_action(torch.zeros(3), 1) <= 1.0
