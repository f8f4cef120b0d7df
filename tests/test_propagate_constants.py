"""Constants of pruned channels: ``propagate``'s masked model, the user's and the compact one agree.

A pruned conv followed by BatchNorm (beta != 0) and ReLU still emits ``relu(beta)``. The user's
masked model keeps that constant; ``shrink`` folds it into the next bias; ``propagate`` zeroes the
channel and moves the constant into its ``params``. The three must compute one function (exactly
where the fold is exact; behind a zero-padded conv the deviation is reported).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

import purecompress as pc
from purecompress.graph import propagate, shrink
from tests.test_shrink import CASES, ResNet, l1_masks, randomize, rel

pytestmark = pytest.mark.usefixtures("one_thread")


def run(model: nn.Module, params: pc.Params, masks: pc.Masks, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return functional_call(model, pc.apply_masks(params, masks), (x,))


def three(model: nn.Module, masks: pc.Masks, x: torch.Tensor, other: torch.Tensor, **kw: bool):
    """(user's masked, propagate's masked, compact) outputs on ``other``, and the propagation."""
    prop = propagate(model, masks, x, **kw)
    compact, report = shrink(model, masks, x, **kw)
    with torch.no_grad():
        y = compact(other)
    return run(model, pc.params_of(model), masks, other), run(model, prop.params, prop.masks, other), y, prop, report


def chain(k: int, bias: bool = True) -> nn.Module:
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.Conv2d(6, 4, k, padding=k // 2, bias=bias), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        net[1].bias.copy_(torch.linspace(0.3, 1.0, 6))  # beta > 0: the pruned channels emit relu(beta)
    return net.eval()


ROWS = {"0.weight": pc.Mask(torch.tensor([True, False, True, False, True, True]).reshape(6, 1, 1, 1), (6, 3, 3, 3))}


def test_conv_bn_relu_1x1_conv_three_models_equal() -> None:
    torch.manual_seed(0)
    net, x, other = chain(1), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    user, prop_y, compact, prop, report = three(net, ROWS, x, other)
    assert rel(user, run(net, pc.params_of(net), prop.masks, other)) > 1e-2  # the masks alone drop relu(beta)
    assert rel(prop_y, user) <= 1e-6 and rel(compact, user) <= 1e-6
    assert prop.inexact == {} and report.inexact == {}
    assert prop.masks["3.weight"].to_dense()[:, [1, 3]].eq(0).all()
    assert not torch.equal(prop.params["3.bias"], net[3].bias)  # the constant went into the consumer's bias


def test_padded_3x3_consumer_is_reported_and_propagate_equals_compact() -> None:
    torch.manual_seed(0)
    net, x, other = chain(3), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    user, prop_y, compact, prop, report = three(net, ROWS, x, other)
    assert set(prop.inexact) == set(report.inexact) == {"3"} and prop.inexact["3"] > 1e-3
    assert rel(prop_y, compact) <= 1e-6  # propagate describes the compact model, everywhere
    assert rel(compact, user) > 1e-4  # the borders: the reported deviation
    assert report.output_error > 1e-4
    user, prop_y, compact, prop, report = three(net, ROWS, x, other, exact=True)
    assert prop.inexact == report.inexact == {}
    assert rel(prop_y, user) <= 1e-6 and rel(compact, user) <= 1e-6
    assert "3" not in report.replaced or compact[3].in_channels == 6  # the constant channels are kept


def test_bias_free_consumer_folds_into_the_next_batchnorm_running_mean() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.Conv2d(6, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 8 * 8, 3))
    randomize(net)
    x, other = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    user, prop_y, compact, prop, _ = three(net, ROWS, x, other)
    assert not torch.equal(prop.params["4.running_mean"], net[4].running_mean)
    assert rel(prop_y, user) <= 1e-6 and rel(compact, user) <= 1e-6


@pytest.mark.parametrize("k", [1, 3])
def test_a_constant_with_no_bias_to_go_to_keeps_its_channels_in_the_masks(k: int) -> None:
    torch.manual_seed(0)
    net = chain(k, bias=False)
    x, other = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    user, prop_y, compact, prop, report = three(net, ROWS, x, other)
    assert "3.weight" not in prop.masks and "1.bias" not in prop.masks  # relu(beta) still reaches conv 3
    assert rel(prop_y, user) <= 1e-6 and rel(compact, user) <= 1e-6
    assert torch.equal(prop.params["1.bias"], net[1].bias)
    assert report.inexact == {}
    if k == 1:  # folded exactly into a new bias of the compact conv
        assert "3" in report.replaced and net[3].bias is None
    else:  # 3x3 zero-padded: no exact fold and no bias to hold it: shrink keeps the channels too
        assert "3" not in report.replaced


@pytest.mark.parametrize("name", ["resnet", "mlp", "vgg", "mobilenet"])
def test_residual_and_linear_models_three_models_agree(name: str) -> None:
    make, shape = CASES[name]
    torch.manual_seed(2)
    model = randomize(make(), seed=2)
    x, other = torch.randn(shape), torch.randn(shape)
    masks = l1_masks(model, x, 0.5, dependency=name != "mlp")
    user, prop_y, compact, prop, report = three(model, masks, x, other)
    assert rel(prop_y, compact) <= 1e-5  # exactly the compact model's function, on another input
    assert prop.inexact == report.inexact
    if not report.inexact:
        assert rel(prop_y, user) <= 1e-5
    user, prop_y, compact, _, report = three(model, masks, x, other, exact=True)
    assert not report.inexact and rel(prop_y, user) <= 1e-5 and rel(compact, user) <= 1e-5


def test_shrink_report_masks_and_params_give_the_compact_model() -> None:
    torch.manual_seed(3)
    model = randomize(ResNet(), seed=3)
    x, other = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    masks = l1_masks(model, x, 0.5, dependency=True)
    compact, report = shrink(model, masks, x)
    with torch.no_grad():
        y = compact(other)
    assert rel(run(model, report.params, report.masks, other), y) <= 1e-5
    assert rel(run(model, pc.params_of(model), report.masks, other), y) > 1e-2  # the masks alone are not it
    again, second = shrink(model, report.masks, x, params=report.params)  # nothing left to fold
    assert second.inexact == {} and second.replaced == report.replaced
    shapes = {k: v.shape for k, v in compact.state_dict().items()}  # compact also has the new folded biases
    assert all(shapes[k] == v.shape for k, v in again.state_dict().items())
    with torch.no_grad():
        assert rel(again(other), y) <= 1e-5
