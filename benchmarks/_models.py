"""Model builders shared by the benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["VGG16", "vgg"]

#: VGG-16's convolution layout (without the last block), for 32x32 inputs.
VGG16: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M")


def vgg(cfg: Sequence[int | str] = VGG16, *, hidden: int | None = None, classes: int = 10,
        spatial: int = 32) -> nn.Module:
    """Conv3x3-BN-ReLU blocks per ``cfg`` ("M" = 2x2 max-pool), then Linear layers to ``classes``
    (through a ``hidden`` Linear-ReLU when given)."""
    layers: list[nn.Module] = []
    channels = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            spatial //= 2
        else:
            layers += [nn.Conv2d(channels, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU()]
            channels = int(v)
    features = channels * spatial * spatial
    head: list[nn.Module] = [nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes)] if hidden \
        else [nn.Linear(features, classes)]
    return nn.Sequential(*layers, nn.Flatten(), *head)
