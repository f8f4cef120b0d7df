"""``ShrinkReport.dense``: every masked layer that shrinking leaves with channels its mask removes,
with the reason, shown by ``table()`` and logged; never a silent dense "compact" model."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import purecompress as pc
from purecompress.graph import shrink

pytestmark = pytest.mark.usefixtures("one_thread")

X = torch.randn(2, 4, 6, 6)


def half(module: nn.Module, rows: list[int] | None = None) -> pc.Mask:
    """A channel mask on ``module.weight`` removing ``rows`` (default: the first half)."""
    n = module.weight.shape[0]
    keep = torch.ones(n, dtype=torch.bool)
    keep[rows if rows is not None else list(range(n // 2))] = False
    return pc.Mask(keep.reshape(n, *([1] * (module.weight.dim() - 1))), tuple(module.weight.shape))


def check(model: nn.Module, masks: dict[str, pc.Mask], **kw: object) -> pc.ShrinkReport:
    """Shrink, and check the compact model against the masked one."""
    model.eval()
    compact, report = shrink(model, masks, X, **kw)
    masked = functional_call(model, pc.apply_masks(pc.params_of(model), masks), (X,))
    assert torch.allclose(compact(X), masked, atol=1e-5)
    return report


class ChannelsLast(nn.Module):
    """A LayerNorm over the channels between two convs (ConvNeXt's layout)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.norm, self.b = nn.Conv2d(4, 8, 1), nn.LayerNorm(8), nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.norm(self.a(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


class Cumsum(nn.Module):
    """An op that mixes channels (its channel flow is not in the op table)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 8, 1), nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.cumsum(self.a(x), 1))


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 8, 1), nn.Conv2d(8, 4, 1, groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(F.relu(self.a(x)))


class OwnConv(nn.Module):
    """A conv of no class shrink knows: it holds its weight and calls F.conv2d itself."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight)


class Unknown(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = OwnConv(), nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(F.relu(self.a(x)))


class Borrowed(nn.Module):
    """A Conv2d whose weight the parent's forward uses (the Conv2d itself is never called)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 8, 1), nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(F.relu(F.conv2d(x, self.a.weight, self.a.bias)))


class Padded(nn.Module):
    """conv -> BN (beta != 0) -> ReLU -> zero-padded 3x3 conv: beta folds inexactly at the borders."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn, self.b = nn.Conv2d(4, 8, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 3, 3, padding=1)
        with torch.no_grad():
            self.bn.bias.uniform_(0.5, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(F.relu(self.bn(self.a(x))))


def test_channels_meeting_a_layernorm_are_reported() -> None:
    model = ChannelsLast()
    report = check(model, {"a.weight": half(model.a)})
    assert list(report.dense) == ["a"]
    assert report.dense["a"].startswith("4 of 4 removed channels kept: its channels meet a LayerNorm")
    assert "'norm'" in report.dense["a"]


def test_an_op_of_unknown_channel_flow_is_named() -> None:
    model = Cumsum()
    report = check(model, {"a.weight": half(model.a)})
    assert "blocked by op 'cumsum'" in report.dense["a"] and "not known" in report.dense["a"]


def test_unbalanced_groups_are_the_reason() -> None:
    model = Grouped()
    report = check(model, {"a.weight": half(model.a, [0, 1, 2])})  # all three in the first group
    assert "unbalanced groups: grouped conv 'b' (2 groups)" in report.dense["a"]


def test_a_class_with_no_replacement_is_the_reason() -> None:
    model = Unknown()
    report = check(model, {"a.weight": half(model.a)})
    assert report.dense == {"a": "no replacement for its class OwnConv"}


def test_a_layer_whose_weight_another_forward_reads_is_reported() -> None:
    model = Borrowed()
    report = check(model, {"a.weight": half(model.a)})
    assert report.dense["a"].startswith("no call of Conv2d 'a' in the graph")


def test_exact_keeps_a_constant_it_cannot_fold_and_says_so() -> None:
    model = Padded().eval()
    masks = {"a.weight": half(model.a), "a.bias": pc.Mask(torch.tensor([False] * 4 + [True] * 4), (8,))}
    _, loose = shrink(model, masks, X)
    assert loose.dense == {} and set(loose.inexact) == {"b"}  # removed, folded with a deviation
    report = check(model, masks, exact=True)
    assert report.dense["a"].startswith("4 of 4 removed channels kept: its constant cannot be folded exactly "
                                        "into 'b'")


def test_channels_reaching_the_output_are_reported() -> None:
    model = nn.Sequential(nn.Conv2d(4, 8, 1), nn.ReLU(), nn.Conv2d(8, 6, 1))
    report = check(model, {"0.weight": half(model[0]), "2.weight": half(model[2])})
    assert list(report.dense) == ["2"] and report.dense["2"].endswith("its channels reach the model's output")


def test_table_and_warning_name_the_dense_layers(caplog: pytest.LogCaptureFixture) -> None:
    model = Cumsum()
    with caplog.at_level(logging.WARNING, logger="purecompress.graph"):
        report = check(model, {"a.weight": half(model.a), "b.weight": half(model.b, [0])})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "ShrinkReport" in r.message]
    assert len(warnings) == 1 and "shrink left 2 masked layers" in warnings[0] and "a: 4 of 4" in warnings[0]
    table = report.table()
    assert "| left dense |" in table.splitlines()[0]
    row = next(line for line in table.splitlines() if line.startswith("| a |"))
    assert row.endswith(f"| {report.dense['a']} |")
    assert "2 masked layers left dense" in table.splitlines()[-1]


def test_nothing_dense_when_every_removed_channel_goes(caplog: pytest.LogCaptureFixture) -> None:
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 3, 1))
    with caplog.at_level(logging.WARNING, logger="purecompress.graph"):
        report = check(model, {"0.weight": half(model[0])})
    assert report.dense == {} and report.replaced == ("0", "1", "3")
    assert not [r for r in caplog.records if "ShrinkReport.dense" in r.getMessage()]
    assert report.table().splitlines()[-1].endswith("| 0 masked layers left dense |")


class DepthwiseAfterCumsum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.dw, self.b = nn.Conv2d(4, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(F.relu(self.dw(torch.cumsum(self.a(x), 1))))


def test_a_depthwise_conv_whose_input_is_not_followed_names_that_input() -> None:
    model = DepthwiseAfterCumsum()
    report = check(model, {"dw.weight": half(model.dw)})
    assert report.dense["dw"].startswith("a depthwise conv, its channels are its input's")
    assert "(node 'cumsum')" in report.dense["dw"]
