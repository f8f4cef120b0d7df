"""Dependency-aware allocation on real graphs (residual, grouped, depthwise) and by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import purecompress as pc
from purecompress.graph import channel_dependency, group_dependency
from purecompress.pruning import Mask, Metric, allocate_dependency_aware, dependency_kept_count, group_keep


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x).relu()
        y = y + self.b(self.a(y).relu())
        return self.head(y)


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 12, 1)
        self.g = nn.Conv2d(12, 12, 3, padding=1, groups=4)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.out = nn.Conv2d(12, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.dw(self.g(self.c1(x))))


def _masks(model: nn.Module, sparsity: float, x: torch.Tensor) -> dict[str, Mask]:
    plan = pc.select(model, pc.from_config_list([{"sparsity": sparsity, "op_types": ["Conv2d"]}]))
    metrics = pc.l1_norm(pc.params_of(model), plan)
    return allocate_dependency_aware(metrics, sparsity, channel_sets=channel_dependency(model, x),
                                     groups=group_dependency(model, x))


def test_residual_members_share_one_mask() -> None:
    torch.manual_seed(0)
    model = Residual()
    masks = _masks(model, 0.5, torch.zeros(1, 3, 8, 8))
    assert set(masks) == {"stem.weight", "a.weight", "b.weight", "head.weight"}
    assert torch.equal(masks["stem.weight"].keep, masks["b.weight"].keep)
    assert all(masks[n].sparsity() == 0.5 for n in masks)
    fused = sum(pc.l1_norm(pc.params_of(model), [n])[n].score.flatten() for n in ("stem.weight", "b.weight"))
    assert masks["stem.weight"].keep.flatten().tolist() == pc.keep_top(fused, 4).tolist()


def test_grouped_conv_keeps_the_same_count_in_each_group() -> None:
    torch.manual_seed(0)
    model = Grouped()
    masks = _masks(model, 0.5, torch.zeros(1, 3, 6, 6))
    for name in ("c1.weight", "g.weight"):
        per_group = masks[name].keep.flatten().reshape(4, 3).sum(1)
        assert per_group.tolist() == [2, 2, 2, 2]  # 3 - int(3 * 0.5) per group of 3
    # the depthwise conv shares g's mask (the default couple_depthwise=True): 2 of 3 in each group
    assert torch.equal(masks["dw.weight"].keep.flatten(), masks["g.weight"].keep.flatten())


def test_set_uses_min_sparsity_and_per_layer_outside_sets() -> None:
    m = {n: Metric(torch.arange(8.0).flip(0).reshape(8, 1), (8, 2)) for n in ("a.weight", "b.weight", "c.weight")}
    masks = allocate_dependency_aware(m, {"a.weight": 0.5, "b.weight": 0.25, "c.weight": 0.75},
                                      channel_sets=[("a", "b"), ("x",)])
    assert masks["a.weight"].keep.sum() == masks["b.weight"].keep.sum() == 6
    assert masks["c.weight"].keep.sum() == 2
    assert list(masks) == list(m)


def test_prior_is_never_unpruned() -> None:
    m = {n: Metric(torch.tensor([[4.0], [3.0], [2.0], [1.0]]), (4, 3)) for n in ("a.weight", "b.weight")}
    prior = {"a.weight": Mask(torch.tensor([[False], [True], [True], [True]]), (4, 3))}
    masks = allocate_dependency_aware(m, 0.5, channel_sets=[("a", "b")], prior=prior)
    assert masks["a.weight"].keep.flatten().tolist() == [False, True, True, False]
    assert torch.equal(masks["a.weight"].keep, masks["b.weight"].keep)


def test_group_keep_edge_cases() -> None:
    assert group_keep(torch.tensor([1.0, 2.0, 3.0]), 1.0, 1).tolist() == [False, False, False]
    assert group_keep(torch.tensor([1.0, 2.0, 3.0]), 0.5, 5).tolist() == [True, True, True]
    assert group_keep(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), 0.5, 2).tolist() == [False, True, False, True, True]
    assert dependency_kept_count(5, 0.5, 2) == 3 and dependency_kept_count(12, 0.5, 4) == 8


def test_errors_name_the_problem() -> None:
    fine = {"a.weight": Metric(torch.ones(4, 3), (4, 3))}
    with pytest.raises(ValueError, match="channel metrics"):
        allocate_dependency_aware(fine, 0.5, channel_sets=[("a",)])
    mixed = {"a.weight": Metric(torch.ones(4, 1), (4, 3)), "b.weight": Metric(torch.ones(5, 1), (5, 3))}
    with pytest.raises(ValueError, match="channel counts"):
        allocate_dependency_aware(mixed, 0.5, channel_sets=[("a", "b")])


def test_compat_allocator_takes_dependencies_by_hand_and_explains_trace_failures() -> None:
    from purecompress.compat.pruning import DependencyAwareAllocator, L1NormPruner
    from purecompress.graph import GraphCaptureError

    torch.manual_seed(0)
    model = Residual()
    pruner = L1NormPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.sparsity_allocator = DependencyAwareAllocator(pruner, None, channel_dependency=[("stem", "b")],
                                                         group_dependency={})
    _, masks = pruner.compress()
    assert torch.equal(masks["stem"]["weight"].flatten(1).any(1), masks["b"]["weight"].flatten(1).any(1))

    class Untraceable(Residual):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it, a recorded run can
                return super().forward(x)
            return self.head(self.stem(x))

    pruner = L1NormPruner(Untraceable(), [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    allocator = DependencyAwareAllocator(pruner, torch.ones(1, 3, 8, 8))
    assert ("stem", "b") in allocator.channel_dependency
    with pytest.raises(GraphCaptureError, match="by hand") as info:  # a forward that fails on the input
        DependencyAwareAllocator(pruner, torch.ones(1, 4, 8, 8))
    assert info.value.module == "stem"
    assert pruner.is_wrapped


class InvertedResidual(nn.Module):
    """MobileNetV2's block: pointwise expand -> depthwise -> pointwise project."""

    def __init__(self) -> None:
        super().__init__()
        self.expand, self.bn1 = nn.Conv2d(4, 16, 1), nn.BatchNorm2d(16)
        self.dw, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16)
        self.project = nn.Conv2d(16, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.expand(x)))
        return self.project(torch.relu(self.bn2(self.dw(x))))


