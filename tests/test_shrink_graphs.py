"""Graphs that broke propagate/shrink (issue 13): a Linear fed by a buffer (swin v2's position-bias
MLP), ``MultiheadAttention(need_weights=False)``, stochastic depth in a residual branch, and a
forward with shape-dependent control flow (timm's MobileViT block)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import purecompress as pc
from purecompress.graph import capture_info, channel_dependency, propagate, shrink

pytestmark = pytest.mark.usefixtures("one_thread")


def rows(module: nn.Module, removed: list[int]) -> pc.Mask:
    """A channel mask on ``module.weight`` removing the output channels ``removed``."""
    n = module.weight.shape[0]
    keep = torch.ones(n, dtype=torch.bool)
    keep[removed] = False
    return pc.Mask(keep.reshape(n, *([1] * (module.weight.dim() - 1))), tuple(module.weight.shape))


def shrunk(model: nn.Module, masks: pc.Masks, x: torch.Tensor) -> tuple[nn.Module, pc.ShrinkReport]:
    """Shrink; check the compact model against the masked one."""
    model.eval()
    compact, report = shrink(model, masks, x)
    masked = functional_call(model, pc.apply_masks(pc.params_of(model), masks), (x,))
    with torch.no_grad():
        out = compact(x)
    assert float((out - masked).norm() / masked.norm()) <= 1e-5
    return compact, report


class PositionBias(nn.Module):
    """Swin v2's continuous position bias: an MLP on a constant coordinate table, added to logits."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("table", torch.randn(1, 5, 2))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 4, bias=False))
        self.qk = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.qk(x) + 16 * torch.sigmoid(self.cpb_mlp(self.table))).softmax(-1)


def test_a_linear_fed_by_a_buffer_keeps_what_its_mask_keeps() -> None:
    torch.manual_seed(0)
    model, x = PositionBias(), torch.randn(2, 5, 8)
    masks = {"cpb_mlp.0.weight": rows(PositionBias().cpb_mlp[0], list(range(0, 16, 2)))}
    full = propagate(model, masks, x)  # raised EmptyLayerError: every channel of cpb_mlp.0 is constant
    compact, report = shrunk(model, masks, x)
    assert compact.cpb_mlp[0].out_features == 8 and compact.cpb_mlp[2].in_features == 8
    assert compact.cpb_mlp[2].bias is not None  # the removed channels' constant, folded into a new bias
    assert report.dense == {} and not report.inexact
    # the dense model has no bias to hold that constant: propagate keeps the channels that carry
    # one (a ReLU-zeroed channel still goes), so its masked model is the compact model's function
    assert 0 < int((~full.masks["cpb_mlp.0.bias"].keep).sum()) < 8
    with torch.no_grad():
        propagated = functional_call(model, pc.apply_masks(full.params, full.masks), (x,))
        torch.testing.assert_close(propagated, compact(x), rtol=1e-5, atol=1e-6)


def test_an_unmasked_linear_fed_by_a_buffer_is_kept_whole() -> None:
    model, x = PositionBias(), torch.randn(2, 5, 8)
    compact, report = shrunk(model, {"qk.weight": rows(model.qk, [])}, x)
    assert compact.cpb_mlp[0].out_features == 16 and report.replaced == ()


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.mha, self.b = nn.Linear(8, 16), nn.MultiheadAttention(16, 2, batch_first=True), nn.Linear(16, 8)
        self.c = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        z, weights = self.mha(y, y, y, need_weights=False)  # (out, None)
        assert weights is None
        return self.c(F.relu(self.b(z + y)))


def test_multihead_attention_without_weights_propagates() -> None:
    torch.manual_seed(0)
    model, x = Attention(), torch.randn(2, 5, 8)
    masks = {"a.weight": rows(model.a, list(range(8))), "b.weight": rows(model.b, [0, 1, 2, 3])}
    propagate(model, masks, x)  # the vjp crashed on the None
    compact, report = shrunk(model, masks, x)
    assert compact.b.out_features == 4 and compact.c.in_features == 4
    assert list(report.dense) == ["a"] and "MultiheadAttention 'mha'" in report.dense["a"]


