"""An NNI 2.10-style pruning script on purecompress.compat: TorchEvaluator + data-driven pruners.

The script is written as for NNI (a training function, an optimizer, a criterion, an evaluator,
``pruner.compress()``); only the imports differ. It prunes a small residual conv net on digits
with TaylorFOWeightPruner (dependency-aware: the residual add's layers share channels), then with
ActivationAPoZRankPruner, and fine-tunes the masked model. No download, < 15 s on CPU.

Run: ``python examples/nni_style_evaluator.py [--sparsity 0.5]``
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor, nn

from purecompress.compat.evaluator import TorchEvaluator
from purecompress.compat.pruning import ActivationAPoZRankPruner, TaylorFOWeightPruner
from purecompress.compat.utils import compute_sparsity_mask2compact

_digits = load_digits()
_x = torch.tensor(_digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
_y = torch.tensor(_digits.target)
_order = torch.randperm(len(_x), generator=torch.Generator().manual_seed(0))
TRAIN = list(zip(_x[_order[:1400]].split(50), _y[_order[:1400]].split(50)))
TEST = (_x[_order[1400:]], _y[_order[1400:]])


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(x + self.conv2(F.relu(self.conv1(x))))  # stem and conv2 must keep the same channels
        return self.fc(F.adaptive_avg_pool2d(x, 2).flatten(1))


def training_func(model: nn.Module, optimizers: torch.optim.Optimizer, criterion: Callable[..., Tensor],
                  lr_schedulers: Any = None, max_steps: int | None = None, max_epochs: int | None = None) -> None:
    """The user's training loop, respecting NNI's max_steps/max_epochs."""
    model.train()
    steps = 0
    for _ in range(max_epochs or 2):
        for x, y in TRAIN:
            if max_steps is not None and steps >= max_steps:
                return
            optimizers.zero_grad()
            criterion(model(x), y).backward()
            optimizers.step()
            steps += 1


def evaluating_func(model: nn.Module) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(TEST[0]).argmax(-1) == TEST[1]).float().mean())


def prune(pruner_cls: type, model: nn.Module, config_list: list[dict], **kwargs: Any) -> tuple[float, float, float]:
    """Prune a copy of ``model`` NNI-style; returns (sparsity, one-shot accuracy, fine-tuned accuracy)."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    evaluator = TorchEvaluator(training_func, optimizer, F.cross_entropy, dummy_input=torch.rand(1, 1, 8, 8),
                               evaluating_func=evaluating_func)
    pruner = pruner_cls(model, config_list, evaluator, **kwargs)
    _, masks = pruner.compress()
    one_shot = evaluating_func(model)
    training_func(model, optimizer, F.cross_entropy, max_epochs=1)  # fine-tune the wrapped (masked) model
    tuned = evaluating_func(model)
    pruner._unwrap_model()
    sparsity = compute_sparsity_mask2compact(model, masks, config_list)[0]["total_sparsity"]
    return sparsity, one_shot, tuned


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.5)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = Net()
    training_func(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), F.cross_entropy, max_epochs=3)
    print(f"dense accuracy: {evaluating_func(model):.3f}")
    config_list = [{"sparsity": args.sparsity, "op_types": ["Conv2d"]}]
    runs = {
        "taylor (dependency_aware)": (TaylorFOWeightPruner, {"training_steps": 10, "mode": "dependency_aware"}),
        "apoz": (ActivationAPoZRankPruner, {"training_steps": 200}),
    }
    for name, (cls, kwargs) in runs.items():
        sparsity, one_shot, tuned = prune(cls, model, config_list, **kwargs)
        print(f"{name}: sparsity {sparsity:.3f}, one-shot accuracy {one_shot:.3f}, fine-tuned accuracy {tuned:.3f}")


if __name__ == "__main__":
    main()
