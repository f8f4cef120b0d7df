"""What ``purecompress demo`` works on: scikit-learn's digits, a small CNN, and its training loops.

Training is functional: a copy of the parameters is trained through ``functional_call`` (with
masks applied in every step, or through a :class:`~purecompress.quant.QuantTransform` for
quantization-aware training); the model object only provides the architecture.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs
import torch
from torch import Tensor, nn
from torch.func import functional_call

import purecompress as pc
import purecompress.quant as pq

__all__ = ["DemoData", "accuracy", "digits_data", "make_cnn", "train", "train_quantized"]


@attrs.frozen
class DemoData:
    """Train/test split of the digits images: x ``[N, 1, 8, 8]`` float in [0, 1], y ``[N]`` int."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def digits_data(seed: int = 0) -> DemoData:
    """scikit-learn's digits (1797 8x8 images shipped with the package), 75/25 split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise SystemExit("the demo needs scikit-learn: pip install 'purecompress[demo]'") from err
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(0.75 * len(y))
    return DemoData(x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]])


def make_cnn() -> nn.Module:
    """Conv-BN-ReLU x2, max-pool, two Linear layers: about 38k parameters."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip


def _fit(model: nn.Module, params: Mapping[str, Tensor], data: DemoData, forward: Callable[[pc.Params, Tensor], Tensor],
         *, epochs: int, lr: float, seed: int) -> pc.Params:
    """Adam on a copy of ``params`` (its parameters, not its buffers) with ``forward(trainable, x)``."""
    names = {n for n, _ in model.named_parameters()}
    trainable = {k: v.detach().clone().requires_grad_(k in names) for k, v in params.items()}
    opt = torch.optim.Adam([v for k, v in trainable.items() if k in names], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(data.y_train), generator=gen).split(64):
            loss = nn.functional.cross_entropy(forward(trainable, data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return trainable


def train(model: nn.Module, params: Mapping[str, Tensor], data: DemoData, *, epochs: int,
          masks: pc.Masks | None = None, lr: float = 3e-3, seed: int = 0) -> pc.Params:
    """Train a copy of ``params`` (masked by ``masks`` in every step) and return it."""
    masks = masks or {}
    trained = _fit(model, params, data, lambda p, x: functional_call(model, pc.apply_masks(p, masks), (x,)),
                   epochs=epochs, lr=lr, seed=seed)
    return {k: v.detach() for k, v in pc.apply_masks(trained, masks).items()}


def train_quantized(model: nn.Module, q: pq.QuantTransform, params: Mapping[str, Tensor], data: DemoData, *,
                    epochs: int, lr: float = 1e-3, seed: int = 0) -> tuple[pc.Params, pq.QuantState]:
    """Quantization-aware training of a copy of ``params``; returns it and the final quantization state."""
    state = [q.init(params)]

    def forward(p: pc.Params, x: Tensor) -> Tensor:
        out, new = q(model, p, state[0], x)
        _, state[0] = q.update(p, new)  # the step count the next batch sees (NNI: after optimizer.step)
        return out

    trained = _fit(model, params, data, forward, epochs=epochs, lr=lr, seed=seed)
    return {k: v.detach() for k, v in trained.items()}, state[0]


def accuracy(model: nn.Module, params: Mapping[str, Tensor], data: DemoData,
             quant: tuple[pq.QuantTransform, pq.QuantState] | None = None) -> float:
    """Test accuracy of ``model`` run with ``params`` (quantized with ``quant``'s stored parameters)."""
    model.eval()
    with torch.no_grad():
        if quant is None:
            out = functional_call(model, dict(params), (data.x_test,))
        else:
            out, _ = quant[0](model, params, quant[1], data.x_test, training=False)
    return float((out.argmax(1) == data.y_test).float().mean())
