"""Data collection: activation statistics and Taylor gradient statistics, as pure functions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import purecompress as pc
from purecompress.pruning import (
    ActivationStats,
    batch_activation_stats,
    channel_dim_of,
    collect_activations,
    collect_taylor,
    taylor_accumulate,
)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


def _batches(n: int = 3, size: int = 5, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 2, 6, 6, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


def test_activation_stats_match_a_manual_forward() -> None:
    torch.manual_seed(0)
    model = Net().eval()
    batches = _batches()
    stats = collect_activations(model, pc.params_of(model), batches, ["conv", "fc"])
    with torch.no_grad():
        convs = torch.cat([F.relu(model.conv(x)) for x, _ in batches])
        fcs = torch.cat([F.relu(model(x)) for x, _ in batches])
    conv = stats["conv"]
    assert (conv.samples, conv.positions, conv.batches) == (15, 16, 3)
    assert torch.equal(conv.zeros, (convs == 0).sum((0, 2, 3)).double())
    torch.testing.assert_close(conv.total, convs.sum((0, 2, 3)).double())
    torch.testing.assert_close(stats["fc"].mean(), fcs.mean(0).double())


def test_collection_leaves_model_hooks_buffers_and_params_untouched() -> None:
    model = Net().train()
    params = pc.params_of(model)
    before = {k: v.clone() for k, v in params.items()}
    collect_activations(model, params, _batches(), pc.select(model, pc.from_config_list(
        [{"sparsity": 0.5, "op_types": ["Conv2d"]}])))
    collect_taylor(model, params, _batches(), F.cross_entropy, ["conv.weight"])
    assert all(torch.equal(before[k], v) for k, v in params.items())
    assert not model.conv._forward_hooks and not model.fc._forward_hooks


def test_hooks_are_removed_when_the_forward_fails() -> None:
    model = Net()
    with pytest.raises(RuntimeError):
        collect_activations(model, pc.params_of(model), [torch.zeros(1, 3, 6, 6)], ["conv"])
    assert not model.conv._forward_hooks


def test_max_batches_and_linear_samples_over_all_leading_dims() -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    batches = [torch.randn(4, 7, 3) for _ in range(5)]
    stats = collect_activations(model, pc.params_of(model), batches, ["0"], max_batches=2)
    assert (stats["0"].batches, stats["0"].samples, stats["0"].positions) == (2, 56, 1)


def test_activation_choices_and_errors() -> None:
    out = torch.tensor([[-1.0, 7.0]])
    assert batch_activation_stats(out, -1, "relu6").total.tolist() == [0.0, 6.0]
    assert batch_activation_stats(out, -1, lambda t: t).total.tolist() == [-1.0, 7.0]
    with pytest.raises(ValueError, match="unsupported activation"):
        batch_activation_stats(out, -1, "swish")
    with pytest.raises(TypeError, match="BatchNorm2d"):
        channel_dim_of(nn.BatchNorm2d(3))


def test_stats_add_and_reject_mismatched_shapes() -> None:
    a = batch_activation_stats(torch.ones(2, 3), -1)
    total = a + a
    assert (total.samples, total.batches, total.zeros.shape) == (4, 2, (3,))
    with pytest.raises(ValueError):
        a + batch_activation_stats(torch.ones(2, 4), -1)
    assert isinstance(total, ActivationStats)


def test_taylor_equals_autograd_sum_over_batches() -> None:
    torch.manual_seed(1)
    model = Net().eval()
    batches = _batches(n=2)
    stats = collect_taylor(model, pc.params_of(model), batches, F.cross_entropy, ["conv.weight", "fc.weight"])
    expected = torch.zeros_like(model.conv.weight)
    for x, y in batches:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        expected += (model.conv.weight.detach() * model.conv.weight.grad).pow(2)
    torch.testing.assert_close(stats["conv.weight"].score, expected)
    assert stats["conv.weight"].steps == 2


def test_taylor_eager_path_equals_torch_func_grad_and_handles_unused_weights() -> None:
    """Eager collection differentiates with autograd; the values are torch.func.grad's, and a target
    the loss does not reach scores 0 (func.grad's zeros, not autograd's "unused" error)."""
    torch.manual_seed(2)
    model = Net().eval()
    params = pc.params_of(model)
    (x, y), = _batches(n=1)
    stats = collect_taylor(model, params, [(x, y)], F.cross_entropy, ["conv.weight", "fc.weight"])
    w = {k: params[k] for k in ("conv.weight", "fc.weight")}
    g = torch.func.grad(lambda w: F.cross_entropy(torch.func.functional_call(model, {**params, **w}, (x,)), y))(w)
    for name in w:
        assert torch.equal(stats[name].score, (w[name] * g[name]).pow(2))
    for loss in (lambda out, t: out[:, :0].sum() + 1.0, lambda out, t: torch.tensor(1.0)):
        unused = collect_taylor(model, params, [(x, y)], loss, ["conv.weight"])
        assert torch.equal(unused["conv.weight"].score, torch.zeros_like(params["conv.weight"]))


def test_taylor_accumulate_is_pure() -> None:
    params, grads = {"w": torch.tensor([1.0, -2.0])}, {"w": torch.tensor([2.0, 1.0])}
    first = taylor_accumulate({}, params, grads)
    second = taylor_accumulate(first, params, grads)
    assert first["w"].score.tolist() == [4.0, 4.0] and first["w"].steps == 1
    assert second["w"].score.tolist() == [8.0, 8.0] and second["w"].steps == 2


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), size=st.integers(1, 4))
def test_per_sample_taylor_under_vmap_equals_a_loop(seed: int, size: int) -> None:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    params = pc.params_of(model)
    x, y = torch.randn(size, 3), torch.randint(0, 2, (size,))
    got = collect_taylor(model, params, [(x, y)], F.cross_entropy, ["0.weight", "2.weight"], per_sample=True)
    for name in ("0.weight", "2.weight"):
        expected = torch.zeros_like(params[name])
        for i in range(size):
            one = collect_taylor(model, params, [(x[i:i + 1], y[i:i + 1])], F.cross_entropy, [name])
            expected += one[name].score
        torch.testing.assert_close(got[name].score, expected)
        assert got[name].steps == size
