"""ConvNeXt-style residual streams through LayerNorm and layer scale (issue 13).

``channel_dependency(..., through_norms=True)`` follows channels to the dim that holds them, so the
stem and every block's last Linear share one set across channels-last LayerNorms, a traced
``LayerNorm2d`` and ``x * layer_scale``; without it the sets are NNI's (dim 1 only).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import purecompress as pc

pytestmark = pytest.mark.usefixtures("one_thread")


class LayerNorm2d(nn.LayerNorm):
    """torchvision's: channels first outside, a channels-last layer_norm inside (traced through)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.layer_scale = nn.Parameter(torch.rand(c, 1, 1) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(F.gelu(self.fc1(self.norm(self.dw(x).permute(0, 2, 3, 1)))))
        return x + self.layer_scale * y.permute(0, 3, 1, 2)


class ConvNeXtLike(nn.Module):
    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem, self.stem_norm = nn.Conv2d(3, c, 2, stride=2), LayerNorm2d(c)
        self.stage1 = nn.Sequential(Block(c), Block(c))
        self.down_norm, self.down = LayerNorm2d(c), nn.Conv2d(c, 2 * c, 2, stride=2)
        self.stage2 = nn.Sequential(Block(2 * c))
        self.head = nn.Linear(2 * c, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stage1(self.stem_norm(self.stem(x)))
        return self.head(self.stage2(self.down(self.down_norm(y))).mean((2, 3)))


STREAM1 = ("stem", "stage1.0.dw", "stage1.0.fc2", "stage1.1.dw", "stage1.1.fc2")
STREAM2 = ("down", "stage2.0.dw", "stage2.0.fc2")


def test_through_norms_puts_each_residual_stream_in_one_set() -> None:
    sets = pc.channel_dependency(ConvNeXtLike(), torch.randn(1, 3, 24, 24), through_norms=True)
    assert STREAM1 in sets and STREAM2 in sets
    assert ("stage1.0.fc1",) in sets and ("head",) in sets


def test_without_through_norms_the_sets_stop_at_the_permutes() -> None:
    sets = pc.channel_dependency(ConvNeXtLike(), torch.randn(1, 3, 24, 24))  # H != C: no coincidence
    assert ("stage1.0.fc2",) in sets and not any({"stem", "stage1.0.fc2"} <= set(s) for s in sets)


def half_l1(model: nn.Module, x: torch.Tensor) -> pc.Masks:
    """50% dependency-aware L1 on every conv / Linear but the head, sets ``through_norms``."""
    params = pc.params_of(model)
    plan = pc.select(model, pc.from_config_list([{"sparsity": 0.5, "op_types": ["Conv2d", "Linear"]},
                                                 {"exclude": True, "op_names": ["head"]}]))
    sets = pc.channel_dependency(model, x, through_norms=True)
    masks = pc.allocate_dependency_aware(pc.l1_norm(params, plan), 0.5, channel_sets=sets)
    return pc.bias_masks(masks, {k: tuple(v.shape) for k, v in params.items() if k.endswith(".bias")})


def test_prune_norms_halves_the_stream_and_slices_layer_scales_and_traced_norms() -> None:
    torch.manual_seed(0)
    model, x = ConvNeXtLike().eval(), torch.randn(2, 3, 24, 24)
    masks = half_l1(model, x)
    compact, report = pc.shrink(model, masks, x, prune_norms=True)
    assert (compact.stem.out_channels, compact.stage1[1].fc2.out_features, compact.down.out_channels) == (4, 4, 8)
    assert compact.stem_norm.normalized_shape == (4,) and compact.stage1[0].norm.normalized_shape == (4,)
    assert compact.stage1[0].layer_scale.shape == (4, 1, 1) and compact.head.in_features == 8
    assert report.dense == {}
    assert set(report.sliced) == {"stem_norm.weight", "stem_norm.bias", "down_norm.weight", "down_norm.bias",
                                  "stage1.0.layer_scale", "stage1.1.layer_scale", "stage2.0.layer_scale"}
    assert "(8, 1, 1) -> (4, 1, 1)" in report.sliced["stage1.0.layer_scale"]
    assert set(report.norms) == {"stem_norm", "down_norm", "stage1.0.norm", "stage1.1.norm", "stage2.0.norm"}
    assert all("statistics change" in note for note in report.norms.values())
    assert 1e-4 < report.output_error < 1.0  # the norms' statistics changed: measured, not a failure
    with torch.no_grad():
        assert compact(torch.randn(3, 3, 40, 40)).shape == (3, 5)
    keep = compact.stage1[0].layer_scale.detach().flatten()
    assert torch.equal(keep, model.stage1[0].layer_scale.detach().flatten()[masks["stem.bias"].keep])
    prop = pc.propagate(model, masks, x, prune_norms=True)
    assert prop.masks["stage1.0.layer_scale"].keep.flatten().sum() == 4
    assert torch.equal(prop.masks["stem_norm.weight"].keep, masks["stem.bias"].keep)
    assert report.flops_after < pc.shrink(model, masks, x)[1].flops_after


def test_without_prune_norms_the_stream_stays_and_the_report_says_why() -> None:
    torch.manual_seed(0)
    model, x = ConvNeXtLike().eval(), torch.randn(2, 3, 24, 24)
    compact, report = pc.shrink(model, half_l1(model, x), x)
    assert compact.stem.out_channels == 8 and compact.stage1[0].fc1.out_features == 16
    assert report.sliced == {} and report.output_error <= 1e-5
    assert "LayerNorm-like" in report.dense["stem"] and "layer_scale" in report.dense["stage1.0.fc2"]
