"""Mask propagation rules: what is removed, where it is blocked, and the conflict rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import purecompress as pc
from purecompress.graph import EmptyLayerError, UnbalancedGroupsError, channel_plan, propagate, shrink
from purecompress.pruning import Mask

pytestmark = pytest.mark.usefixtures("one_thread")


def rows(shape: tuple[int, ...], pruned: list[int]) -> Mask:
    keep = torch.ones(shape[0], dtype=torch.bool)
    keep[pruned] = False
    return Mask(keep.reshape(-1, *([1] * (len(shape) - 1))), shape)


def kept_out(plan, name: str) -> list[int]:
    return plan.slices[name].keep_out.nonzero().flatten().tolist()


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.c(F.relu(y + self.b(y)))


def test_chain_masks_bn_and_consumer_columns() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    masks = {"0.weight": rows((4, 3, 3, 3), [2]), "0.bias": Mask(torch.tensor([True, True, False, True]), (4,))}
    out = propagate(net, masks, torch.randn(2, 3, 6, 6)).masks
    assert out["1.weight"].keep.tolist() == [True, True, False, True]
    assert out["1.bias"].keep.tolist() == [True, True, False, True]
    cols = out["4.weight"].to_dense()[0].reshape(4, 16)  # flatten: channel-major features
    assert cols.sum(1).tolist() == [16, 16, 0, 16]
    assert masks["0.weight"].keep.sum() == 3  # the input masks are not changed


def test_residual_add_removes_only_channels_pruned_in_every_operand() -> None:
    net = Residual()
    x = torch.randn(2, 3, 4, 4)
    masks = pc.bias_masks({"a.weight": rows((4, 3, 1, 1), [0, 1]), "b.weight": rows((4, 4, 1, 1), [1, 2])},
                          {"a.bias": (4,), "b.bias": (4,)})
    plan = channel_plan(net, masks, x)
    assert kept_out(plan, "a") == kept_out(plan, "b") == [0, 2, 3]
    assert plan.slices["c"].keep_in.tolist() == [True, False, True, True]


def test_concat_offsets_and_chunk_pieces() -> None:
    class Cat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 2, 1), nn.Conv2d(3, 3, 1), nn.Conv2d(5, 2, 1)
            self.d = nn.Conv2d(3, 4, 1)
            self.e = nn.Conv2d(2, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            left, _ = torch.chunk(self.d(x), 2, dim=1)
            return self.c(torch.cat([self.a(x), self.b(x)], 1)).sum() + self.e(left).sum()

    masks = {"a.weight": rows((2, 3, 1, 1), [1]), "a.bias": Mask(torch.tensor([True, False]), (2,)),
             "b.weight": rows((3, 3, 1, 1), [0]), "b.bias": Mask(torch.tensor([False, True, True]), (3,)),
             "d.weight": rows((4, 3, 1, 1), [0]), "d.bias": Mask(torch.tensor([False, True, True, True]), (4,))}
    plan = channel_plan(Cat(), masks, torch.randn(1, 3, 4, 4))
    assert plan.slices["c"].keep_in.tolist() == [True, False, False, True, True]
    # the chunk's pieces keep one channel each (0 is masked, 3 is in the unused piece): balanced
    assert plan.slices["d"].keep_out.tolist() == [False, True, True, False]


def test_depthwise_conv_follows_its_input() -> None:
    net = nn.Sequential(nn.Conv2d(3, 6, 1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.Conv2d(6, 2, 1))
    plan = channel_plan(net, {"0.weight": rows((6, 3, 1, 1), [1, 4]),
                              "0.bias": Mask(torch.tensor([1, 0, 1, 1, 0, 1]) > 0, (6,))}, torch.randn(1, 3, 5, 5))
    assert kept_out(plan, "0") == kept_out(plan, "2") == [0, 2, 3, 5]
    compact, _ = shrink(net, {"0.weight": rows((6, 3, 1, 1), [1, 4])}, torch.randn(1, 3, 5, 5))
    assert compact[2].groups == 4 and compact[3].in_channels == 4


def test_unbalanced_groups_keep_channels_back_or_raise() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1, groups=2), nn.Conv2d(4, 2, 1))
    masks = {"0.weight": rows((4, 3, 1, 1), [0])}
    x = torch.randn(1, 3, 3, 3)
    plan = channel_plan(net, masks, x)
    assert "0" not in plan.slices  # group 0 keeps channel 0 back: as many as group 1
    wide = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1, groups=2), nn.Conv2d(4, 2, 1))
    padded = channel_plan(wide, {"0.weight": rows((8, 3, 1, 1), [0, 1, 4])}, x)
    # group 0 keeps 2 of 4, group 1 keeps 3: the first removed channel of group 0 comes back
    assert padded.slices["0"].keep_out.tolist() == [True, False, True, True, False, True, True, True]
    compact, report = shrink(wide, {"0.weight": rows((8, 3, 1, 1), [0, 1, 4])}, x)
    assert compact[2].in_channels == 6 and report.output_error < 1e-5
    with pytest.raises(UnbalancedGroupsError):
        channel_plan(net, masks, x, strict=True)
    balanced = channel_plan(net, {"0.weight": rows((4, 3, 1, 1), [0, 2])}, x)
    assert plan is not balanced and balanced.slices["2"].keep_in.tolist() == [False, True, False, True]


def test_empty_layer_is_an_error() -> None:
    net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU(), nn.Conv2d(2, 2, 1))
    with pytest.raises(EmptyLayerError, match="'0'"):
        channel_plan(net, {"0.weight": rows((2, 3, 1, 1), [0, 1])}, torch.randn(1, 3, 2, 2))


@pytest.mark.parametrize("tail", ["groupnorm", "output", "literal_view", "channel_mean"])
def test_blocking_ops_keep_channels(tail: str) -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.gn, self.fc = nn.Conv2d(3, 4, 1), nn.GroupNorm(2, 4), nn.Linear(16, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            if tail == "groupnorm":
                return self.fc(self.gn(y).flatten(1))
            if tail == "literal_view":
                return self.fc(y.view(-1, 16))
            if tail == "channel_mean":
                return self.fc(y.mean(1).flatten(1).repeat(1, 4))
            return y

    plan = channel_plan(Net(), {"conv.weight": rows((4, 3, 1, 1), [1])}, torch.randn(1, 3, 2, 2))
    assert "conv" not in plan.slices


def test_input_channel_masks_remove_unused_producer_channels() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))
    keep = torch.ones(1, 4, 1, 1, dtype=torch.bool)
    keep[0, 3] = False
    masks = {"2.weight": Mask(keep, (2, 4, 3, 3))}  # nothing reads channel 3 any more
    x = torch.randn(2, 3, 5, 5)
    compact, report = shrink(net, masks, x)
    assert compact[0].out_channels == 3 and compact[2].in_channels == 3
    assert report.output_error < 1e-6 and not report.inexact


def test_folding_exact_for_pointwise_and_reported_for_padded() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.ReLU(),
                        nn.Conv2d(4, 2, 3, padding=1)).eval()
    net[1].bias.data.fill_(0.7)
    net[3].bias.data.fill_(0.5)
    x = torch.randn(2, 3, 7, 7)
    _, report = shrink(net, {"0.weight": rows((4, 3, 3, 3), [0])}, x)
    assert report.output_error < 1e-6 and not report.inexact  # BN beta folds into the 1x1 conv
    _, report = shrink(net, {"3.weight": rows((4, 4, 1, 1), [0])}, x)
    assert set(report.inexact) == {"5"} and report.inexact["5"] > 1e-3  # zero padding at the borders
    assert report.output_error > 1e-4 and report.layers[-1].fold_error == report.inexact["5"]


def test_squeeze_excite_mul_and_permute() -> None:
    class SE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc1, self.fc2 = nn.Conv2d(3, 6, 1), nn.Linear(6, 3), nn.Linear(3, 6)
            self.mlp = nn.Linear(6, 6)
            self.head = nn.Conv2d(6, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(y, 1).flatten(1)))))
            y = y * s[:, :, None, None]
            y = self.mlp(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # channels-last Linear
            return self.head(F.interpolate(y, scale_factor=2.0))

    net = SE()
    masks = pc.bias_masks({"conv.weight": rows((6, 3, 1, 1), [2, 5])}, {"conv.bias": (6,)})
    x = torch.randn(2, 3, 4, 4)
    compact, report = shrink(net, masks, x)
    assert compact.conv.out_channels == 4 and compact.fc2.out_features == 4 and compact.mlp.in_features == 4
    assert report.output_error < 1e-6


def test_params_override_the_models_values() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    tuned = {k: v + 1.0 for k, v in pc.params_of(net).items()}
    masks = pc.bias_masks({"0.weight": rows((4, 3, 1, 1), [3])}, {"0.bias": (4,)})
    x = torch.randn(2, 3, 3, 3)
    compact, _ = shrink(net, masks, x, params=tuned)
    with torch.no_grad():
        expected = torch.func.functional_call(net, pc.apply_masks(tuned, masks), (x,))
        torch.testing.assert_close(compact(x), expected)
    assert not torch.allclose(net[0].bias, tuned["0.bias"])  # the model keeps its own values


def test_custom_channelwise_module_through_the_replacement_table() -> None:
    from purecompress.graph import Replacement

    class Scale(nn.Module):  # a per-channel learnable scale the default table does not know
        def __init__(self, c: int) -> None:
            super().__init__()
            self.s = nn.Parameter(torch.rand(c) + 0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.s[:, None, None].type_as(x)

    def slice_scale(module: Scale, sl) -> Scale:
        new = Scale(int(sl.keep_in.sum()))
        new.s.data = module.s.data[sl.keep_in]
        return new

    net = nn.Sequential(nn.Conv2d(3, 4, 1), Scale(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    masks = pc.bias_masks({"0.weight": rows((4, 3, 1, 1), [1])}, {"0.bias": (4,)})
    x = torch.randn(2, 3, 3, 3)
    kept, _ = shrink(net, masks, x)  # unknown module: traced through, its parameter blocks the channels
    assert kept[0].out_channels == 4
    compact, report = shrink(net, masks, x, leaf_modules=[Scale],
                             replacements={Scale: Replacement("channelwise", slice_scale)})
    assert compact[0].out_channels == 3 and compact[1].s.shape == (3,) and report.output_error < 1e-6


def test_group_norm_loses_whole_groups_only() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.GroupNorm(3, 6), nn.ReLU(), nn.Conv2d(6, 2, 1)).eval()
    net[1].bias.data.uniform_(0.1, 1.0)  # a dead group still emits beta: folded into the 1x1 conv
    x = torch.randn(2, 3, 5, 5)
    masks = pc.bias_masks({"0.weight": rows((6, 3, 3, 3), [2, 3])}, {"0.bias": (6,)})
    compact, report = shrink(net, masks, x)
    assert compact[1].num_groups == 2 and compact[1].num_channels == 4 and compact[3].in_channels == 4
    assert report.output_error < 1e-6 and not report.inexact
    partial = pc.bias_masks({"0.weight": rows((6, 3, 3, 3), [1, 2])}, {"0.bias": (6,)})
    assert "0" not in channel_plan(net, partial, x).slices
