"""Conv-BN pattern discovery (torch.fx) and folding math."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from purecompress.quant.fold import find_conv_bn, fold_conv_bn, fold_params, folded_call


class Block(nn.Module):
    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, bias=bias)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.conv3 = nn.Conv2d(6, 6, 1)
        self.bn3 = nn.BatchNorm2d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        y = self.conv3(x)
        return self.bn3(y) + y  # conv3's output is used twice: not folded


def _trained(bias: bool) -> Block:
    torch.manual_seed(0)
    model = Block(bias)
    with torch.no_grad():
        for bn in (model.bn1, model.bn2, model.bn3):
            bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(-1, 1)
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.2, 3)
    return model.eval()


def test_find_pairs() -> None:
    assert find_conv_bn(_trained(True)) == {"conv1": "bn1", "conv2": "bn2"}


@pytest.mark.parametrize("bias", [True, False])
def test_folded_equals_conv_bn_in_eval(bias: bool) -> None:
    model = _trained(bias)
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 3, 10, 10)
    params = dict(model.named_parameters()) | dict(model.named_buffers())
    expected = model(x)
    out = folded_call(model, params, find_conv_bn(model), x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not model.bn1._forward_hooks


def test_fold_math_matches_nni_formula() -> None:
    w, b = torch.randn(4, 2, 3, 3), torch.randn(4)
    g, beta, mu, var = torch.rand(4) + 0.5, torch.randn(4), torch.randn(4), torch.rand(4) + 0.1
    fw, fb = fold_conv_bn(w, b, g, beta, mu, var, 1e-5)
    sigma = torch.sqrt(var + 1e-5)
    assert torch.equal(fw, w * g.reshape(-1, 1, 1, 1) / sigma.reshape(-1, 1, 1, 1))
    assert torch.equal(fb, beta + (b - mu) / sigma * g)


def test_fold_params_is_pure() -> None:
    model = _trained(False)
    params = dict(model.named_parameters()) | dict(model.named_buffers())
    snapshot = {k: v.clone() for k, v in params.items()}
    new, extra = fold_params(model, params, {"conv1": "bn1"})
    assert set(extra) == {"bn1"} and not torch.equal(new["conv1.weight"], params["conv1.weight"])
    assert all(torch.equal(snapshot[k], params[k]) for k in params)


def test_untraceable_model_error() -> None:
    class Dynamic(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x

    with pytest.raises(ValueError, match="torch.fx"):
        find_conv_bn(Dynamic())
