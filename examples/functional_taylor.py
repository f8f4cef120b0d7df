"""Taylor first-order channel pruning inside a functional training loop (digits, no download, < 10 s).

The training loop is the user's own: ``torch.func.grad`` and an SGD step over a params dict. The
Taylor statistics ride along in the same loop (``taylor_accumulate`` on the gradients the loop
already has), then ``taylor_fo -> allocate`` gives channel masks and the loop goes on with them.

Run: ``python examples/functional_taylor.py [--sparsity 0.5] [--epochs 8] [--seed 0]``
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.func import functional_call, grad

import purecompress as pc
from purecompress.pruning import TaylorStats, taylor_accumulate, taylor_fo


def data(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Digits as ``[N, 1, 8, 8]`` images in [0, 1]: (x_train, y_train, x_test, y_test)."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[order[:1400]], y[order[:1400]], x[order[1400:]], y[order[1400:]]


def model_fn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 10))


def train(model: nn.Module, params: pc.Params, x: Tensor, y: Tensor, *, epochs: int, masks: pc.Masks, seed: int,
          taylor_targets: Sequence[str] = (), lr: float = 0.5) -> tuple[pc.Params, dict[str, TaylorStats]]:
    """Minibatch SGD; when ``taylor_targets`` is given, also accumulates their Taylor statistics."""

    def loss(p: pc.Params, xb: Tensor, yb: Tensor) -> Tensor:
        return nn.functional.cross_entropy(functional_call(model, pc.apply_masks(p, masks), (xb,)), yb)

    step, stats = grad(loss), {}
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=gen).split(64):
            grads = step(params, x[batch], y[batch])
            stats = taylor_accumulate(stats, params, {n: grads[n] for n in taylor_targets})
            params = {k: v - lr * grads[k] for k, v in params.items()}
    return params, stats


def accuracy(model: nn.Module, params: pc.Params, masks: pc.Masks, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((functional_call(model, pc.apply_masks(params, masks), (x,)).argmax(-1) == y).float().mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    x_train, y_train, x_test, y_test = data(args.seed)
    model = model_fn()
    params = {k: v.clone() for k, v in pc.params_of(model).items()}

    plan = pc.select(model, pc.from_config_list([{"sparsity": args.sparsity, "op_types": ["Conv2d"]}]))
    targets = list(plan.targets())
    # Train; the last epoch also gathers sum over steps of (w * grad)**2 for the conv weights.
    params, _ = train(model, params, x_train, y_train, epochs=args.epochs - 1, masks={}, seed=args.seed)
    params, stats = train(model, params, x_train, y_train, epochs=1, masks={}, seed=args.seed + 1,
                          taylor_targets=targets)
    dense = accuracy(model, params, {}, x_test, y_test)

    masks = pc.allocate(taylor_fo(stats), plan)
    one_shot = accuracy(model, params, masks, x_test, y_test)
    params, _ = train(model, params, x_train, y_train, epochs=2, masks=masks, seed=args.seed + 2)
    tuned = accuracy(model, params, masks, x_test, y_test)

    print(f"taylor steps: {stats[targets[0]].steps}")
    print(f"dense accuracy: {dense:.3f}")
    print(f"pruned accuracy (one-shot): {one_shot:.3f}")
    print(f"pruned accuracy (fine-tuned 2 epochs): {tuned:.3f}")
    print(pc.sparsity_report(params, masks, plan).table())


if __name__ == "__main__":
    main()
