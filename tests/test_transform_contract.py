"""Every stateful factory, pruning and quantization alike, satisfies the one Transform contract:
``isinstance(t, pc.Stateful)`` and ``update(params, state, **aux) -> (params, state)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import purecompress as pc
import purecompress.quant as pq

QCFG = [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Linear"]}]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))


FACTORIES: dict[str, Callable[[nn.Module], Any]] = {
    "agp": lambda m: pc.agp(0.5, ["0.weight"], end=2),
    "gradual": lambda m: pc.gradual(lambda t: 0.5, ["0.weight"]),
    "lottery_ticket": lambda m: pc.lottery_ticket(0.5, ["0.weight"], rounds=2),
    "movement": lambda m: pc.movement(["0.weight"], 0.5, warm_up=0, cool_down=2),
    "admm": lambda m: pc.admm(["0.weight"], 0.5),
    "qat": lambda m: pq.qat(m, QCFG),
    "lsq": lambda m: pq.lsq(m, QCFG),
    "dorefa": lambda m: pq.dorefa(m, QCFG),
    "bnn": lambda m: pq.bnn(m, [{"quant_types": ["weight"], "quant_bits": 1, "op_types": ["Linear"]}]),
    "naive": lambda m: pq.naive(m, QCFG),
    "observer": lambda m: pq.observer(m, QCFG),
}

#: Each algorithm's own keyword-only ``aux`` (pruning schedules need none; movement and ADMM read
#: gradients); quantization transforms accept and ignore any.
AUX: dict[str, set[str]] = {"movement": {"grads"}, "admm": {"grads"}}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_every_stateful_factory_satisfies_the_transform_contract(name: str) -> None:
    model = _model()
    t = FACTORIES[name](model)
    assert isinstance(t, pc.Stateful)
    params = pc.params_of(model)
    state = t.init(params)
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    aux = {"grads": grads} if name in AUX or name in ("qat", "lsq", "dorefa", "bnn", "naive", "observer") else {}
    out = t.update(params, state, **aux)
    assert isinstance(out, tuple) and len(out) == 2
    new_params, _ = out
    assert isinstance(new_params, dict) and set(new_params) <= set(params)
    assert all(isinstance(v, torch.Tensor) for v in new_params.values())


@pytest.mark.parametrize("name", ["qat", "lsq", "dorefa", "bnn", "naive", "observer"])
def test_quant_update_returns_the_params_unchanged_and_advances_the_step(name: str) -> None:
    model = _model()
    q = FACTORIES[name](model)
    params = pc.params_of(model)
    state = q.init(params)
    same, new = q.update(params, state, unused=1)
    assert same is params
    assert new.step.item() == state.step.item() + 1
