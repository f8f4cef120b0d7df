"""The quantization transform: purity, hooks, state, eval before training, grad and compile."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import purecompress.quant as pq
from purecompress._pytree import trees_equal

CFG = [{"quant_types": ["weight", "input", "output"], "quant_bits": 8, "op_types": ["Linear"]},
       {"quant_types": ["weight"], "quant_bits": 4, "quant_dtype": "int", "op_names": ["2"]},
       {"quant_types": ["output"], "quant_bits": 8, "op_types": ["ReLU"],
        "quant_scheme": "per_channel_affine"}]


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}


def test_pure_call() -> None:
    model = _model()
    sd = copy.deepcopy(model.state_dict())
    q = pq.qat(model, CFG)
    params = _params(model)
    snap = {k: v.detach().clone() for k, v in params.items()}
    state = q.init(params)
    state_copy = copy.deepcopy(state)
    x = torch.randn(5, 6)
    x_copy = x.clone()
    out, new_state = q(model, params, state, x)
    assert trees_equal(state, state_copy) and torch.equal(x, x_copy)
    assert all(torch.equal(snap[k], params[k]) for k in params)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in sd.items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert set(new_state.tensors) == {"0.weight", "0.input", "0.output", "1.output", "2.weight"}
    assert q.update({}, new_state)[1].step.item() == 2 and new_state.step.item() == 1


def test_mixed_precision_per_layer() -> None:
    model = _model()
    q = pq.qat(model, CFG)
    params = _params(model)
    _, state = q(model, params, q.init(params), torch.randn(5, 6))
    assert (state.tensors["2.weight"].qparams.qmin, state.tensors["2.weight"].qparams.qmax) == (-7, 7)
    assert state.tensors["0.weight"].qparams.qmax == 255
    assert state.tensors["1.output"].range.min.shape == (8,)  # per channel along dim 1


def test_hooks_removed_on_error() -> None:
    model = _model()
    q = pq.qat(model, CFG)
    params = _params(model)
    with pytest.raises(RuntimeError):
        q(model, params, q.init(params), torch.randn(5, 7))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_eval_before_training_is_sane() -> None:
    """NNI evaluates with scale 0 before the first training step (weights become 0)."""
    model = _model()
    q = pq.qat(model, [CFG[0]])
    params = _params(model)
    x = torch.randn(5, 6)
    out, _ = q(model, params, q.init(params), x, training=False)
    torch.testing.assert_close(out, model(x), atol=0.05, rtol=0.05)


def test_dead_channels_no_nan() -> None:
    model = _model()
    with torch.no_grad():
        model[0].weight[:4] = 0
        model[0].bias[:4] = -1  # channels 0..3 are always 0 after ReLU
    q = pq.qat(model, [CFG[2]])
    params = _params(model)
    out, state = q(model, params, q.init(params), torch.randn(5, 6))
    assert torch.isfinite(out).all() and torch.isfinite(state.tensors["1.output"].qparams.scale).all()


def test_func_grad_through_call() -> None:
    model = _model()
    q = pq.qat(model, CFG)
    params = {k: v.detach() for k, v in model.named_parameters()}
    state = q.init(params)
    x = torch.randn(5, 6)

    def loss(p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, pq.QuantState]:
        out, new_state = q(model, p, state, x)
        return out.square().mean(), new_state

    grads, new_state = torch.func.grad(loss, has_aux=True)(params)
    ref = _params(model)
    out, _ = q(model, ref, state, x)
    out.square().mean().backward()
    for k in params:
        torch.testing.assert_close(grads[k], ref[k].grad)
    assert isinstance(new_state, pq.QuantState)


def test_compiled_training_step_matches_eager() -> None:
    model = _model()
    q = pq.qat(model, CFG)
    x = torch.randn(5, 6)

    def step(p: dict[str, torch.Tensor], state: pq.QuantState) -> tuple[torch.Tensor, pq.QuantState]:
        out, state = q(model, p, state, x)
        return out.square().mean(), state

    compiled = torch.compile(step, backend="aot_eager")
    pe, pc = _params(model), _params(model)
    se = sc = q.init(pe)
    for _ in range(2):
        le, se = step(pe, se)
        lc, sc = compiled(pc, sc)
        le.backward()
        lc.backward()
        (_, se), (_, sc) = q.update(pe, se), q.update(pc, sc)
    torch.testing.assert_close(lc, le)
    torch.testing.assert_close(pc["0.weight"].grad, pe["0.weight"].grad)
    torch.testing.assert_close(sc.tensors["0.input"].range.max, se.tensors["0.input"].range.max)


def test_weight_quantization_needs_a_weight() -> None:
    with pytest.raises(ValueError, match="no weight"):
        pq.qat(_model(), [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["ReLU"]}])


def test_qat_runs_on_meta_tensors() -> None:
    """Shape-only runs (meta device) work: nothing in the eager call reads a tensor's value on the host."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).to("meta")
    params = dict(model.named_parameters())
    q = pq.qat(model, [{"quant_types": ["weight", "input", "output"], "quant_bits": 8, "op_types": ["Linear"]}])
    out, state = q(model, params, q.init(params), torch.randn(2, 4, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 3)
    assert sorted(state.tensors) == ["0.input", "0.output", "0.weight"]
    assert state.tensors["0.weight"].qparams.scale.device.type == "meta"
