"""Movement pruning of an MLP on digits inside a functional training loop (no download, < 10 s).

``movement(...)`` is an ``init``/``update`` pair: each step the loop differentiates the loss with
respect to the *masked* weights (the tensors the forward used), updates the weights with those
gradients times the mask, and hands the same gradients to ``update``, which trains the scores
(straight-through: ``dL/dS = dL/dW_eff * W``) and re-masks on the cubic schedule.

Run: ``python examples/movement_pruning.py [--sparsity 0.8] [--mode hard|soft] [--epochs 6]``
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.func import functional_call, grad

import purecompress as pc
from purecompress.pruning import movement


def data(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[order[:1400]], y[order[:1400]], x[order[1400:]], y[order[1400:]]


def accuracy(model: nn.Module, params: pc.Params, masks: pc.Masks, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((functional_call(model, pc.apply_masks(params, masks), (x,)).argmax(-1) == y).float().mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--mode", choices=["hard", "soft"], default="hard")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    x_train, y_train, x_test, y_test = data(args.seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    params = {k: v.clone() for k, v in pc.params_of(model).items()}
    targets = ["0.weight", "2.weight"]
    steps_per_epoch = -(-len(x_train) // 64)
    total = args.epochs * steps_per_epoch
    # Soft mode: the sparsity is a threshold on sigmoid(score); the regularizer drives scores down.
    threshold = 0.5 if args.mode == "soft" else args.sparsity
    prune = movement(targets, threshold, warm_up=steps_per_epoch, cool_down=total - 2 * steps_per_epoch,
                     mode=args.mode, regular_scale=20.0 if args.mode == "soft" else None, lr=0.05)
    state = prune.init(params)

    def loss(masked: pc.Params, xb: Tensor, yb: Tensor) -> Tensor:
        return nn.functional.cross_entropy(functional_call(model, masked, (xb,)), yb)

    step = grad(loss)
    gen = torch.Generator().manual_seed(args.seed)
    for _ in range(args.epochs):
        for batch in torch.randperm(len(x_train), generator=gen).split(64):
            g = step(pc.apply_masks(params, state.masks), x_train[batch], y_train[batch])
            params = {k: v - 0.2 * (state.masks[k].apply(g[k]) if k in state.masks else g[k])
                      for k, v in params.items()}
            _, state = prune.update(params, state, grads=g)

    print(f"steps: {state.step}")
    print(f"movement sparsity: {', '.join(f'{n}: {state.masks[n].sparsity():.3f}' for n in targets)}")
    print(f"pruned accuracy: {accuracy(model, params, state.masks, x_test, y_test):.3f}")


if __name__ == "__main__":
    main()
