"""One-shot functional pruning of a small MLP on scikit-learn's digits (no download, < 10 s on CPU).

Everything is a function of a params dict: training is ``torch.func.grad`` plus an SGD step that
returns new tensors, pruning is ``select -> metric -> allocate``, and the pruned model is
``functional_call(model, apply_masks(params, masks), ...)``. The module object is never modified.

Run: ``python examples/functional_pruning.py [--sparsity 0.5] [--epochs 10] [--seed 0]``
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.func import functional_call, grad

import purecompress as pc


def data(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Digits as float features in [0, 1]: (x_train [1400, 64], y_train, x_test [397, 64], y_test)."""
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, test = order[:1400], order[1400:]
    return x[train], y[train], x[test], y[test]


def train(model: nn.Module, params: pc.Params, x: Tensor, y: Tensor, *, epochs: int, masks: pc.Masks,
          seed: int, lr: float = 0.2) -> pc.Params:
    """Minibatch SGD on ``params`` (new dicts each step); pruned entries get zero gradient."""

    def loss(p: pc.Params, xb: Tensor, yb: Tensor) -> Tensor:
        return nn.functional.cross_entropy(functional_call(model, pc.apply_masks(p, masks), (xb,)), yb)

    step = grad(loss)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=gen).split(64):
            grads = step(params, x[batch], y[batch])
            params = {k: v - lr * grads[k] for k, v in params.items()}
    return params


def accuracy(model: nn.Module, params: pc.Params, masks: pc.Masks, x: Tensor, y: Tensor) -> float:
    """Top-1 accuracy of the masked model."""
    with torch.no_grad():
        logits = functional_call(model, pc.apply_masks(params, masks), (x,))
    return float((logits.argmax(-1) == y).float().mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.5, help="hidden-channel sparsity (L1 norm)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # a model this small only loses time to thread hand-offs
    x_train, y_train, x_test, y_test = data(args.seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    params = {k: v.clone() for k, v in pc.params_of(model).items()}
    params = train(model, params, x_train, y_train, epochs=args.epochs, masks={}, seed=args.seed)
    dense = accuracy(model, params, {}, x_test, y_test)

    # Hidden layers lose whole output channels (L1); the classifier keeps its 10 outputs and
    # loses individual weights instead (Level), so every class stays predictable.
    config_list = [
        {"sparsity": args.sparsity, "op_types": ["Linear"]},
        {"sparsity": 0.7, "op_names": ["4"]},
    ]
    plan = pc.select(model, pc.from_config_list(config_list))
    channel_targets = [n for n, e in plan.targets().items() if e.index == 0]
    fine_targets = [n for n, e in plan.targets().items() if e.index == 1]
    metrics = {**pc.l1_norm(params, channel_targets), **pc.level(params, fine_targets)}
    masks = pc.allocate(metrics, plan)
    one_shot = accuracy(model, params, masks, x_test, y_test)

    params = train(model, params, x_train, y_train, epochs=3, masks=masks, seed=args.seed + 1)
    tuned = accuracy(model, params, masks, x_test, y_test)

    report = pc.sparsity_report(params, masks, plan)
    print(f"dense accuracy: {dense:.3f}")
    print(f"pruned accuracy (one-shot): {one_shot:.3f}")
    print(f"pruned accuracy (fine-tuned 3 epochs): {tuned:.3f}")
    print(f"config group sparsity: {', '.join(f'{i}: {s:.2%}' for i, s in sorted(report.groups.items()))}")
    print(report.table())


if __name__ == "__main__":
    main()
