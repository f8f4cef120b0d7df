"""Channel pruning through LayerNorm / GroupNorm: an explicit choice (``prune_norms=True``), reported.

Without the option a norm that normalises over the pruned channels keeps them (its statistics would
change) and the report names it; with it the channels go, the norm is sliced, the compact model
runs and the report says the norm's statistics changed (``output_error`` is then not a failure).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import purecompress as pc
from purecompress.graph import propagate, shrink

pytestmark = pytest.mark.usefixtures("one_thread")


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 -> LayerNorm (channels last) -> Linear -> GELU -> Linear, residual."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        return x + self.fc2(F.gelu(self.fc1(y))).permute(0, 3, 1, 2)


class ConvNeXtLike(nn.Module):
    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 2, stride=2)
        self.blocks = nn.Sequential(ConvNeXtBlock(c), ConvNeXtBlock(c))
        self.head = nn.Linear(c, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class GroupNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16)
        self.c2, self.n2 = nn.Conv2d(16, 16, 1), nn.GroupNorm(4, 16)  # 1x1: the folds are exact
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.silu(self.n1(self.c1(x)))
        y = F.silu(self.n2(self.c2(y)))
        return self.fc(y.mean((2, 3)))


def randomize_norms(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
            m.weight.data = 1 + 0.2 * torch.randn(m.weight.shape, generator=g)
            m.bias.data = 0.3 * torch.randn(m.bias.shape, generator=g)
    return model.eval()


def convnext_case() -> tuple[nn.Module, torch.Tensor, pc.Masks]:
    """Half of the residual stream (the same channels at the stem and both fc2) and of each fc1."""
    torch.manual_seed(0)
    model, x = randomize_norms(ConvNeXtLike()), torch.randn(2, 3, 16, 16)
    stream = torch.zeros(16, dtype=torch.bool)
    stream[model.stem.weight.detach().abs().sum((1, 2, 3)).topk(8).indices] = True
    masks = {"stem.weight": pc.Mask(stream.reshape(16, 1, 1, 1), (16, 3, 2, 2)), "stem.bias": pc.Mask(stream, (16,))}
    for i in (0, 1):
        hidden = torch.arange(64) % 2 == 0
        masks[f"blocks.{i}.fc1.weight"] = pc.Mask(hidden.reshape(64, 1), (64, 16))
        masks[f"blocks.{i}.fc1.bias"] = pc.Mask(hidden, (64,))
        masks[f"blocks.{i}.fc2.weight"] = pc.Mask(stream.reshape(16, 1), (16, 64))
        masks[f"blocks.{i}.fc2.bias"] = pc.Mask(stream, (16,))
    return model, x, masks


def test_convnext_block_keeps_the_stream_under_layernorm_and_says_why() -> None:
    model, x, masks = convnext_case()
    assert masks["stem.weight"].keep.sum() == 8  # the stream: stem and both fc2 share one mask
    compact, report = shrink(model, masks, x)
    assert compact.stem.out_channels == 16 and compact.blocks[0].norm.normalized_shape == (16,)
    assert compact.blocks[0].fc1.out_features == 32  # the MLP's hidden channels still shrink
    assert set(report.norms) == {"blocks.0.norm", "blocks.1.norm"}
    assert "keeps 8 channels" in report.norms["blocks.0.norm"]
    assert "prune_norms=True" in report.norms["blocks.0.norm"]
    assert report.output_error <= 1e-5


def test_convnext_block_prune_norms_slices_layernorm_and_runs() -> None:
    model, x, masks = convnext_case()
    compact, report = shrink(model, masks, x, prune_norms=True)
    assert compact.stem.out_channels == 8 and compact.blocks[1].dw.out_channels == 8
    assert compact.blocks[0].norm.normalized_shape == (8,) and compact.blocks[0].norm.weight.shape == (8,)
    assert compact.blocks[0].fc1.in_features == 8 and compact.blocks[1].fc2.out_features == 8
    assert compact.head.in_features == 8
    assert report.flops_after < shrink(model, masks, x)[1].flops_after
    with torch.no_grad():
        assert compact(torch.randn(3, 3, 16, 16)).shape == (3, 5)
    assert all("statistics change" in report.norms[n] for n in ("blocks.0.norm", "blocks.1.norm"))
    assert 1e-4 < report.output_error < 1.0  # measured, not a failure
    prop = propagate(model, masks, x, prune_norms=True)
    assert prop.norms == report.norms
    assert prop.masks["blocks.0.norm.weight"].keep.sum() == 8
    assert prop.masks["blocks.0.fc1.weight"].keep.any(0).sum() == 8


def test_groupnorm_net_partial_groups_only_with_the_option() -> None:
    torch.manual_seed(0)
    model, x = randomize_norms(GroupNormNet()), torch.randn(2, 3, 8, 8)
    keep = torch.ones(16, dtype=torch.bool)
    keep[[0, 5, 10, 15]] = False  # one channel from each of the 4 groups of n1
    rows = pc.Mask(keep.reshape(16, 1, 1, 1), (16, 3, 3, 3))
    masks = {"c1.weight": rows, "c1.bias": pc.Mask(keep, (16,))}
    compact, report = shrink(model, masks, x)
    assert compact.c1.out_channels == 16 and compact.n1.num_channels == 16
    assert "keeps 4 channels" in report.norms["n1"] and "whole groups" in report.norms["n1"]
    compact, report = shrink(model, masks, x, prune_norms=True)
    assert compact.c1.out_channels == 12 and compact.c2.in_channels == 12
    assert (compact.n1.num_groups, compact.n1.num_channels) == (4, 12)
    assert torch.equal(compact.n1.weight, model.n1.weight.detach()[keep])
    assert "statistics change" in report.norms["n1"] and report.output_error > 1e-4
    with torch.no_grad():
        assert compact(x).shape == (2, 5)


def test_groupnorm_unequal_groups_keep_their_channels_even_with_the_option() -> None:
    torch.manual_seed(0)
    model, x = randomize_norms(GroupNormNet()), torch.randn(2, 3, 8, 8)
    keep = torch.ones(16, dtype=torch.bool)
    keep[[0, 1, 5]] = False  # two from group 0, one from group 1
    masks = {"c1.weight": pc.Mask(keep.reshape(16, 1, 1, 1), (16, 3, 3, 3)), "c1.bias": pc.Mask(keep, (16,))}
    compact, report = shrink(model, masks, x, prune_norms=True)
    assert compact.c1.out_channels == 16 and "keeps 3 channels" in report.norms["n1"]


class LayerNorm2d(nn.LayerNorm):
    """timm / torchvision style: channels first outside, permuted to last inside its own forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