@pytest.mark.parametrize("couple", [False, True])
def test_depthwise_coupled_to_its_producer_keeps_what_was_asked(couple: bool) -> None:
    torch.manual_seed(0)
    model, x = InvertedResidual().eval(), torch.randn(2, 4, 8, 8)
    sets = channel_dependency(model, x, couple_depthwise=couple)
    assert (("expand", "dw") in sets) == couple
    plan = pc.select(model, pc.from_config_list([{"sparsity": 0.5, "op_names": ["expand", "dw"]}]))
    metrics = pc.l1_norm(pc.params_of(model), plan)
    masks = allocate_dependency_aware(metrics, 0.5, channel_sets=sets, groups=group_dependency(model, x))
    compact, report = pc.shrink(model, masks, x)
    kept = compact.dw.out_channels
    if couple:  # one choice of 8 channels for both: the block keeps half, as asked
        assert kept == compact.expand.out_channels == 8
        assert torch.equal(masks["expand.weight"].keep.flatten(), masks["dw.weight"].keep.flatten())
        assert report.inexact == {}
        masked = torch.func.functional_call(model, pc.apply_masks(pc.params_of(model), masks), (x,))
        torch.testing.assert_close(compact(x), masked, rtol=1e-5, atol=1e-5)  # the user's masks, constants folded
    else:  # NNI's rule: two independent choices, shrink removes their union, and the depthwise
        # channels whose input was pruned emit a constant that a zero-padded conv makes inexact
        assert kept == 2 and report.inexact  # the README quotes these 2 of 16
