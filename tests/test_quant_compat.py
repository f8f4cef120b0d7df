"""purecompress.compat quantizers without NNI: wrapper mechanics, steps, eval, and the NNI bugs fixed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from purecompress.compat.quantization import (
    BNNQuantizer,
    DoReFaQuantizer,
    LsqQuantizer,
    NaiveQuantizer,
    ObserverQuantizer,
    QAT_Quantizer,
    QuantGrad,
    Quantizer,
    QuantizerIdentityWrapper,
    QuantizerModuleWrapper,
    SchemaError,
)
from purecompress.quant import QuantParams, fake_quantize
from purecompress.selectors import ConfigError
from tests.compat.models import QuantNet

W_IO = [{"quant_types": ["weight", "input", "output"], "quant_bits": 8, "op_types": ["Conv2d", "Linear"]}]


def _net(bn: bool = False) -> QuantNet:
    torch.manual_seed(0)
    return QuantNet(bn)


X = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor = X) -> torch.Tensor:
    opt.zero_grad()
    y = model(x)
    y.pow(2).mean().backward()
    opt.step()
    return y.detach()


def _qat(model: nn.Module, cfg=W_IO, lr: float = 0.05, **kw) -> tuple[QAT_Quantizer, torch.optim.Optimizer]:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return QAT_Quantizer(model, cfg, opt, **kw), opt


def test_wrapper_moves_weight_to_old_weight_and_registers_it_with_the_optimizer():
    model = _net()
    quantizer, opt = _qat(model)
    assert isinstance(model.conv1, QuantizerModuleWrapper) and quantizer.compress() is model
    assert isinstance(model.conv1.module.old_weight, nn.Parameter)
    assert not isinstance(model.conv1.module.weight, nn.Parameter)
    assert "conv1.module.old_weight" in dict(model.named_parameters())
    grouped = [p for group in opt.param_groups for p in group["params"]]
    assert any(p is model.conv1.module.old_weight for p in grouped)
    assert [w.name for w in quantizer.get_modules_wrapper()] == ["conv1", "fc"]


def test_steps_start_at_one_and_count_optimizer_steps():
    model = _net()
    quantizer, opt = _qat(model)
    assert quantizer.steps == 1 and int(model.steps) == 1
    _step(model, opt)
    _step(model, opt)
    assert int(model.steps) == 3


def test_quant_start_step_delays_quantization_in_training_and_eval():
    model, ref = _net(), _net()
    cfg = [dict(W_IO[0], quant_start_step=2)]
    _, opt = _qat(model, cfg, lr=0.0)
    assert torch.equal(model(X), ref(X))  # step 1 < 2: float
    model.eval()
    assert torch.equal(model(X), ref.eval()(X))
    model.train()
    opt.step()
    assert not torch.equal(model(X), ref.train()(X))  # step 2: quantized


def test_eval_uses_stored_scales():
    model = _net()
    _, opt = _qat(model)
    _step(model, opt)
    model(X)  # stores the scales of the current weights
    scale = model.conv1.module.weight_scale.clone()
    with torch.no_grad():
        model.conv1.module.old_weight.mul_(3)
    model.eval()
    model(X)
    assert torch.equal(model.conv1.module.weight_scale, scale)


# -- NNI bugs not copied ------------------------------------------------------------------------


def test_zero_ranges_give_finite_outputs():  # NNI: scale 0 -> NaN
    model = _net()
    with torch.no_grad():
        model.conv1.weight.zero_()
        model.conv1.bias.zero_()
    cfg = [{"quant_types": ["weight", "input", "output"], "quant_bits": 8, "op_types": ["Conv2d", "Linear"],
            "quant_scheme": {"weight": "per_tensor_affine", "input": "per_channel_affine",
                             "output": "per_channel_affine"}}]
    _, opt = _qat(model, cfg)
    for _ in range(2):
        assert torch.isfinite(_step(model, opt)).all()
    assert torch.isfinite(model(torch.zeros_like(X))).all()


def test_eval_before_any_training_step_quantizes_with_current_weights():  # NNI: weights -> 0
    model, ref = _net(), _net()
    cfg = [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Conv2d", "Linear"]}]
    _qat(model, cfg)
    model.eval()
    y, y_ref = model(X), ref.eval()(X)
    assert (y - y_ref).abs().max() < 0.05 * y_ref.abs().max()
    assert not torch.allclose(y, ref.fc.bias.expand_as(y))


def test_weights_train_before_quant_start_step():  # NNI: clipped STE with scale 0 zeroes the gradient
    model = _net()
    _qat(model, [dict(W_IO[0], quant_start_step=5)])
    model(X).pow(2).mean().backward()
    assert model.conv1.module.old_weight.grad.abs().sum() > 0


def test_per_channel_activation_export_and_reload(tmp_path):  # NNI: export crashes
    cfg = [{"quant_types": ["weight", "output"], "quant_bits": 8, "op_types": ["Conv2d"],
            "quant_scheme": "per_channel_affine"}]
    model = _net()
    quantizer, opt = _qat(model, cfg)
    _step(model, opt)
    model.eval()
    expected = model(X)
    calibration = quantizer.export_model(tmp_path / "m.pth", tmp_path / "c.pth")
    assert calibration["conv1"]["tracked_min_output"].shape == (1, 4, 1, 1)
    fresh = _net()
    fresh.load_state_dict(torch.load(tmp_path / "m.pth", weights_only=True))  # no 'steps' key
    q2, _ = _qat(fresh, cfg)
    q2.load_calibration_config(torch.load(tmp_path / "c.pth", weights_only=True))
    fresh.eval()
    assert torch.allclose(fresh(X), expected, atol=1e-6)  # NNI: scales stay 0 after loading


def test_load_calibration_config_checks_bits():
    model = _net()
    quantizer, _ = _qat(model)
    with pytest.raises(ValueError, match="conv1 weight_bits is 4"):
        quantizer.load_calibration_config({"conv1": {"weight_bits": 4}})


def test_lsq_trains_weights_exports_weight_only_and_survives_zero_inputs(tmp_path):
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    quantizer = LsqQuantizer(model, [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Conv2d"]}], opt)
    before = model.conv1.module.old_weight.detach().clone()
    _step(model, opt)
    assert not torch.equal(model.conv1.module.old_weight, before)  # NNI: LSQ weights never change
    assert quantizer.export_model(tmp_path / "m.pth") == {"conv1": {"weight_bits": 8}}  # NNI: crash
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    LsqQuantizer(model, W_IO, opt)
    assert torch.isfinite(model(torch.zeros_like(X))).all()  # NNI: step 0 -> NaN


def test_observer_quantizes_weights_after_compress():  # NNI: evaluates with float weights
    model = _net().eval()
    quantizer = ObserverQuantizer(model, [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Linear"]}])
    with torch.no_grad():
        model(X)
    quantizer.compress()
    model(X)
    m = model.fc.module
    qp = QuantParams(m.weight_scale.reshape(()), m.weight_zero_point.reshape(()), -127, 127)
    assert torch.equal(m.weight, fake_quantize(m.old_weight.detach(), qp))
    with pytest.raises(ValueError, match="evaluation mode"):
        ObserverQuantizer(_net(), [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Linear"]}])


def test_bn_folding_tracks_statistics_of_the_previous_forward_conv_and_export_restores(tmp_path):
    model, ref = _net(bn=True), _net(bn=True)
    quantizer, opt = _qat(model, [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Conv2d"]}],
                          dummy_input=X)
    assert quantizer.conv_bn_patterns == {"conv1": "bn1"}
    assert isinstance(model.bn1, QuantizerIdentityWrapper)
    for _ in range(2):
        # NNI's order: the statistics pass runs the conv as it stands, with the (quantized, folded)
        # weight and the folded bias of the previous forward (the float ones at the first step).
        weight = model.conv1.module.weight.detach().clone()
        bias = model.conv1.module.bias.detach().clone()
        _step(model, opt)
        ref.conv1.weight.data.copy_(weight)
        ref.conv1.bias.data.copy_(bias)
        ref.bn1(ref.conv1(X))
    assert torch.equal(model.bn1.module.running_mean, ref.bn1.running_mean)
    assert torch.equal(model.bn1.module.running_var, ref.bn1.running_var)
    quantizer.export_model(tmp_path / "m.pth")
    assert isinstance(model.bn1, nn.BatchNorm2d) and isinstance(model.conv1.weight, nn.Parameter)
    assert torch.equal(model.conv1.bias, model.conv1.bias) and not hasattr(model.conv1, "old_bias")
    QuantNet(bn=True).load_state_dict(torch.load(tmp_path / "m.pth", weights_only=True))


def test_naive_exports_and_dorefa_bnn_values(tmp_path):
    model = _net()
    quantizer = NaiveQuantizer(model, [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Linear"]}])
    model(X)
    scale, old = quantizer.layer_scale["fc"], model.fc.module.old_weight.detach()
    assert scale == old.abs().max() / 127
    assert torch.equal(model.fc.module.weight, torch.trunc(old / scale) * scale)  # int8 cast truncates
    assert quantizer.export_model(tmp_path / "m.pth") == {"fc": {"weight_bits": 8}}  # NNI: NotImplementedError
    model = _net()
    DoReFaQuantizer(model, [{"quant_types": ["weight"], "quant_bits": 2, "op_types": ["Linear"]}],
                    torch.optim.SGD(model.parameters(), lr=0.1))
    model(X)
    levels = torch.unique(model.fc.module.weight)  # 2 bits: 3 steps on [-1, 1]
    grid = torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0])
    assert (levels[:, None] - grid).abs().min(dim=1).values.max() < 1e-6
    model = _net()
    BNNQuantizer(model, [{"quant_types": ["weight"], "quant_bits": 1, "op_types": ["Linear"]}],
                 torch.optim.SGD(model.parameters(), lr=0.1))
    model(X)
    assert set(torch.unique(model.fc.module.weight).tolist()) == {-1.0, 1.0}


def test_custom_quantizer_with_quant_grad_subclass():
    calls = []

    class HalfGrad(QuantGrad):
        @staticmethod
        def quant_backward(tensor, grad_output, quant_type, scale, zero_point, qmin, qmax):
            calls.append(quant_type)
            return grad_output * 0.5

    class RoundQuantizer(Quantizer):
        def quantize_weight(self, wrapper, **kwargs):
            return torch.round(wrapper.module.weight * 8) / 8

    model = nn.Sequential(nn.Linear(3, 2))
    quantizer = RoundQuantizer(model, [{"quant_types": ["weight"], "quant_bits": 3, "op_types": ["Linear"]}])
    quantizer.quant_grad = HalfGrad.apply
    model(torch.ones(1, 3)).sum().backward()
    assert calls == ["weight"]
    assert torch.allclose(model[0].module.old_weight.grad, torch.full((2, 3), 0.5))


def test_config_and_argument_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config_list\[0\]\['quant_bits'\]"):
        _qat(_net(), [{"quant_types": ["weight"], "quant_bits": 33, "op_types": ["Conv2d"]}])
    with pytest.raises(SchemaError, match="op_types"):
        _qat(_net(), [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["BatchNorm2d"]}])
    with pytest.raises(ConfigError, match="quant_dtype"):
        NaiveQuantizer(_net(), [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Conv2d"],
                                 "quant_dtype": "int"}])
    with pytest.raises(TypeError, match="Optimizer"):
        QAT_Quantizer(_net(), W_IO, None)
    model = _net()
    quantizer, _ = _qat(model)
    with pytest.raises(ValueError, match="input_shape"):
        quantizer.export_model(tmp_path / "unused.pth", onnx_path=tmp_path / "unused.onnx")
    assert not (tmp_path / "unused.pth").exists()  # nothing written when the arguments are wrong
