"""Group-wise weight quantization parameters (``QuantParams.group_size``, e.g. GPTQ's) through every path.

The core's fake quantization, the safetensors files and the QDQ ONNX export take them as they are;
onnxruntime runs the exported graph (Reshape, per-channel QuantizeLinear/DequantizeLinear, Reshape)
to the PyTorch reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import purecompress.quant as pq
from purecompress import llm
from purecompress.quant.onnx_export import export_qdq_onnx, qdq_forward
from purecompress.quant.qparams import grouped_view

ort = pytest.importorskip("onnxruntime", reason="ONNX checks need onnxruntime")


def _grouped(weight: torch.Tensor, g: int, bits: int = 4) -> pq.QuantParams:
    return llm.weight_qparams(weight, bits=bits, group_size=g)


def test_grouped_fake_quantize_is_per_channel_on_the_group_view() -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 16)
    qp = _grouped(w, 4)
    assert qp.group_size == 4 and qp.scale.shape == (24,)
    flat = pq.QuantParams(qp.scale, qp.zero_point, qp.qmin, qp.qmax, 0)
    expected = pq.fake_quantize(w.reshape(-1, 4), flat).reshape(w.shape)
    assert torch.equal(pq.fake_quantize(w, qp), expected)
    assert torch.equal(llm.fake_quantize_weight(w, qp, group_size=4), expected)
    assert torch.equal(pq.dequantize(pq.quantize(w, qp), qp), expected)
    y = w.clone().requires_grad_()
    pq.fake_quantize_ste(y, qp, clip=True).sum().backward()
    assert y.grad is not None and y.grad.shape == w.shape
    for dtype in (torch.bfloat16, torch.float16):  # codes in float32, result in the weight's dtype
        low = pq.fake_quantize(w.to(dtype), qp)
        assert low.dtype == dtype and torch.isfinite(low.float()).all()


@pytest.mark.parametrize(("shape", "message"), [((6, 15), "do not tile"), ((4, 16), "do not tile")])
def test_grouped_parameters_that_do_not_tile_the_tensor_are_refused(shape, message) -> None:
    qp = _grouped(torch.randn(6, 16), 4)
    with pytest.raises(ValueError, match=message):
        pq.fake_quantize(torch.randn(*shape), qp)
    with pytest.raises(ValueError, match="group_size=4, axis=None"):
        grouped_view(torch.zeros(6, 16), pq.QuantParams(qp.scale, qp.zero_point, qp.qmin, qp.qmax, None, 4))


def test_grouped_parameters_round_trip_through_safetensors(tmp_path) -> None:
    w = torch.randn(6, 16)
    qps = {"fc.weight": _grouped(w, 8), "other.weight": pq.QuantParams(torch.ones(6), torch.zeros(6), 0, 15, 0)}
    pq.save_quant_params(tmp_path / "q.safetensors", qps)
    back = pq.load_quant_params(tmp_path / "q.safetensors")
    assert back["fc.weight"].group_size == 8 and back["other.weight"].group_size is None
    assert torch.equal(pq.fake_quantize(w, back["fc.weight"]), pq.fake_quantize(w, qps["fc.weight"]))


def test_gptq_group_wise_weights_export_to_qdq_onnx_and_run_in_onnxruntime(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8)).eval()
    x = torch.randn(64, 32)
    hessian = x.T @ x
    new_w, qp = llm.gptq_quantize(model[0].weight.detach(), hessian, bits=4, group_size=8)
    assert qp.group_size == 8 and torch.equal(pq.fake_quantize(new_w, qp), new_w)
    with torch.no_grad():
        model[0].weight.copy_(new_w)
    weights = {"0.weight": qp, "2.weight": _grouped(model[2].weight.detach(), 4, bits=8)}
    proto = export_qdq_onnx(model, (x[:4],), tmp_path / "g.onnx", weights=weights)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") == 2 and ops.count("DequantizeLinear") == 2 and "Reshape" in ops
    reference = qdq_forward(model, (x[:4],), weights=weights).detach().numpy()
    session = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x[:4].numpy()})[0]
    assert float(np.abs(got - reference).max()) <= 1e-5