def test_a_layernorm_subclass_with_its_own_forward_keeps_its_channels() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), LayerNorm2d(8), nn.Conv2d(8, 4, 1)).eval()
    keep = torch.arange(8) % 2 == 0
    masks = {"0.weight": pc.Mask(keep.reshape(8, 1, 1, 1), (8, 3, 1, 1)), "0.bias": pc.Mask(keep, (8,))}
    x = torch.randn(2, 3, 6, 6)
    compact, report = shrink(model, masks, x, leaf_modules=[LayerNorm2d], prune_norms=True)
    assert compact[0].out_channels == 8 and report.output_error <= 1e-5
    assert "keeps 4 channels" in report.norms["1"]


def test_whole_groupnorm_groups_go_exactly_without_the_option() -> None:
    torch.manual_seed(0)
    model, x = randomize_norms(GroupNormNet()), torch.randn(2, 3, 8, 8)
    keep = torch.ones(16, dtype=torch.bool)
    keep[4:8] = False  # group 1 of n1
    masks = {"c1.weight": pc.Mask(keep.reshape(16, 1, 1, 1), (16, 3, 3, 3)), "c1.bias": pc.Mask(keep, (16,))}
    for prune_norms in (False, True):
        compact, report = shrink(model, masks, x, prune_norms=prune_norms)
        assert (compact.n1.num_groups, compact.n1.num_channels) == (3, 12)
        assert "n1" not in report.norms and report.output_error <= 1e-5
