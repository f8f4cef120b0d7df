"""Dependency sets of channel ranges (``channel_ranges``) and the shrinking that follows the pieces:
a concatenation sliced and added to a shortcut (GhostNet), splits by stored or fixed sizes (MixNet,
CSPNet), chunks and a channel shuffle (ShuffleNetV2). Each model is pruned the zoo's way (50% L1 on
the ranges) and shrunk; the compact model equals the masked one."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import purecompress as pc
from purecompress import ChannelRange
from purecompress.graph import channel_ranges, group_dependency, shrink
from tests.test_shrink_graphs import shrunk

pytestmark = pytest.mark.usefixtures("one_thread")


def bn_conv(cin: int, cout: int, k: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class Ghost(nn.Module):
    """GhostNet's module: ``cat([primary, cheap(primary)], 1)[:, :out]``, cheap a depthwise conv."""

    def __init__(self, cin: int, out: int) -> None:
        super().__init__()
        self.out = out
        init = math.ceil(out / 2)
        self.primary = bn_conv(cin, init)
        self.cheap = bn_conv(init, init, 3, groups=init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary(x)
        return torch.cat([x1, self.cheap(x1)], 1)[:, : self.out]


class GhostNet(nn.Module):
    def __init__(self, mid: int = 16) -> None:
        super().__init__()
        self.stem = bn_conv(3, 8)
        self.g1, self.g2 = Ghost(8, mid), Ghost(mid, 8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        return self.head(self.g2(self.g1(s)) + s)


class SplitNet(nn.Module):
    """CSPNet's stage with the split size written in the forward (not a COMPOSITES layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.exp = bn_conv(3, 16)
        self.b = bn_conv(8, 8)
        self.t = nn.Conv2d(16, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs, xb = self.exp(x).split(8, dim=1)
        return self.t(torch.cat([xs, self.b(xb)], 1))


class Shuffle(nn.Module):
    """ShuffleNetV2's unit: chunk, a branch on one half, cat, channel shuffle (torchvision's code)."""

    def __init__(self, groups: int | None = 2) -> None:
        super().__init__()
        self.groups = groups
        self.a, self.b, self.c = bn_conv(3, 8), bn_conv(4, 4), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.a(x).chunk(2, dim=1)
        y = torch.cat([x1, self.b(x2)], 1)
        n, c, h, w = y.shape
        y = y.view(n, 2, 4, h, w) if self.groups is None else y.view(n, self.groups, c // self.groups, h, w)
        return self.c(y.transpose(1, 2).contiguous().view(n, c, h, w))


def spans(sets: list[tuple[ChannelRange, ...]]) -> list[list[tuple[str, int, int, int]]]:
    return [[(r.name, r.start, r.stop, r.step) for r in s] for s in sets]


def prune_half(model: nn.Module, x: torch.Tensor) -> pc.Masks:
    """50% L1 on every conv but the last, agreeing on the channel ranges."""
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][:-1]
    metrics = pc.l1_norm(pc.params_of(model), pc.select(model, pc.from_config_list([{"sparsity": 0.5,
                                                                                     "op_names": convs}])))
    return pc.allocate_dependency_aware(metrics, 0.5, channel_sets=channel_ranges(model, x),
                                        groups=group_dependency(model, x))


def kept(model: nn.Module, compact: nn.Module) -> dict[str, tuple[int, int]]:
    return {n: (compact.get_submodule(n).out_channels, m.out_channels)
            for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


X = torch.randn(2, 3, 8, 8)


def test_a_sliced_concatenation_added_to_a_shortcut_couples_each_half() -> None:
    assert spans(channel_ranges(GhostNet().eval(), X)) == [
        [("stem.0", 0, 4, 1), ("stem.0", 4, 8, 1), ("g2.primary.0", 0, 4, 1), ("g2.cheap.0", 0, 4, 1)],
        [("g1.primary.0", 0, 8, 1), ("g1.cheap.0", 0, 8, 1)],
        [("head", 0, 4, 1)],
    ]


def test_ghost_modules_shrink_to_half_with_no_dense_layer() -> None:
    torch.manual_seed(0)
    model = GhostNet().eval()
    masks = prune_half(model, X)
    assert masks["stem.0.weight"].keep[:4].equal(masks["stem.0.weight"].keep[4:])  # both halves meet g2's layers
    compact, report = shrunk(model, masks, X)
    assert kept(model, compact) == {"stem.0": (4, 8), "g1.primary.0": (4, 8), "g1.cheap.0": (4, 8),
                                    "g2.primary.0": (2, 4), "g2.cheap.0": (2, 4), "head": (4, 4)}
    assert report.dense == {}


def test_a_slice_that_drops_channels_blocks_them_with_its_reason() -> None:
    sets = channel_ranges(GhostNet(mid=15).eval(), X)  # cat of 8 + 8 channels sliced to 15
    blocked = {r.name: r.blocked for s in sets for r in s if r.blocked}
    assert set(blocked) == {"g1.primary.0", "g1.cheap.0", "head"}
    assert "bounds fixed in the forward" in blocked["g1.primary.0"]
    assert blocked["head"] == "its channels reach the model's output"


def test_blocked_ranges_are_kept_so_no_layer_is_left_dense() -> None:
    torch.manual_seed(0)
    model = GhostNet(mid=15).eval()
    compact, report = shrunk(model, prune_half(model, X), X)
    assert kept(model, compact)["g1.primary.0"] == (8, 8) and kept(model, compact)["g2.primary.0"] == (2, 4)
    assert report.dense == {}


def test_a_split_by_a_size_in_the_forward_keeps_the_leading_pieces() -> None:
    torch.manual_seed(0)
    model = SplitNet().eval()
    sets = channel_ranges(model, X)
    assert spans(sets)[:2] == [[("exp.0", 0, 8, 1)], [("exp.0", 8, 16, 1)]]
    assert "every piece but the last keeps all its channels" in str(sets[0][0].blocked)
    compact, report = shrunk(model, prune_half(model, X), X)
    assert kept(model, compact)["exp.0"] == (12, 16) and report.dense == {}


def test_a_channel_shuffle_couples_channel_j_of_each_group() -> None:
    assert spans(channel_ranges(Shuffle().eval(), X)) == [
        [("a.0", 0, 4, 1), ("b.0", 0, 4, 1)], [("a.0", 4, 8, 1)], [("c", 0, 4, 1)]]


def test_shuffle_groups_may_keep_different_channels_in_order() -> None:
    torch.manual_seed(0)
    model = Shuffle().eval()
    keep = half([0, 2, 5, 7], 8)  # the first piece keeps channels 0, 2; branch b keeps 1, 3: 0 <= 1 < 2 <= 3
    masks = {"a.0.weight": pc.Mask(keep.reshape(8, 1, 1, 1), (8, 3, 1, 1)),
             "b.0.weight": pc.Mask(half([1, 3]).reshape(4, 1, 1, 1), (4, 4, 1, 1))}
    compact, report = shrunk(model, masks, X)
    assert kept(model, compact) == {"a.0": (4, 8), "b.0": (2, 4), "c": (4, 4)}
    assert report.dense == {}


def test_a_channel_shuffle_shrinks_exactly() -> None:
    torch.manual_seed(0)
    model = Shuffle().eval()
    compact, report = shrunk(model, prune_half(model, X), X)
    assert kept(model, compact) == {"a.0": (4, 8), "b.0": (2, 4), "c": (4, 4)}
    assert report.dense == {}


def test_a_channel_view_with_both_sizes_written_blocks_with_its_reason() -> None:
    sets = channel_ranges(Shuffle(groups=None).eval(), X)  # y.view(n, 2, 4, h, w): which size is the groups?
    reasons = {r.blocked for s in sets for r in s if r.name == "b.0"}
    assert len(reasons) == 1 and "which of its two sizes" in str(next(iter(reasons)))


def shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """torchvision's ``channel_shuffle``."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class Unit(nn.Module):
    """ShuffleNetV2's ``InvertedResidual`` (torchvision's code): stride 2 runs both branches on the
    input, stride 1 chunks it and runs ``branch2`` on the second half; then cat and shuffle."""

    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        self.stride, half = stride, oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
                                         nn.BatchNorm2d(inp), *bn_conv(inp, half))
        self.branch2 = nn.Sequential(*bn_conv(inp if stride > 1 else half, half),
                                     nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False),
                                     nn.BatchNorm2d(half), *bn_conv(half, half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            return shuffle(torch.cat((x1, self.branch2(x2)), 1))
        return shuffle(torch.cat((self.branch1(x), self.branch2(x)), 1))


class ShuffleStage(nn.Module):
    """A stem, one stride-2 unit and ``repeats`` stride-1 units of ``width`` channels, a head."""

    def __init__(self, width: int = 8, repeats: int = 3) -> None:
        super().__init__()
        self.stem = bn_conv(3, width)
        self.units = nn.Sequential(Unit(width, width, 2), *(Unit(width, width, 1) for _ in range(repeats)))
        self.head = nn.Conv2d(width, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.units(self.stem(x)))


def classes_of(sets: list[tuple[ChannelRange, ...]]) -> dict[tuple[str, int], tuple[int, int]]:
    """(layer, channel) -> (set, position): the channels that share one mask."""
    return {(r.name, c): (k, i) for k, s in enumerate(sets) for r in s for i, c in enumerate(r.indices())}


def test_coupling_each_group_of_a_shuffle_doubles_the_coupled_channels_per_unit() -> None:
    # why the ranges cannot keep half of a deep stage: unit k's branch channel i shares the mask of
    # channel i // 2**k of the first unit's branch1, so the last branch here (4 channels, k = 3) is one class
    model = ShuffleStage().eval()
    cls = classes_of(channel_ranges(model, X))
    for k in range(1, 4):
        assert all(cls[(f"units.{k}.branch2.5", i)] == cls[("units.0.branch1.2", i // 2 ** k)] for i in range(4))


def half(keep: list[int], n: int = 4) -> torch.Tensor:
    return torch.isin(torch.arange(n), torch.tensor(keep))


def stage_masks(model: ShuffleStage, kept: dict[str, list[int]]) -> pc.Masks:
    """Channel masks keeping ``kept[layer]``; the depthwise convs keep their producer's channels."""
    kept = {**kept, "stem.0": [0, 1, 2, 3], "units.0.branch1.0": [0, 1, 2, 3]}
    kept.update({f"units.{k}.branch2.{j}": [0, 1] for k in range(4) for j in (0, 3)})
    masks = {}
    for name, keep in kept.items():
        weight = model.get_submodule(name).weight
        masks[f"{name}.weight"] = pc.Mask(half(keep, weight.shape[0]).reshape(-1, 1, 1, 1), tuple(weight.shape))
    return masks


def test_a_stage_of_shuffle_units_shrinks_to_half_of_every_branch_when_the_groups_interleave() -> None:
    # the groups of each shuffle keep different channels, in order: 0 <= 1 < 2 <= 2 for the first
    torch.manual_seed(0)
    model = ShuffleStage().eval()
    branches = ["units.0.branch1.2", "units.0.branch2.5", "units.1.branch2.5", "units.2.branch2.5",
                "units.3.branch2.5"]
    kept_channels = dict(zip(branches, [[0, 2], [1, 2], [1, 3], [0, 3], [0, 1]]))
    compact, report = shrunk(model, stage_masks(model, kept_channels), X)
    assert {n: kept(model, compact)[n] for n in branches} == dict.fromkeys(branches, (2, 4))
    assert report.dense == {}


def test_shuffle_groups_that_do_not_interleave_keep_channels_back_and_say_why() -> None:
    torch.manual_seed(0)
    model = Shuffle().eval()
    keep = half([1, 2, 5, 7], 8)  # the first piece keeps channels 1, 2; branch b keeps 0, 3: 1 > 0
    masks = {"a.0.weight": pc.Mask(keep.reshape(8, 1, 1, 1), (8, 3, 1, 1)),
             "b.0.weight": pc.Mask(half([0, 3]).reshape(4, 1, 1, 1), (4, 4, 1, 1))}
    compact, report = shrunk(model, masks, X)
    assert kept(model, compact)["b.0"] == (4, 4)
    assert "interleaved groups: the channel shuffle at" in report.dense["b.0"]


class MiniShuffleNet(nn.Module):
    """Two stages of ShuffleNetV2 units: the second's stride-2 unit reads the first's output with
    a depthwise conv (a follower of the first chain)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = bn_conv(3, 8)
        self.a = nn.Sequential(Unit(8, 8, 2), *(Unit(8, 8, 1) for _ in range(3)))
        self.b = nn.Sequential(Unit(8, 16, 2), Unit(16, 16, 1))
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(self.a(self.stem(x))))


def test_shuffle_chains_name_each_stage_s_layers_in_order_and_its_followers() -> None:
    chains = pc.shuffle_chains(MiniShuffleNet().eval(), X)
    assert chains == [
        pc.ShuffleChain(("a.0.branch1.2", "a.0.branch2.5", "a.1.branch2.5", "a.2.branch2.5", "a.3.branch2.5"), 4,
                        ("b.0.branch1.0",)),
        pc.ShuffleChain(("b.0.branch1.2", "b.0.branch2.5", "b.1.branch2.5"), 8),
    ]


class JoinedStage(ShuffleStage):
    """A stage whose output is added to another layer's."""

    def __init__(self) -> None:
        super().__init__()
        self.side = nn.Conv2d(3, 8, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.units(self.stem(x)) + self.side(x))


def test_a_chain_whose_channels_meet_another_layer_is_not_given() -> None:
    assert pc.shuffle_chains(ShuffleStage().eval(), X) != []
    assert pc.shuffle_chains(JoinedStage().eval(), X) == []


def prune_chains(model: nn.Module, x: torch.Tensor) -> pc.Masks:
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][:-1]
    metrics = pc.l1_norm(pc.params_of(model), pc.select(model, pc.from_config_list([{"sparsity": 0.5,
                                                                                     "op_names": convs}])))
    return pc.allocate_dependency_aware(metrics, 0.5, channel_sets=channel_ranges(model, x),
                                        groups=group_dependency(model, x), shuffles=pc.shuffle_chains(model, x))


def test_shuffle_chains_keep_half_of_every_layer_with_nothing_kept_back() -> None:
    torch.manual_seed(0)
    model = MiniShuffleNet().eval()
    compact, report = shrunk(model, prune_chains(model, X), X)
    assert {n: k for n, k in kept(model, compact).items() if n != "head"} == {
        n: (c // 2, c) for n, c in ((n, m.out_channels) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
        if n != "head"}
    assert report.dense == {}


def test_a_deep_chain_keeps_one_count_in_every_layer_that_its_order_allows() -> None:
    # 8 units of 116 channels (ShuffleNetV2 x1.0's stage 3): no choice of 58 channels meets the chunk
    # halves' counts and the groups' order, 52 do; the channel sets would keep the last layers whole
    torch.manual_seed(0)
    model = ShuffleStage(width=232, repeats=7).eval()
    compact, report = shrunk(model, prune_chains(model, X), X)
    branches = {n: k for n, k in kept(model, compact).items() if n.endswith((".branch1.2", ".branch2.5"))}
    assert len(branches) == 9 and set(branches.values()) == {(52, 116)}
    assert report.dense == {}


def test_a_chain_with_a_layer_not_pruned_is_left_to_the_sets() -> None:
    model = ShuffleStage().eval()
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n != "units.2.branch2.5"][:-1]
    metrics = pc.l1_norm(pc.params_of(model), pc.select(model, pc.from_config_list([{"sparsity": 0.5,
                                                                                     "op_names": convs}])))
    sets = channel_ranges(model, X)
    with_chains = pc.allocate_dependency_aware(metrics, 0.5, channel_sets=sets, shuffles=pc.shuffle_chains(model, X))
    without = pc.allocate_dependency_aware(metrics, 0.5, channel_sets=sets)
    assert all(with_chains[k].keep.equal(without[k].keep) for k in without)


def test_a_shuffle_chain_needs_channel_metrics_of_its_width() -> None:
    metrics = {f"{n}.weight": pc.Metric(torch.ones(4, 1), (4, 2)) for n in "ab"}
    metrics["c.weight"] = pc.Metric(torch.ones(6, 1), (6, 2))
    with pytest.raises(ValueError, match="'c.weight' needs a channel metric of 4 channels"):
        pc.allocate_dependency_aware(metrics, 0.5, channel_sets=[], shuffles=[pc.ShuffleChain(("a", "b", "c"), 4)])


class Chunk(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = bn_conv(3, 8), nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.a(x).chunk(2, dim=1)
        return self.b(x1) + self.c(x2)


def test_unbalanced_chunk_pieces_keep_channels_back_and_say_why() -> None:
    torch.manual_seed(0)
    model = Chunk().eval()
    keep = torch.tensor([False, False, True, True, True, True, True, False])  # pieces keep 2 and 3 channels
    masks = {"a.0.weight": pc.Mask(keep.reshape(8, 1, 1, 1), (8, 3, 1, 1))}
    compact, report = shrunk(model, masks, X)
    assert compact.a[0].out_channels == 6  # 3 in each piece
    assert "balanced pieces: chunk at node" in report.dense["a.0"]


def test_channel_ranges_leave_the_model_unchanged() -> None:
    model = GhostNet().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    channel_ranges(model, X)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_set_of_ranges_keeps_the_same_channels_in_each_range() -> None:
    score = torch.tensor([4.0, 1.0, 3.0, 0.0, 0.0, 5.0])
    metrics = {"a.weight": pc.Metric(score.reshape(6, 1), (6, 2))}
    sets = [(ChannelRange("a", 0, 6, 2), ChannelRange("a", 1, 6, 2))]  # channels (0, 1), (2, 3), (4, 5)
    masks = pc.allocate_dependency_aware(metrics, 0.5, channel_sets=sets)
    assert masks["a.weight"].keep.flatten().tolist() == [True, True, False, False, True, True]


@pytest.mark.parametrize(("sets", "message"), [
    ([("a", ChannelRange("a", 0, 2))], "both names and ChannelRange"),
    ([(ChannelRange("a", 0, 2), ChannelRange("a", 2, 5))], "differ in length"),
    ([(ChannelRange("a", 0, 4),)], "cover each of its 6 channels once"),
    ([(ChannelRange("a", 4, 8),)], "is not a range of the 6 output channels"),
])
def test_bad_range_sets_are_refused_naming_what_is_wrong(sets: list, message: str) -> None:
    metrics = {"a.weight": pc.Metric(torch.arange(6.0).reshape(6, 1), (6, 2))}
    with pytest.raises(ValueError, match=message):
        pc.allocate_dependency_aware(metrics, 0.5, channel_sets=sets)


timm = pytest.importorskip("timm")


def test_timm_mixed_conv_pieces_follow_the_split() -> None:
    from timm.layers import MixedConv2d

    torch.manual_seed(0)
    model = nn.Sequential(bn_conv(3, 12), MixedConv2d(12, 12, [3, 5], depthwise=True), nn.BatchNorm2d(12), nn.ReLU(),
                          nn.Conv2d(12, 4, 1)).eval()
    assert spans(channel_ranges(model, X))[0] == [("0.0", 0, 6, 1), ("1.0", 0, 6, 1)]
    compact, report = shrunk(model, prune_half(model, X), X)
    assert kept(model, compact) == {"0.0": (6, 12), "1.0": (3, 6), "1.1": (3, 6), "4": (4, 4)}
    assert compact[1].splits == [3, 3] and report.dense == {}


def test_timm_cross_stage_split_in_halves_shrinks_with_its_stored_size() -> None:
    from timm.models.cspnet import BottleneckBlock, CrossStage

    torch.manual_seed(0)
    stage = CrossStage(8, 16, stride=1, dilation=1, depth=1, expand_ratio=2.0, bottle_ratio=0.5, cross_linear=True,
                       block_fn=BottleneckBlock, act_layer=nn.ReLU, norm_layer=nn.BatchNorm2d)
    model = nn.Sequential(bn_conv(3, 8), stage, nn.Conv2d(16, 4, 1)).eval()
    compact, report = shrunk(model, prune_half(model, X), X)
    assert compact[1].expand_chs == 16 and compact[1].conv_exp.conv.out_channels == 16
    assert report.dense == {}


def test_shrink_keeps_a_fixed_split_exact_without_the_ranges() -> None:
    torch.manual_seed(0)
    model = SplitNet().eval()
    keep = torch.arange(16) % 2 == 0  # half of each piece
    compact, report = shrink(model, {"exp.0.weight": pc.Mask(keep.reshape(16, 1, 1, 1), (16, 3, 1, 1))}, X)
    assert compact.exp[0].out_channels == 12
    assert "every piece but the last keeps all its channels" in report.dense["exp.0"]
