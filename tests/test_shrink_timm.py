"""Shrinking models built from timm's own layers: subclasses of the layers shrink knows
(``BatchNormAct2d``, ``Conv2dSame``), composites (``ConvNormAct``, ``SqueezeExcite``,
``MixedConv2d``) and tiny timm models; the compact model equals the masked one and is smaller."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import purecompress as pc
from purecompress.graph import capture, channel_dependency, group_dependency, propagate
from tests.test_shrink_graphs import shrunk as shrunk_checked

timm = pytest.importorskip("timm")
layers = pytest.importorskip("timm.layers")

pytestmark = pytest.mark.usefixtures("one_thread")


def prune_half(model: nn.Module, x: torch.Tensor, skip: tuple[str, ...]) -> pc.Masks:
    """50% dependency-aware L1 on every conv/linear but ``skip``, propagated (the zoo sweep's recipe)."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in skip]
    graph = capture(model, x)
    params = pc.params_of(model)
    metrics = pc.l1_norm(params, pc.select(model, pc.from_config_list([{"sparsity_per_layer": 0.5,
                                                                        "op_names": names}])))
    masks = pc.allocate_dependency_aware(metrics, 0.5, channel_sets=channel_dependency(graph, couple_depthwise=True),
                                         groups=group_dependency(graph))
    return propagate(model, masks, x).masks


def shrunk(model: nn.Module, x: torch.Tensor, skip: tuple[str, ...]) -> tuple[nn.Module, pc.ShrinkReport]:
    """Shrink the pruned model and check the compact model against the masked one."""
    return shrunk_checked(model, prune_half(model, x, skip), x)


def trained_like(model: nn.Module) -> nn.Module:
    """Norm scales away from timm's init (which zeroes the last BN of residual blocks)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


class Tiny(nn.Module):
    """An EfficientNet/MixNet-like net from timm's layers."""

    def __init__(self, drop: type[nn.Module] | None = None) -> None:
        super().__init__()
        self.stem = layers.ConvNormAct(3, 16, 3, stride=2, padding="same", act_layer=nn.SiLU)  # Conv2dSame
        self.dw = layers.MixedConv2d(16, 16, [3, 5], depthwise=True)
        self.bn = layers.BatchNormAct2d(16, act_layer=nn.SiLU, drop_layer=drop)
        self.se = layers.SqueezeExcite(16, rd_channels=8)
        self.pw = layers.MixedConv2d(16, 24, [1, 1])
        self.bn2 = layers.BatchNormAct2d(24, apply_act=False)
        self.head = layers.ConvNormAct(24, 32, 1, act_layer=nn.Hardswish)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn2(self.pw(self.bn(self.dw(self.se(self.stem(x))))))
        return self.fc(self.head(x).mean((2, 3)))


X = torch.randn(2, 3, 16, 16)


def test_timm_layers_shrink_and_keep_their_classes() -> None:
    model = trained_like(Tiny())
    assert isinstance(model.stem.conv, layers.Conv2dSame)
    # MixedConv2d's depthwise pieces unmasked: channel_dependency's sets join whole layers, not the pieces
    # of a split, so it would choose them apart from the stem; the stem's removed channels pass through
    compact, report = shrunk(model, X, ("fc", "dw.0", "dw.1"))
    assert report.dense == {}
    assert report.flops_after < 0.5 * report.flops_before
    assert type(compact.stem.conv) is layers.Conv2dSame and compact.stem.conv.out_channels == 8
    bn = compact.stem.bn
    assert type(bn) is layers.BatchNormAct2d and isinstance(bn.act, nn.SiLU) and bn.num_features == 8
    assert type(compact.head.bn.act) is nn.Hardswish
    assert compact.dw.splits == [c.in_channels for c in compact.dw.values()] and sum(compact.dw.splits) == 8
    assert compact.pw.splits == [c.in_channels for c in compact.pw.values()] and sum(compact.pw.splits) == 8
    assert compact.pw.out_channels == sum(c.out_channels for c in compact.pw.values())
    assert compact.se.fc2.out_channels == 8 and compact.se.fc1.out_channels == 4
    assert {"stem.conv", "stem.bn", "dw.0", "dw.1", "bn", "se.fc1", "se.fc2", "pw.0", "pw.1"} <= set(report.replaced)


def test_a_norm_subclass_holding_an_unknown_module_is_traced_and_reported() -> None:
    """BatchNormAct2d with a DropBlock (not element-wise) is no leaf: its functional batch_norm blocks, said so."""
    model = trained_like(Tiny(drop=layers.DropBlock2d))
    _, report = shrunk(model, X, ("fc",))
    assert {"stem.conv", "dw.0", "dw.1"} & set(report.dense)
    assert all("batch_norm" in why for name, why in report.dense.items() if name in ("dw.0", "dw.1"))


@pytest.mark.parametrize("name", ["tf_efficientnet_b0", "mobilenetv3_large_100", "regnetx_002", "repvgg_a0"])
def test_timm_models_shrink_to_under_31_percent_of_their_macs(name: str) -> None:
    model = trained_like(timm.create_model(name, pretrained=False))
    clf = model.get_classifier()
    skip = tuple(n for n, m in model.named_modules() if m is clf)
    _, report = shrunk(model, torch.randn(1, 3, 64, 64), skip)
    assert report.dense == {}
    assert report.flops_after < 0.31 * report.flops_before


def test_masked_pieces_of_a_depthwise_mixed_conv_are_reported_not_silent() -> None:
    """Masked too, the depthwise pieces get masks of their own (their sets do not reach the stem's):
    the channels where the masks disagree stay, and the report says which and why."""
    model = trained_like(Tiny())
    _, report = shrunk(model, X, ("fc",))
    assert report.dense and all("live at node" in why for why in report.dense.values())
    assert report.flops_after < report.flops_before
