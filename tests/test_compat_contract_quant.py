"""Compat's quantizers and the core's transforms compute the same numbers (no NNI needed).

For every (compat quantizer, core transform) pair: the same model, data and optimizer, N training
steps and an eval forward; the outputs, the trained weights and every quantization parameter
(scale, zero point, tracked range) are equal bit for bit.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import purecompress.compat.quantization as P
import purecompress.quant as pq
from tests.test_layout import _TENSOR_MATH, MODULES


class Net(nn.Module):
    """conv -> relu -> linear -> relu -> linear on ``[N, 1, 8, 8]``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.relu1 = nn.ReLU()
        self.fc1 = nn.Linear(4 * 6 * 6, 16)
        self.relu2 = nn.ReLU()
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.relu2(self.fc1(self.relu1(self.conv1(x)).flatten(1))))


W8 = {"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Conv2d", "Linear"]}
PAIRS: dict[str, tuple[str, Callable[..., pq.QuantTransform], list[dict[str, Any]]]] = {
    "qat": ("QAT_Quantizer", pq.qat, [
        {"quant_types": ["weight", "input"], "quant_bits": 8, "op_types": ["Conv2d", "Linear"]},
        {"quant_types": ["output"], "quant_bits": 8, "op_types": ["ReLU"]}]),
    "qat-per-channel": ("QAT_Quantizer", pq.qat, [
        {"quant_types": ["weight", "output"], "quant_bits": {"weight": 4, "output": 8},
         "op_types": ["Conv2d", "Linear"],
         "quant_scheme": {"weight": "per_channel_symmetric", "output": "per_tensor_affine"}}]),
    "qat-start-step": ("QAT_Quantizer", pq.qat, [
        {"quant_types": ["weight", "input"], "quant_bits": 8, "op_types": ["Linear"], "quant_start_step": 2}]),
    "lsq": ("LsqQuantizer", pq.lsq, [
        {"quant_types": ["weight", "input", "output"], "quant_bits": 8, "op_types": ["Conv2d", "Linear"]}]),
    "naive": ("NaiveQuantizer", pq.naive, [W8]),
    "dorefa": ("DoReFaQuantizer", pq.dorefa, [dict(W8, quant_bits=3)]),
    "bnn": ("BNNQuantizer", pq.bnn, [{"quant_types": ["weight", "output"], "quant_bits": 1, "op_types": ["Conv2d"]}]),
}
STEPS = 4


def _data() -> list[Tensor]:
    gen = torch.Generator().manual_seed(3)
    return [torch.randn(4, 1, 8, 8, generator=gen) for _ in range(STEPS)]


def _net() -> Net:
    torch.manual_seed(0)
    return Net()


def _compat(name: str, cfg: list[dict[str, Any]], xs: list[Tensor]) -> tuple[list[Tensor], nn.Module, Any]:
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    quantizer = getattr(P, name)(model, copy.deepcopy(cfg), opt)
    outs = []
    for x in xs:
        opt.zero_grad()
        y = model(x)
        y.pow(2).mean().backward()
        opt.step()
        outs.append(y.detach())
    model.eval()
    with torch.no_grad():
        outs.append(model(xs[0]))
    return outs, model, quantizer


