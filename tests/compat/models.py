"""Small models shared by the compat tests: seeded parity models (each with an example input), the quantizer net."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ConvBNLinear", "EmbedConvT", "Grouped", "MODELS", "QuantNet", "build"]


class ConvBNLinear(nn.Module):
    """conv -> BN -> relu (x2) -> pool -> linear -> relu -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(16, 20)
        self.fc2 = nn.Linear(20, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(self.pool(self.features(x)).flatten(1))))

    @staticmethod
    def example() -> Tensor:
        return torch.randn(2, 3, 8, 8)


class Grouped(nn.Module):
    """grouped conv -> depthwise conv -> pointwise conv -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.group = nn.Conv2d(4, 8, 3, groups=2)
        self.depthwise = nn.Conv2d(8, 8, 3, groups=8)
        self.pointwise = nn.Conv2d(8, 12, 1)
        self.head = nn.Linear(12, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pointwise(torch.relu(self.depthwise(torch.relu(self.group(x)))))
        return self.head(x.mean((2, 3)))

    @staticmethod
    def example() -> Tensor:
        return torch.randn(2, 4, 9, 9)


class EmbedConvT(nn.Module):
    """embedding -> linear -> transposed conv -> linear (tokens in, logits out)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 10)
        self.proj = nn.Linear(10, 16)
        self.up = nn.ConvTranspose2d(4, 6, 3)
        self.out = nn.Linear(6 * 4 * 4, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.proj(self.embed(tokens).mean(1)).view(-1, 4, 2, 2)
        return self.out(torch.relu(self.up(x)).flatten(1))

    @staticmethod
    def example() -> Tensor:
        return torch.randint(0, 20, (2, 5))


class QuantNet(nn.Module):
    """conv -> (BN) -> relu -> linear on ``[N, 1, 8, 8]``: the quantizer tests' model (not in MODELS)."""

    def __init__(self, bn: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.bn1 = nn.BatchNorm2d(4) if bn else nn.Identity()
        self.relu1 = nn.ReLU()
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.relu1(self.bn1(self.conv1(x))).flatten(1))


MODELS = {"conv_bn_linear": ConvBNLinear, "grouped": Grouped, "embed_convt": EmbedConvT}


def build(name: str, seed: int = 0) -> nn.Module:
    """A fresh model ``name`` with weights drawn from ``seed`` (all parameters distinct)."""
    torch.manual_seed(seed)
    model = MODELS[name]()
    with torch.no_grad():
        for p in model.parameters():  # BN weights start at 1: make every metric distinct
            p.copy_(torch.randn_like(p))
    return model
