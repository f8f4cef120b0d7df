"""Post-training quantization: calibrate observers on a few batches, then evaluate 8-bit.

A float MLP is trained on scikit-learn's digits with a plain functional loop; then
``pq.observer`` (NNI's ObserverQuantizer math: weights symmetric int8 in [-127, 127], activations
affine in [0, 127]) observes a few calibration batches with ``training=True`` (nothing is
quantized while observing) and evaluates with ``training=False``. The scales and zero points are
in the returned state (``state.tensors[key].qparams``), ready for export. No module is modified.

Run: ``python examples/ptq_calibration.py [--steps 200] [--calibration-batches 4] [--seed 0]``
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.func import functional_call, grad

import purecompress.quant as pq


def data(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Digits as float features in [0, 1]: (x_train [1400, 64], y_train, x_test [397, 64], y_test)."""
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[order[:1400]], y[order[:1400]], x[order[1400:]], y[order[1400:]]


def main(steps: int = 200, calibration_batches: int = 4, seed: int = 0) -> dict[str, float]:
    """Train, calibrate, evaluate; returns float and quantized accuracy and weight sizes."""
    torch.manual_seed(seed)
    x, y, x_test, y_test = data(seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    params = {k: v.detach().clone() for k, v in model.named_parameters()}

    def loss(p: dict[str, Tensor], xb: Tensor, yb: Tensor) -> Tensor:
        return nn.functional.cross_entropy(functional_call(model, p, (xb,)), yb)

    step_grad = grad(loss)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randint(len(x), (64,), generator=gen)
        g = step_grad(params, x[batch], y[batch])
        params = {k: v - 0.3 * g[k] for k, v in params.items()}

    q = pq.observer(model, [{"quant_types": ["weight", "input", "output"], "quant_bits": 8, "op_types": ["Linear"]}])
    state = q.init(params)
    with torch.no_grad():
        float_acc = float((functional_call(model, params, (x_test,)).argmax(1) == y_test).float().mean())
        for i in range(calibration_batches):  # observe only
            _, state = q(model, params, state, x[i * 128:(i + 1) * 128])
        out, _ = q(model, params, state, x_test, training=False)
    ptq_acc = float((out.argmax(1) == y_test).float().mean())
    weights = [k for k in q.keys if k.endswith(".weight")]
    float_bytes = sum(params[k].numel() * 4 for k in weights)
    int8_bytes = sum(params[k].numel() for k in weights)
    for key in q.keys:
        qp = state.tensors[key].qparams
        print(f"{key}: scale {float(qp.scale):.5f}, zero point {int(qp.zero_point)}, range [{qp.qmin}, {qp.qmax}]")
    print(f"float accuracy: {float_acc:.3f}")
    print(f"8-bit PTQ accuracy: {ptq_acc:.3f}")
    print(f"quantized weights: {float_bytes} bytes float32 -> {int8_bytes} bytes int8")
    return {"float": float_acc, "ptq": ptq_acc, "float_bytes": float_bytes, "int8_bytes": int8_bytes}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--calibration-batches", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.steps, args.calibration_batches, args.seed)