def _core(factory: Callable[..., pq.QuantTransform], cfg: list[dict[str, Any]],
          xs: list[Tensor]) -> tuple[list[Tensor], dict[str, Tensor], pq.QuantState]:
    model = _net()
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    q = factory(model, copy.deepcopy(cfg))
    if factory is pq.lsq:
        params |= {k: v.requires_grad_() for k, v in pq.lsq_scales(q, model, params, xs[0]).items()}
    opt = torch.optim.SGD(params.values(), lr=0.05, momentum=0.9)
    state, outs = q.init(params), []
    for x in xs:
        opt.zero_grad()
        y, state = q(model, params, state, x)
        y.pow(2).mean().backward()
        opt.step()
        params, state = q.update(params, state)
        outs.append(y.detach())
    with torch.no_grad():  # Naive (like NNI's) keeps its running scale in eval too
        y, state = q(model, params, state, xs[0], training=False)
    return [*outs, y], params, state


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_compat_equals_core_bit_for_bit_over_training_steps_and_eval(pair: str) -> None:
    name, factory, cfg = PAIRS[pair]
    xs = _data()
    outs_p, model, quantizer = _compat(name, cfg, xs)
    outs_c, params, state = _core(factory, cfg, xs)
    for step, (a, b) in enumerate(zip(outs_p, outs_c)):
        assert torch.equal(a, b), f"output {step}"
    for key, value in params.items():  # trained weights (compat keeps them in old_weight)
        module, _, leaf = key.rpartition(".")
        owner = model.get_submodule(module)
        owner = getattr(owner, "module", owner)
        if leaf.endswith("_scale"):  # LSQ's learnable steps
            assert torch.equal(getattr(owner, leaf).detach().reshape(()), value.detach().reshape(())), key
        else:
            ours = owner.old_weight if leaf == "weight" and hasattr(owner, "old_weight") else getattr(owner, leaf)
            assert torch.equal(ours.detach(), value.detach()), key
    for key, tensor in state.tensors.items():  # scales, zero points, tracked ranges
        module, _, kind = key.rpartition(".")
        owner = model.get_submodule(module).module
        if name == "NaiveQuantizer":
            assert torch.equal(quantizer.layer_scale[module], tensor.qparams.scale), key
        elif name == "QAT_Quantizer":
            qp = tensor.qparams
            for attr, value in ((f"{kind}_scale", qp.scale), (f"{kind}_zero_point", qp.zero_point)):
                assert torch.equal(getattr(owner, attr).flatten(), value.flatten()), (key, attr)
            if tensor.range is not None:
                assert torch.equal(getattr(owner, f"tracked_min_{kind}").flatten(), tensor.range.min.flatten()), key
                assert torch.equal(getattr(owner, f"tracked_max_{kind}").flatten(), tensor.range.max.flatten()), key


def test_compat_quantization_has_no_tensor_math() -> None:
    # The quantization half of tests/test_layout.py::test_compat_has_no_tensor_math.
    bad = [f"{name}:{n}: {line.strip()}" for name, path in MODULES.items()
           if name.startswith("purecompress.compat.quantization")
           for n, line in enumerate(path.read_text().splitlines(), 1)
           if _TENSOR_MATH.search(line.split("#", 1)[0]) and "noqa: compat-math" not in line]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("kinds", [["weight"], ["weight", "input", "output"]])
def test_observer_compat_equals_core_histogram_estimator(kinds: list[str]) -> None:
    cfg = [{"quant_types": kinds, "quant_bits": 8, "op_types": ["Conv2d", "Linear"]}]
    xs = _data()
    model = _net().eval()
    quantizer = P.ObserverQuantizer(model, copy.deepcopy(cfg))
    core_model = _net().eval()
    q = pq.observer(core_model, copy.deepcopy(cfg), estimator="histogram")
    params = dict(core_model.named_parameters())
    state = q.init(params)
    with torch.no_grad():
        for x in xs:
            model(x)
            _, state = q(core_model, params, state, x)  # calibration: observe only
        quantizer.compress()
        y, state = q(core_model, params, state, xs[0], training=False)
        assert torch.equal(model(xs[0]), y)
    for key, tensor in state.tensors.items():
        module, _, kind = key.rpartition(".")
        owner = model.get_submodule(module).module
        assert torch.equal(getattr(owner, f"{kind}_scale").reshape(()), tensor.qparams.scale), key
        assert torch.equal(getattr(owner, f"{kind}_zero_point").reshape(()), tensor.qparams.zero_point), key


def test_observer_estimators_differ_only_for_activations_and_unknown_ones_are_rejected() -> None:
    cfg = [{"quant_types": ["weight", "output"], "quant_bits": 8, "op_types": ["Linear"]}]
    states = []
    for estimator in ("minmax", "histogram"):
        model = _net().eval()
        q = pq.observer(model, cfg, estimator=estimator)
        params = dict(model.named_parameters())
        state = q.init(params)
        with torch.no_grad():
            for x in _data():
                _, state = q(model, params, state, x)
            _, state = q(model, params, state, x, training=False)
        states.append(state)
    minmax, histogram = states
    assert torch.equal(minmax.tensors["fc1.weight"].qparams.scale, histogram.tensors["fc1.weight"].qparams.scale)
    assert not torch.equal(minmax.tensors["fc1.output"].qparams.scale, histogram.tensors["fc1.output"].qparams.scale)
    with pytest.raises(ValueError, match="estimator"):
        pq.observer(_net(), cfg, estimator="kl")
