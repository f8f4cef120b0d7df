"""Quantization transforms against NNI 2.10.1's quantizers (same model, inputs and optimizer)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

import purecompress.quant as pq

nni_quant = pytest.importorskip("nni.algorithms.compression.pytorch.quantization", reason="NNI 2.10.1 is the oracle")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).flatten(1))


QAT_CFG = [
    {"quant_types": ["weight", "input", "output"], "quant_bits": {"weight": 4, "input": 8, "output": 8},
     "op_types": ["Conv2d", "Linear"], "quant_dtype": {"weight": "int"},
     "quant_scheme": {"weight": "per_channel_symmetric"}},
    {"quant_types": ["output"], "quant_bits": 6, "op_types": ["ReLU"]},
]


@pytest.fixture(autouse=True)
def _quiet_nni() -> None:
    logging.getLogger("nni").setLevel(logging.ERROR)


def _run_both(nni_cls: type, factory: object, cfg: list, steps: int = 3, *, lsq: bool = False,
              seed: int = 0, **nni_kwargs: object) -> None:
    torch.manual_seed(seed)
    theirs, ours = Net(), Net()
    ours.load_state_dict(theirs.state_dict())
    xs = [torch.randn(2, 3, 8, 8) for _ in range(steps + 1)]
    opt = torch.optim.SGD(theirs.parameters(), lr=0.05)
    quantizer = nni_cls(theirs, copy.deepcopy(cfg), opt, **nni_kwargs)
    quantizer.compress()
    q = factory(ours, cfg)
    params = {k: v.detach().clone().requires_grad_() for k, v in ours.named_parameters()}
    if lsq:
        params.update({k: v.requires_grad_() for k, v in pq.lsq_scales(q, ours, params, xs[0]).items()})
    # NNI's LsqQuantizer never trains the quantized weights (its wrapper feeds `old_weight.data`,
    # so `old_weight.grad` stays None); we do. Freeze them here to compare the rest.
    trained = [v for k, v in params.items() if not (lsq and k.endswith(".weight"))]
    ours_opt = torch.optim.SGD(trained, lr=0.05)
    state = q.init(params)
    for x in xs[:-1]:
        out_theirs = theirs(x)
        out_ours, state = q(ours, params, state, x)
        torch.testing.assert_close(out_ours, out_theirs, rtol=1e-5, atol=1e-6)
        out_theirs.square().mean().backward()
        out_ours.square().mean().backward()
        opt.step()
        opt.zero_grad()
        ours_opt.step()
        ours_opt.zero_grad()
        params, state = q.update(params, state)
    theirs.eval()
    with torch.no_grad():
        torch.testing.assert_close(q(ours, params, state, xs[-1], training=False)[0], theirs(xs[-1]),
                                   rtol=1e-5, atol=1e-6)


def test_qat_matches_nni() -> None:
    _run_both(nni_quant.QAT_Quantizer, pq.qat, QAT_CFG, dummy_input=torch.randn(2, 3, 8, 8))


def test_qat_start_step_keeps_gradients() -> None:
    """Before ``quant_start_step`` NNI's backward divides by the zero scale buffer and zeroes the
    gradient of every non-zero value (an NNI bug); here the tensor passes through, gradient too."""
    torch.manual_seed(4)
    model = Net()
    cfg = [{"quant_types": ["output"], "quant_bits": 4, "op_types": ["ReLU"], "quant_start_step": 2}]
    q = pq.qat(model, cfg)
    params = {k: v.detach().requires_grad_() for k, v in model.named_parameters()}
    x = torch.randn(2, 3, 8, 8)
    state = q.init(params)
    out, state = q(model, params, state, x)
    torch.testing.assert_close(out, torch.func.functional_call(model, params, (x,)))
    assert torch.autograd.grad(out.sum(), params["conv.weight"])[0].abs().sum() > 0
    first_scale = state.tensors["relu.output"].qparams.scale
    out2, state2 = q(model, params, q.update(params, state)[1], x)
    assert not torch.equal(out2, out)  # quantized from step 2 on
    assert torch.equal(state.tensors["relu.output"].qparams.scale, first_scale)


def test_qat_state_records_nni_buffers() -> None:
    torch.manual_seed(1)
    theirs = Net()
    ours = copy.deepcopy(theirs)
    x = torch.randn(2, 3, 8, 8)
    nni_quant.QAT_Quantizer(theirs, copy.deepcopy(QAT_CFG), torch.optim.SGD(theirs.parameters(), lr=0.1),
                            dummy_input=x).compress()
    theirs(x)
    q = pq.qat(ours, QAT_CFG)
    params = dict(ours.named_parameters())
    _, state = q(ours, params, q.init(params), x)
    conv = theirs.conv.module
    torch.testing.assert_close(state.tensors["conv.weight"].qparams.scale, conv.weight_scale.flatten())
    torch.testing.assert_close(state.tensors["conv.input"].range.max, conv.tracked_max_input.flatten()[0])
    torch.testing.assert_close(state.tensors["relu.output"].range.min, theirs.relu.module.tracked_min_output[0])


def test_dorefa_matches_nni() -> None:
    cfg = [{"quant_types": ["weight"], "quant_bits": 3, "op_types": ["Conv2d", "Linear"]}]
    _run_both(nni_quant.DoReFaQuantizer, pq.dorefa, cfg)


def test_bnn_matches_nni() -> None:
    cfg = [{"quant_types": ["weight"], "quant_bits": 1, "op_types": ["Conv2d", "Linear"]},
           {"quant_types": ["output"], "quant_bits": 1, "op_types": ["ReLU"]}]
    _run_both(nni_quant.BNNQuantizer, pq.bnn, cfg)


def test_lsq_matches_nni() -> None:
    cfg = [{"quant_types": ["weight", "input", "output"], "quant_bits": 8, "op_types": ["Conv2d", "Linear"]}]
    _run_both(nni_quant.LsqQuantizer, pq.lsq, cfg, lsq=True)


def test_naive_matches_nni() -> None:
    torch.manual_seed(2)
    theirs = Net()
    ours = copy.deepcopy(theirs)
    cfg = [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Conv2d", "Linear"]}]
    nni_quant.NaiveQuantizer(theirs, copy.deepcopy(cfg)).compress()
    q = pq.naive(ours, cfg)
    params = dict(ours.named_parameters())
    state = q.init(params)
    for _ in range(2):
        x = torch.randn(2, 3, 8, 8)
        out, state = q(ours, params, state, x)
        torch.testing.assert_close(out, theirs(x))


def test_observer_weights_match_nni() -> None:
    """Weights match NNI with either estimator (activations: NNI's is ``estimator='histogram'``)."""
    torch.manual_seed(3)
    theirs = Net().eval()
    ours = copy.deepcopy(theirs)
    cfg = [{"quant_types": ["weight", "output"], "quant_bits": 8, "op_types": ["Conv2d", "Linear"]}]
    quantizer = nni_quant.ObserverQuantizer(theirs, copy.deepcopy(cfg))
    q = pq.observer(ours, cfg)
    params = dict(ours.named_parameters())
    state = q.init(params)
    with torch.no_grad():
        for _ in range(3):
            x = torch.randn(4, 3, 8, 8)
            theirs(x)
            _, state = q(ours, params, state, x)
        quantizer.compress()
    conv = theirs.conv.module
    torch.testing.assert_close(state.tensors["conv.weight"].qparams.scale, conv.weight_scale[0])
    assert state.tensors["fc.output"].qparams.qmax == 127 and state.tensors["fc.output"].qparams.qmin == 0
    ours_w = pq.fake_quantize(params["conv.weight"], state.tensors["conv.weight"].qparams)
    torch.testing.assert_close(ours_w, conv.weight)


def test_naive_and_observer_reject_other_bits() -> None:
    model = Net()
    for factory in (pq.naive, pq.observer):
        with pytest.raises(pq.ConfigError if hasattr(pq, "ConfigError") else ValueError, match="quant_bits"):
            factory(model, [{"quant_types": ["weight"], "quant_bits": 4, "op_types": ["Conv2d"]}])


@pytest.mark.parametrize("estimator", ["minmax", "histogram"])
def test_observer_evaluated_before_calibration_quantizes_weights_and_says_so_for_activations(estimator: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    q = pq.observer(model, [{"quant_types": ["weight", "input"], "quant_bits": 8, "op_types": ["Linear"]}],
                    estimator=estimator)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randn(5, 4)
    with pytest.warns(pq.UncalibratedWarning, match=r"0\.input saw no calibration batch"):
        out, state = q(model, params, q.init(params), x, training=False)
    w = state.tensors["0.weight"].qparams
    assert w is not None and torch.isfinite(w.scale).all() and torch.isfinite(out).all()
    expected = torch.nn.functional.linear(x, pq.fake_quantize(params["0.weight"], w), params["0.bias"])
    torch.testing.assert_close(out, expected)
    assert "0.input" not in state.tensors
