"""Post-training quantization, exported to ONNX with QuantizeLinear/DequantizeLinear, checked with onnxruntime.

The functional path: the core ``observer`` transform calibrates a small CNN on a few batches
(``training=True`` only observes), ``quantized_call(..., training=False)`` is the fake-quantized
forward, and :func:`export_qdq_onnx` writes the same computation as a QDQ ONNX graph through the
dynamo exporter. onnxruntime runs the file; its output is compared with the PyTorch forward.

Run: ``python examples/onnx_export.py [--out model.onnx]``.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

import purecompress as pc
from purecompress.quant import observer, quantized_call
from purecompress.quant.onnx_export import export_qdq_onnx, qdq_targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="ONNX file (default: in a temp dir)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 10),
    ).eval()
    config_list = [{"quant_types": ["weight", "input"], "quant_bits": 8, "op_types": ["Conv2d"]},
                   {"quant_types": ["weight", "input", "output"], "quant_bits": 8, "op_names": ["6"]}]
    transform = observer(model, config_list)
    params = pc.params_of(model)
    state = transform.init(params)
    calibration = [torch.randn(16, 3, 16, 16) for _ in range(4)]
    for batch in calibration:  # observe ranges only
        _, state = quantized_call(transform, model, params, state, (batch,), training=True)

    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        expected, _ = quantized_call(transform, model, params, state, (x,), training=False)
        float_out = model(x)
    targets = qdq_targets(state)
    path = args.out or Path(tempfile.mkdtemp(prefix="qdq_")) / "model.onnx"
    proto = export_qdq_onnx(model, (x,), path, **targets)
    ops = Counter(node.op_type for node in proto.graph.node)
    print(f"wrote {path}: {ops['QuantizeLinear']} QuantizeLinear, {ops['DequantizeLinear']} DequantizeLinear, "
          f"ops {sorted(ops)}")

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    diff = float(np.abs(got - expected.numpy()).max())
    step = float(targets["outputs"]["6"].scale)
    print(f"onnxruntime vs fake-quantized PyTorch: max abs diff {diff:.3g} (one output step {step:.3g})")
    print(f"quantization error vs the float model: max abs {float((expected - float_out).abs().max()):.3g}")
    assert ops["QuantizeLinear"] == len(targets["weights"]) + len(targets["inputs"]) + len(targets["outputs"])
    assert diff <= step, "onnxruntime disagrees with the fake-quantized forward by more than one step"


if __name__ == "__main__":
    main()
