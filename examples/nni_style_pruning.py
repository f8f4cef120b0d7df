"""An NNI 2.x-style one-shot pruning script, running on purecompress.compat.

Written exactly as for NNI 2.10 (a model, a config_list, ``pruner.compress()``,
``show_pruned_weights()``, ``export_model()``, fine-tuning the wrapped model); only the imports
name ``purecompress.compat`` instead of ``nni``. The same text with NNI's imports runs unchanged
through ``python -m purecompress.compat examples/nni_style_pruning.py``.

Run: ``python examples/nni_style_pruning.py [--sparsity 0.5] [--out DIR]`` (generated data, a few seconds).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile

import torch
import torch.nn.functional as F
from torch import nn

from purecompress.compat import trace
from purecompress.compat.pruning import L1NormPruner


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 2 * 2, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def make_data(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes of 8x8 images: a brighter quadrant (under noise) tells the class."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g)
    for i, label in enumerate(y.tolist()):
        r, c = divmod(label, 2)
        x[i, 0, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] += 0.5
    return x, y


def train(model: nn.Module, optimizer: torch.optim.Optimizer, data: tuple[torch.Tensor, torch.Tensor],
          steps: int) -> None:
    model.train()
    x, y = data
    for step in range(steps):
        batch = slice((step * 32) % len(x), (step * 32) % len(x) + 32)
        optimizer.zero_grad()
        F.cross_entropy(model(x[batch]), y[batch]).backward()
        optimizer.step()


def accuracy(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    model.eval()
    with torch.no_grad():
        return (model(data[0]).argmax(1) == data[1]).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--out", default=None, help="folder for the pruned model and masks (default: a temp dir)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # NNI prints show_pruned_weights at INFO
    torch.manual_seed(0)

    data = make_data()
    model = SmallCNN()
    optimizer = trace(torch.optim.SGD)(model.parameters(), lr=0.05, momentum=0.9)
    train(model, optimizer, data, steps=30)
    print(f"dense accuracy: {accuracy(model, data):.3f}")

    config_list = [{"sparsity": args.sparsity, "op_types": ["Conv2d", "Linear"]},
                   {"exclude": True, "op_names": ["fc2"]}]
    pruner = L1NormPruner(model, config_list)
    _, masks = pruner.compress()
    pruner.show_pruned_weights()
    kept = sum(int(m["weight"].sum()) for m in masks.values())
    total = sum(m["weight"].numel() for m in masks.values())
    print(f"pruned layers: {sorted(masks)}; weight sparsity of pruned layers: {1 - kept / total:.3f}")
    print(f"pruned accuracy: {accuracy(model, data):.3f}")

    train(model, optimizer, data, steps=20)  # the wrapped model fine-tunes with its masks applied
    print(f"fine-tuned accuracy: {accuracy(model, data):.3f}")

    out = args.out or tempfile.mkdtemp(prefix="nni_style_pruning_")
    os.makedirs(out, exist_ok=True)
    pruner.export_model(model_path=os.path.join(out, "pruned_model.pth"), mask_path=os.path.join(out, "mask.pth"))
    print(f"exported to {out}")


if __name__ == "__main__":
    main()