class Residual(nn.Module):
    """An inverted-residual block with a drop layer on its branch (EfficientNet's)."""

    def __init__(self, drop: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.expand, self.project, self.drop = nn.Conv2d(8, 16, 1), nn.Conv2d(16, 8, 1), drop
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = y + self.drop(self.project(F.relu(self.expand(y))))
        return self.head(y)


def drop_layers() -> list[nn.Module]:
    ops = pytest.importorskip("torchvision.ops")
    timm_layers = pytest.importorskip("timm.layers")
    return [ops.StochasticDepth(0.2, "row"), timm_layers.DropPath(0.2)]


@pytest.mark.parametrize("index", [0, 1], ids=["torchvision-StochasticDepth", "timm-DropPath"])
def test_stochastic_depth_in_a_residual_branch_passes_the_channels(index: int) -> None:
    torch.manual_seed(0)
    model, x = Residual(drop_layers()[index]), torch.randn(2, 3, 5, 5)
    assert channel_dependency(model, x) == [("stem", "project"), ("expand",), ("head",)]
    masks = {"stem.weight": rows(model.stem, [0, 2, 4, 6]), "project.weight": rows(model.project, [0, 2, 4, 6])}
    compact, report = shrunk(model, masks, x)
    assert report.dense == {} and compact.stem.out_channels == compact.project.out_channels == 4
    assert compact.head.in_channels == 4 and compact.expand.in_channels == 4


class MobileVitBlock(nn.Module):
    """timm's MobileViT block, small: a shape-dependent branch (interpolate when the size is not a
    multiple of the patch), channels folded into the batch to unfold patches, a LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_kxk, self.conv_1x1 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 12, 1, bias=False)
        self.norm, self.fc = nn.LayerNorm(12), nn.Linear(12, 12)
        self.conv_proj, self.head = nn.Conv2d(12, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        shortcut, x = x, self.conv_1x1(F.relu(self.conv_kxk(x)))
        b, c, h, w = x.shape
        new_h, new_w = math.ceil(h / 2) * 2, math.ceil(w / 2) * 2
        interpolate = new_h != h or new_w != w
        if interpolate:
            x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
        nh, nw = new_h // 2, new_w // 2
        x = x.reshape(b * c * nh, 2, nw, 2).transpose(1, 2).reshape(b, c, nh * nw, 4).transpose(1, 3)
        x = x.reshape(b * 4, -1, c)
        x = x + self.fc(self.norm(x))
        x = x.contiguous().view(b, 4, nh * nw, -1).transpose(1, 3).reshape(b * c * nh, nw, 2, 2)
        x = x.transpose(1, 2).reshape(b, c, nh * 2, nw * 2)
        if interpolate:
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        return self.head(self.conv_proj(x) + shortcut)


def test_a_shape_dependent_branch_is_recorded_and_followed() -> None:
    torch.manual_seed(0)
    model, x = MobileVitBlock(), torch.randn(1, 3, 7, 7)  # 7 is no multiple of the patch: the branch runs
    masks = {"conv_kxk.weight": rows(model.conv_kxk, [1, 3, 5, 7]), "conv_1x1.weight": rows(model.conv_1x1, [0, 1])}
    compact, report = shrunk(model, masks, x)
    assert capture_info(pc.capture(model, x)).method == "record"  # torch.fx cannot trace the `if`
    assert compact.conv_kxk.out_channels == 4 and compact.conv_1x1.in_channels == 4
    assert list(report.dense) == ["conv_1x1"] and "blocked by op 'reshape'" in report.dense["conv_1x1"]
    with torch.no_grad():  # the recorded graph holds for the example's shape; the compact model runs on others
        assert compact(torch.randn(1, 3, 8, 8)).shape == (1, 4, 8, 8)
