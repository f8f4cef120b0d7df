"""Quantization export: safetensors round trips, no unpickling, QDQ ONNX checked with onnxruntime."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from purecompress.compat.quantization import QAT_Quantizer
from purecompress.quant import FileFormatError, QuantParams, current_range, fake_quantize, quant_params
from purecompress.quant.export import (
    load_calibration,
    load_nni_calibration,
    load_quant_params,
    save_calibration,
    save_quant_params,
)
from purecompress.quant.onnx_export import export_qdq_onnx, onnx_fake_quantize, qdq_forward

ort = pytest.importorskip("onnxruntime", reason="ONNX checks need onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript", reason="the dynamo ONNX exporter needs onnxscript")


def _qparams() -> dict[str, QuantParams]:
    return {
        "conv.weight": QuantParams(torch.tensor([0.01, 0.02, 0.04]), torch.zeros(3), -127, 127, 0),
        "fc.weight": QuantParams(torch.tensor(0.5), torch.tensor(3.0), 0, 255),
    }


def test_quant_params_round_trip(tmp_path):
    path = tmp_path / "qp.safetensors"
    save_quant_params(path, _qparams(), metadata={"algorithm": "qat"})
    assert load_quant_params(path) == _qparams()


def test_calibration_round_trip_safe_and_nni_format(tmp_path):
    cal = {"conv1": {"weight_bits": 8, "weight_scale": torch.tensor([0.1]), "weight_zero_point": torch.tensor([3.0]),
                     "input_bits": 8, "tracked_min_input": -0.25, "tracked_max_input": 1.5,
                     "tracked_min_output": torch.zeros(1, 4, 1, 1)}}
    save_calibration(tmp_path / "cal.safetensors", cal)
    out = load_calibration(tmp_path / "cal.safetensors")
    assert out["conv1"].keys() == cal["conv1"].keys()
    for key, value in cal["conv1"].items():
        assert torch.equal(torch.as_tensor(out["conv1"][key]), torch.as_tensor(value))
        assert type(out["conv1"][key]) is type(value)
    torch.save(cal, tmp_path / "cal.pth")  # NNI's format
    assert torch.equal(load_nni_calibration(tmp_path / "cal.pth")["conv1"]["weight_scale"], torch.tensor([0.1]))
    with pytest.raises(TypeError, match="only numbers, strings and tensors"):
        save_calibration(tmp_path / "bad.safetensors", {"x": {"k": object()}})


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def test_malicious_pickles_are_never_executed(tmp_path):
    _Evil.marker = str(tmp_path / "pwned")
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"conv1": {"weight_bits": _Evil()}}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        load_nni_calibration(evil)
    with pytest.raises(FileFormatError, match="not a safetensors file"):  # rejected before anything is decoded
        load_quant_params(evil)
    with pytest.raises(FileFormatError, match="not a safetensors file"):
        load_calibration(evil)
    assert not os.path.exists(_Evil.marker)


def test_onnx_fake_quantize_equals_core_for_narrow_and_low_bit_ranges():
    x = 2 * torch.randn(301, generator=torch.Generator().manual_seed(0))  # no exact rounding ties
    for qp in (quant_params(torch.tensor(-1.0), torch.tensor(2.0), bits=8, dtype="int"),
               quant_params(torch.tensor(-1.0), torch.tensor(2.0), bits=4, dtype="uint"),
               QuantParams(torch.tensor([0.1, 0.2]), torch.tensor([0.0, 1.0]), -127, 127, 1)):
        y = x.reshape(1, 1, -1).expand(1, 2, -1) if qp.axis is not None else x
        assert torch.allclose(onnx_fake_quantize(y, qp), fake_quantize(y, qp), atol=1e-6)
    with pytest.raises(ValueError, match="8-bit"):
        export_qdq_onnx(nn.Linear(2, 2), (torch.zeros(1, 2),), weights={"weight": QuantParams(
            torch.tensor(0.1), torch.tensor(0.0), 0, 1023)})


def _run(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def test_functional_qdq_export_matches_fake_quantized_forward(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x = torch.randn(2, 3, 8, 8)
    w0, w3 = model[0].weight.detach(), model[3].weight.detach()
    r0 = current_range(w0, axis=0)
    weights = {"0.weight": quant_params(r0.min, r0.max, dtype="int", scheme="per_channel_symmetric"),
               "3.weight": quant_params(w3.min(), w3.max(), bits=4, dtype="uint")}
    inputs = {"0": quant_params(x.min(), x.max())}
    outputs = {"1": quant_params(torch.tensor(0.0), model[1](model[0](x)).max().detach()),
               "3": quant_params(torch.tensor(-2.0), torch.tensor(2.0), dtype="int", scheme="per_tensor_symmetric")}
    proto = export_qdq_onnx(model, (x,), tmp_path / "m.onnx", weights=weights, inputs=inputs, outputs=outputs)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") == 5 and ops.count("DequantizeLinear") == 5
    per_channel = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"
                   and any(a.name == "axis" and a.i == 0 for a in n.attribute)]
    assert per_channel  # the conv weight's per-channel QDQ
    reference = qdq_forward(model, (x,), weights=weights, inputs=inputs, outputs=outputs)
    diff = float(np.abs(_run(tmp_path / "m.onnx", x) - reference.numpy()).max())
    print(f"QDQ ONNX vs fake-quantized PyTorch: max abs diff {diff:.3g} (one step = {outputs['3'].scale:.3g})")
    assert diff <= float(outputs["3"].scale)


class _Masked(nn.Module):
    """Keyword inputs: ``features`` and a ``mask`` multiplied into the hidden layer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, *, features: torch.Tensor, mask: torch.Tensor, scale: float = 1.0) -> dict[str, torch.Tensor]:
        return {"out": self.fc2(torch.relu(self.fc1(features)) * mask) * scale}


