"""ResNet building blocks shared by the dependency tests (tests/test_dependency.py and its NNI parity)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Basic", "Bottleneck", "conv_bn"]


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Bias-free ``k x k`` conv ('same' padding for odd ``k``) -> BatchNorm."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class Basic(nn.Module):
    """ResNet basic block; a 1x1 downsample conv when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.conv2 = conv_bn(cin, cout, stride=stride), conv_bn(cout, cout)
        self.down = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.down(x))


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3 with ``groups``, 1x1); a 1x1 downsample conv when the width changes."""

    def __init__(self, cin: int, mid: int, cout: int, groups: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(cin, mid, 1), nn.ReLU(), conv_bn(mid, mid, groups=groups), nn.ReLU(),
            conv_bn(mid, cout, 1),
        )  # fmt: skip
        self.down = conv_bn(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        return (self.body(x) + identity).relu()
