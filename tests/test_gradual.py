"""Gradual pruning transform and lottery-ticket rewinding."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from torch.func import functional_call

import purecompress as pc
from purecompress.pruning import GradualState, agp, agp_schedule, gradual, lottery_ticket, rewind


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_agp_follows_schedule_in_a_training_loop() -> None:
    model = _model()
    params = {k: v.clone() for k, v in pc.params_of(model).items()}
    plan = pc.select(model, pc.from_config_list([{"sparsity": 0.8, "op_types": ["Linear"]}]))
    prune = agp(0.8, plan, end=40, every=10)
    state = prune.init(params)
    x, y = torch.randn(32, 8), torch.randn(32, 4)
    for step in range(50):
        grads = torch.func.grad(lambda p: ((functional_call(model, p, (x,)) - y) ** 2).mean())(params)
        params = {k: v - 0.05 * grads[k] for k, v in params.items()}
        params, state = prune.update(params, state)
        expected = agp_schedule(step, 0.8, end=40, every=10)
        for name in ("0.weight", "2.weight"):
            n = params[name].numel()
            assert int((params[name] == 0).sum()) >= int(expected * n)
            got = state.masks[name].sparsity() if name in state.masks else 0.0
            assert got == pytest.approx(int(expected * n) / n)
    assert state.sparsity == pytest.approx(0.8)
    assert state.step == 50


def test_never_unprunes_even_if_weights_regrow() -> None:
    prune = gradual(lambda t: [0.5, 0.5, 0.7][t], ["w"])
    w = torch.arange(1.0, 11.0)
    out, state = prune.update({"w": w}, prune.init({}))
    pruned = ~state.masks["w"].keep
    grown = {"w": torch.where(pruned, torch.full_like(w, 100.0), w)}
    out, state2 = prune.update(grown, state)
    assert torch.equal(state2.masks["w"].keep, state.masks["w"].keep)
    out, state3 = prune.update(grown, state2)
    assert not (state3.masks["w"].keep & pruned).any()
    assert state3.masks["w"].sparsity() == pytest.approx(0.7)


def test_does_not_mutate_inputs_and_uses_given_metrics() -> None:
    params = {"w": torch.tensor([3.0, 1.0, 2.0, 4.0])}
    before = params["w"].clone()
    prune = gradual(lambda t: 0.5, ["w"])
    metrics = {"w": pc.Metric(torch.tensor([1.0, 4.0, 3.0, 2.0]), (4,))}
    out, state = prune.update(params, prune.init(params), metrics=metrics)
    assert torch.equal(params["w"], before)
    assert out["w"].tolist() == [0.0, 1.0, 2.0, 0.0]


def test_global_distribution_and_bias() -> None:
    model = _model()
    params = pc.params_of(model)
    plan = pc.select(model, pc.from_config_list([{"sparsity": 0.5, "op_types": ["Linear"]}]))
    prune = gradual(lambda t: 0.5, plan, metric=pc.l1_norm, distribution="global")
    out, state = prune.update(params, prune.init(params))
    assert "0.bias" in state.masks
    kept = sum(int(state.masks[n].kept()) for n in ("0.weight", "2.weight"))
    assert kept == pytest.approx((8 * 16 + 16 * 4) / 2, abs=16)
    with pytest.raises(ValueError, match="distribution"):
        gradual(lambda t: 0.5, ["0.weight"], distribution="nope").update(params, GradualState({}))  # type: ignore


def test_lottery_ticket_rounds_and_rewind() -> None:
    torch.manual_seed(1)
    initial = {"w": torch.randn(100)}
    prune = lottery_ticket(0.8, ["w"], rounds=4)
    params, state = dict(initial), prune.init(initial)
    for r in range(4):
        params = {"w": params["w"] + 0.1 * torch.randn(100)}  # "training"
        _, state = prune.update(params, state)
        params = rewind(initial, state.masks, params)
        assert state.sparsity == pytest.approx(1 - 0.2 ** ((r + 1) / 4))
        kept = state.masks["w"].broadcastable().expand(100)
        assert torch.equal(params["w"][kept], initial["w"][kept])
        assert (params["w"][~kept] == 0).all()


def test_step_override_and_partial_schedule() -> None:
    prune = gradual(functools.partial(agp_schedule, final=0.5, end=2), ["w"])
    _, state = prune.update({"w": torch.randn(10)}, prune.init({}), step=2)
    assert state.step == 3 and state.sparsity == 0.5