def test_qdq_export_takes_keyword_inputs(tmp_path):
    torch.manual_seed(0)
    model = _Masked().eval()
    features, mask = torch.randn(4, 6), (torch.rand(4, 8) > 0.5).float()
    weights = {f"{n}.weight": quant_params(getattr(model, n).weight.min(), getattr(model, n).weight.max())
               for n in ("fc1", "fc2")}
    outputs = {"fc2": quant_params(torch.tensor(-1.0), torch.tensor(1.0))}
    kwargs = {"features": features, "mask": mask, "scale": 2.0}  # a Python constant is not an ONNX input
    export_qdq_onnx(model, (), tmp_path / "kw.onnx", weights=weights, outputs=outputs, kwargs=kwargs)
    session = ort.InferenceSession(str(tmp_path / "kw.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["features", "mask"]
    got = session.run(None, {"features": features.numpy(), "mask": mask.numpy()})[0]
    reference = qdq_forward(model, (), weights=weights, outputs=outputs, kwargs=kwargs)["out"]
    assert not torch.equal(reference, model(**kwargs)["out"].detach())  # quantization changed it
    assert float(np.abs(got - reference.numpy()).max()) <= 2 * float(outputs["fc2"].scale) + 1e-6


def test_qdq_export_of_a_hugging_face_encoder_with_keyword_inputs(tmp_path):
    tr = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = tr.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=16)
    model = tr.BertModel(config).eval()
    ids = torch.randint(0, 50, (2, 8))
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    weights = {n: quant_params(p.min(), p.max()) for n, p in model.named_parameters()
               if n.endswith(".weight") and p.dim() == 2 and "embeddings" not in n}
    export_qdq_onnx(model, (), tmp_path / "bert.onnx", weights=weights, kwargs=kwargs)
    session = ort.InferenceSession(str(tmp_path / "bert.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: kwargs[i.name].numpy() for i in session.get_inputs()})[0]
    reference = qdq_forward(model, (), weights=weights, kwargs=kwargs).last_hidden_state
    assert float(np.abs(got - reference.numpy()).max()) <= 1e-4 * float(reference.abs().max())


def test_compat_export_model_writes_qdq_onnx(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    x = torch.randn(4, 1, 8, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    cfg = [{"quant_types": ["weight", "input"], "quant_bits": 8, "op_types": ["Conv2d"],
            "quant_scheme": {"weight": "per_channel_symmetric", "input": "per_tensor_affine"},
            "quant_dtype": {"weight": "int", "input": "uint"}},
           {"quant_types": ["weight", "output"], "quant_bits": 8, "op_types": ["Linear"]}]
    quantizer = QAT_Quantizer(model, cfg, opt, dummy_input=x)
    for _ in range(2):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    model(x)  # scales of the current weights
    model.eval()
    expected = model(x).detach()
    quantizer.export_model(tmp_path / "m.pth", tmp_path / "c.safetensors", onnx_path=tmp_path / "m.onnx",
                           input_shape=(4, 1, 8, 8))
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert "BatchNormalization" not in ops and ops.count("QuantizeLinear") == 4
    diff = float(np.abs(_run(tmp_path / "m.onnx", x) - expected.numpy()).max())
    step = float(load_calibration(tmp_path / "c.safetensors")["4"]["tracked_max_output"]
                 - load_calibration(tmp_path / "c.safetensors")["4"]["tracked_min_output"]) / 255
    print(f"compat QAT export: onnxruntime vs eval forward max abs diff {diff:.3g} (one step = {step:.3g})")
    assert diff <= step
