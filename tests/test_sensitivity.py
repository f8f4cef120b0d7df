"""pc.sensitivity: K candidate sparsities per layer in one vmapped evaluation, equal to the loop."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

import purecompress as pc


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


def _setup(model: nn.Module) -> tuple[pc.Params, list[str], object]:
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))
    params = pc.params_of(model)
    loss = lambda p: nn.functional.cross_entropy(functional_call(model, p, (x,)), y)  # noqa: E731
    return params, ["0.weight", "2.weight", "6.weight"], loss


def test_vmapped_sensitivity_equals_the_loop_on_a_cnn_with_16_candidates() -> None:
    model = _cnn().eval()
    params, layers, loss = _setup(model)
    before = {k: v.clone() for k, v in params.items()}
    sparsities = [i / 16 for i in range(16)]
    fast = pc.sensitivity(params, layers, sparsities, loss)
    slow = pc.sensitivity(params, layers, sparsities, loss, vmapped=False)
    assert dict(fast.looped) == {} and set(slow.looped) == set(layers)
    assert fast.layers == tuple(layers) and fast.sparsities == tuple(sparsities)
    assert torch.allclose(fast.scores, slow.scores, rtol=1e-5, atol=1e-6)
    shapes = {k: tuple(v.shape) for k, v in params.items()}
    for i, layer in enumerate(layers):  # each entry is evaluate() with only that layer (and its bias) pruned
        masks = pc.bias_masks(pc.allocate_per_layer(pc.l1_norm(params, [layer]), 0.5), shapes)
        assert torch.allclose(fast.scores[i, 8], loss(pc.apply_masks(params, masks)).double(), atol=1e-6)
    assert all(torch.equal(before[k], params[k]) for k in params)


def test_batchnorm_in_train_mode_falls_back_to_a_loop_and_says_why() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 6, 6))
    model.train()
    x = torch.randn(4, 3, 6, 6)
    result = pc.sensitivity(pc.params_of(model), ["0.weight"], [0.0, 0.5],
                            lambda p: functional_call(model, p, (x,)).pow(2).mean())
    assert set(result.looped) == {"0.weight"} and result.looped["0.weight"]
    assert result.scores.shape == (1, 2) and torch.isfinite(result.scores).all()


def test_as_dict_is_nni_format_and_bad_candidates_are_rejected() -> None:
    model = _cnn().eval()
    params, layers, loss = _setup(model)
    out = pc.sensitivity(params, layers[:1], [0.0, 0.5], loss).as_dict()
    assert list(out) == ["0.weight"] and list(out["0.weight"]) == [0.0, 0.5]
    import pytest

    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        pc.sensitivity(params, layers, [1.5], loss)
    with pytest.raises(ValueError, match="at least one"):
        pc.sensitivity(params, layers, [], loss)
