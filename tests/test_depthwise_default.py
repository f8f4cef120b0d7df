"""The core couples depthwise convs to their producers by default; compat keeps NNI's rule.

50% asked of MobileNetV2-like pointwise -> depthwise -> pointwise blocks keeps half of their
channels with the default (``couple_depthwise=True``); NNI's rule (False) chooses the two apart and
shrinking removes their union. Every compat caller of ``channel_dependency`` passes False, so NNI
scripts get NNI's masks (checked against NNI 2.10.1 where it is installed).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import purecompress as pc
from purecompress.graph import channel_dependency, group_dependency
from purecompress.pruning import allocate_dependency_aware
from tests.test_dependency_aware import InvertedResidual

pytestmark = pytest.mark.usefixtures("one_thread")


def conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()]


class Block(nn.Module):
    """MobileNetV2's inverted residual: expand 1x1 -> depthwise 3x3 -> project 1x1 (+ x)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        h = cin * expand
        self.body = nn.Sequential(*conv_bn(cin, h), *conv_bn(h, h, 3, stride, groups=h),
                                  nn.Conv2d(h, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2Like(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(*conv_bn(3, 8, 3, 2), Block(8, 8, 1), Block(8, 16, 2), Block(16, 16, 1),
                                      *conv_bn(16, 64))
        self.classifier = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def shrink_half(model: nn.Module, x: torch.Tensor, classifier: str, **kw: bool) -> tuple[nn.Module, pc.ShrinkReport]:
    plan = pc.select(model, pc.from_config_list([{"sparsity": 0.5, "op_types": ["Conv2d", "Linear"]},
                                                 {"exclude": True, "op_names": [classifier]}]))
    metrics = pc.l1_norm(pc.params_of(model), plan)
    masks = allocate_dependency_aware(metrics, 0.5, channel_sets=channel_dependency(model, x, **kw),
                                      groups=group_dependency(model, x))
    return pc.shrink(model, pc.bias_masks(masks, {k: v for e in plan for k, v in e.params.items()}), x)


def test_default_couples_each_depthwise_conv_to_its_producer() -> None:
    model, x = MobileNetV2Like().eval(), torch.randn(1, 3, 32, 32)
    sets = channel_dependency(model, x)
    assert sets == channel_dependency(model, x, couple_depthwise=True)
    for i in (3, 4, 5):  # the three blocks
        assert (f"features.{i}.body.0", f"features.{i}.body.3") in sets
    assert ("features.3.body.0",) in channel_dependency(model, x, couple_depthwise=False)


def test_mobilenet_like_stack_keeps_what_was_asked_by_default() -> None:
    torch.manual_seed(0)
    model, x = MobileNetV2Like().eval(), torch.randn(1, 3, 32, 32)
    coupled, report = shrink_half(model, x, "classifier")
    apart, nni_rule = shrink_half(model, x, "classifier", couple_depthwise=False)
    for i, hidden in ((3, 32), (4, 32), (5, 64)):  # every block keeps half of its hidden channels
        assert coupled.features[i].body[3].out_channels == hidden // 2
        assert apart.features[i].body[3].out_channels < hidden // 2  # the union of two choices went
    assert report.flops_after / report.flops_before > nni_rule.flops_after / nni_rule.flops_before + 0.05
    assert report.output_error <= 1e-5 and nni_rule.output_error <= 1e-5


def test_torchvision_mobilenet_v2_macs_quoted_in_the_readme() -> None:
    from benchmarks.zoo_import import import_torchvision

    try:
        tv = import_torchvision()
    except Exception as err:  # not installed, or its extension does not load
        pytest.skip(f"torchvision does not import: {err}")
    torch.manual_seed(0)
    model, x = tv.models.mobilenet_v2(weights=None).eval(), torch.randn(1, 3, 224, 224)
    _, coupled = shrink_half(model, x, "classifier.1")
    _, apart = shrink_half(model, x, "classifier.1", couple_depthwise=False)
    assert round(coupled.flops_after / coupled.flops_before, 2) == 0.29
    assert round(apart.flops_after / apart.flops_before, 2) == 0.15


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_compat_dependency_aware_pruners_keep_nnis_independent_choice(version: str) -> None:
    pytest.importorskip("nni", reason="NNI 2.10.1 is the oracle")
    torch.manual_seed(0)
    model, x = InvertedResidual().eval(), torch.randn(2, 4, 8, 8)
    if version == "v2":
        from nni.compression.pytorch.pruning import L1NormPruner as Theirs

        from purecompress.compat import L1NormPruner as Ours

        cfg = [{"sparsity": 0.5, "op_names": ["expand", "dw"]}]
        _, theirs = Theirs(copy.deepcopy(model), cfg, mode="dependency_aware", dummy_input=x).compress()
        _, ours = Ours(copy.deepcopy(model), cfg, mode="dependency_aware", dummy_input=x).compress()
        kept = {n: (ours[n]["weight"][:, 0, 0, 0] != 0, theirs[n]["weight"][:, 0, 0, 0] != 0) for n in ("expand", "dw")}
    else:
        import nni.algorithms.compression.pytorch.pruning as nv1

        import purecompress.compat.pruning_v1 as v1

        cfg = [{"sparsity": 0.5, "op_types": ["Conv2d"], "op_names": ["expand", "dw"]}]
        pair = []
        for lib in (v1, nv1):
            net = copy.deepcopy(model)
            lib.L1FilterPruner(net, cfg, dependency_aware=True, dummy_input=x).compress()
            pair.append({n: getattr(net, n).weight_mask[:, 0, 0, 0] != 0 for n in ("expand", "dw")})
        kept = {n: (pair[0][n], pair[1][n]) for n in ("expand", "dw")}
    for ours_keep, theirs_keep in kept.values():
        assert torch.equal(ours_keep, theirs_keep)
    assert not torch.equal(kept["expand"][0], kept["dw"][0])  # chosen apart, as NNI does
