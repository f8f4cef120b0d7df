"""Quantization-aware training inside a plain functional training loop, on scikit-learn's digits.

The loop is the user's own: ``torch.func.grad`` on a loss that runs the model through
``q(model, params, state, x)``, which fake-quantizes the weights (and the configured activations)
and returns the new observer state as data. After each SGD step ``params, state = q.update(params, state)``
advances the step counter (NNI's ``steps``). The module object is never modified.

Run: ``python examples/functional_qat.py [--bits 4] [--steps 200] [--seed 0]``  (< 20 s on CPU)
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


def train(loss_fn, params: dict[str, Tensor], state: object, x: Tensor, y: Tensor, steps: int,  # noqa: ANN001
          seed: int, update=None) -> tuple[dict[str, Tensor], object]:  # noqa: ANN001
    """SGD with ``torch.func.grad``; ``loss_fn(params, state, xb, yb) -> (loss, new_state)``."""
    step_grad = grad(loss_fn, has_aux=True)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randint(len(x), (64,), generator=gen)
        g, state = step_grad(params, state, x[batch], y[batch])
        params = {k: v - 0.3 * g[k] for k, v in params.items()}
        if update is not None:
            params, state = update(params, state)
    return params, state


def main(bits: int = 4, steps: int = 200, seed: int = 0) -> dict[str, float]:
    """Train a float MLP, then fine-tune it with QAT (``bits``-bit weights, 8-bit activations)."""
    torch.manual_seed(seed)
    x, y, x_test, y_test = data(seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    params = {k: v.detach().clone() for k, v in model.named_parameters()}

    def float_loss(p: dict[str, Tensor], state: tuple, xb: Tensor, yb: Tensor) -> tuple[Tensor, tuple]:
        return nn.functional.cross_entropy(functional_call(model, p, (xb,)), yb), state

    params, _ = train(float_loss, params, (), x, y, steps, seed)
    with torch.no_grad():
        float_acc = float((functional_call(model, params, (x_test,)).argmax(1) == y_test).float().mean())

    q = pq.qat(model, [
        {"quant_types": ["weight"], "quant_bits": bits, "quant_dtype": "int",
         "quant_scheme": "per_channel_symmetric", "op_types": ["Linear"]},
        {"quant_types": ["output"], "quant_bits": 8, "op_types": ["ReLU"]},
    ])

    def qat_loss(p: dict[str, Tensor], state: pq.QuantState, xb: Tensor, yb: Tensor) -> tuple[Tensor, pq.QuantState]:
        out, state = q(model, p, state, xb)  # fake-quantized forward; the new state is returned
        return nn.functional.cross_entropy(out, yb), state

    state = q.init(params)
    with torch.no_grad():  # quantize the float model as is: one observing pass, then evaluate
        _, calibrated = q(model, params, state, x)
        before = float((q(model, params, calibrated, x_test, training=False)[0].argmax(1) == y_test).float().mean())
    params, state = train(qat_loss, params, state, x, y, steps // 2, seed + 1, update=q.update)
    with torch.no_grad():
        out, _ = q(model, params, state, x_test, training=False)
    qat_acc = float((out.argmax(1) == y_test).float().mean())
    print(f"float accuracy: {float_acc:.3f}")
    print(f"{bits}-bit quantized before QAT: {before:.3f}")
    print(f"{bits}-bit QAT accuracy: {qat_acc:.3f}")
    print(f"steps counted: {int(state.step) - 1}")
    return {"float": float_acc, "before": before, "qat": qat_acc, "steps": int(state.step) - 1}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.bits, args.steps, args.seed)
