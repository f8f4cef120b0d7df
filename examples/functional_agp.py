"""AGP (Zhu & Gupta) inside a plain functional training loop, on scikit-learn's digits (< 10 s on CPU).

The loop is the user's own: ``torch.func.grad`` and an SGD step on a params dict. Pruning is one
more line in it, ``params, state = prune.update(params, state)``, which follows the cubic AGP
schedule (recomputing masks every ``--every`` steps from ``--begin`` to ``--end``) and never lets
a pruned weight come back. No optimizer is patched and the module object is never modified.

Run: ``python examples/functional_agp.py [--sparsity 0.8] [--steps 300] [--seed 0]``
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.func import functional_call, grad

import purecompress as pc
from purecompress.pruning import agp


def data(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Digits as float features in [0, 1]: (x_train [1400, 64], y_train, x_test [397, 64], y_test)."""
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[order[:1400]], y[order[:1400]], x[order[1400:]], y[order[1400:]]


def accuracy(model: nn.Module, params: pc.Params, x: Tensor, y: Tensor) -> float:
    """Test accuracy of ``model`` run with ``params``."""
    with torch.no_grad():
        return float((functional_call(model, params, (x,)).argmax(1) == y).float().mean())


def main(sparsity: float = 0.8, steps: int = 300, begin: int = 50, end: int = 200, every: int = 25,
         seed: int = 0) -> dict[str, float]:
    """Train an MLP while AGP prunes its Linear layers to ``sparsity``; returns the metrics."""
    torch.manual_seed(seed)
    x, y, x_test, y_test = data(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    params = {k: v.clone() for k, v in pc.params_of(model).items()}
    plan = pc.select(model, pc.from_config_list([{"sparsity": sparsity, "op_types": ["Linear"]}]))
    prune = agp(sparsity, plan, begin=begin, end=end, every=every)
    state = prune.init(params)

    def loss(p: pc.Params, xb: Tensor, yb: Tensor) -> Tensor:
        return nn.functional.cross_entropy(functional_call(model, p, (xb,)), yb)

    step_grad = grad(loss)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randint(len(x), (64,), generator=gen)
        g = step_grad(params, x[batch], y[batch])
        params = {k: v - 0.3 * g[k] for k, v in params.items()}
        params, state = prune.update(params, state)  # the one pruning line
    report = pc.sparsity_report(params, state.masks, plan)
    result = {"accuracy": accuracy(model, params, x_test, y_test), "sparsity": report.total,
              "scheduled": state.sparsity}
    print(f"AGP to {sparsity:.0%}: test accuracy {result['accuracy']:.3f}, weights pruned {report.total:.3f}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.sparsity, args.steps, seed=args.seed)
