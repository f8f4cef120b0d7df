"""The lottery ticket procedure (Frankle & Carbin) as functions, on scikit-learn's digits (< 15 s).

Save the initial weights; then for each round: train, prune ``1 - (1 - s)^(1/N)`` of the surviving
weights by magnitude (``lottery_ticket(...).update``), and rewind the survivors to their initial
values (``rewind``). The final ticket is trained once more and compared with a random re-init of
the same mask.

Run: ``python examples/lottery_ticket.py [--rounds 3] [--sparsity 0.8] [--seed 0]``
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.func import functional_call, grad

import purecompress as pc
from purecompress.pruning import lottery_ticket, rewind


def data(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Digits as float features in [0, 1]."""
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[order[:1400]], y[order[:1400]], x[order[1400:]], y[order[1400:]]


def main(rounds: int = 3, sparsity: float = 0.8, steps: int = 150, seed: int = 0) -> dict[str, float]:
    """Run ``rounds`` of train / prune / rewind; returns the ticket's and a random re-init's accuracy."""
    torch.manual_seed(seed)
    x, y, x_test, y_test = data(seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    initial = {k: v.clone() for k, v in pc.params_of(model).items()}
    targets = ["0.weight", "2.weight"]

    def train(params: pc.Params, masks: pc.Masks) -> pc.Params:
        def loss(p: pc.Params, xb: Tensor, yb: Tensor) -> Tensor:
            return nn.functional.cross_entropy(functional_call(model, pc.apply_masks(p, masks), (xb,)), yb)

        step, gen = grad(loss), torch.Generator().manual_seed(seed)
        for _ in range(steps):
            batch = torch.randint(len(x), (64,), generator=gen)
            g = step(params, x[batch], y[batch])
            params = {k: v - 0.3 * g[k] for k, v in params.items()}
        return pc.apply_masks(params, masks)

    def accuracy(params: pc.Params) -> float:
        with torch.no_grad():
            return float((functional_call(model, params, (x_test,)).argmax(1) == y_test).float().mean())

    prune = lottery_ticket(sparsity, targets, rounds=rounds)
    state = prune.init(initial)
    params = dict(initial)
    for r in range(rounds):
        params = train(params, state.masks)
        _, state = prune.update(params, state)
        params = rewind(initial, state.masks, params)
        print(f"round {r + 1}: sparsity {state.sparsity:.3f}")
    ticket = accuracy(train(params, state.masks))
    torch.manual_seed(seed + 1)
    fresh = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    random_init = accuracy(train(rewind(pc.params_of(fresh), state.masks), state.masks))
    print(f"winning ticket accuracy {ticket:.3f}, same mask re-initialised {random_init:.3f}")
    return {"ticket": ticket, "random_init": random_init, "sparsity": state.sparsity}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.rounds, args.sparsity, seed=args.seed)
