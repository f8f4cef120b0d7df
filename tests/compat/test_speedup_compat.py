"""purecompress.compat.speedup.ModelSpeedup: NNI's API, in place, errors, replacement table."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import purecompress as pc
from purecompress.compat.speedup import (
    EmptyLayerError,
    ModelSpeedup,
    SpeedupError,
    UnBalancedGroupError,
)
from purecompress.compat.utils import compute_sparsity_compact2origin
from purecompress.graph import ShrinkError

pytestmark = pytest.mark.usefixtures("one_thread")


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4)).eval()


def channel_masks(pruned: list[int], n: int = 8) -> dict:
    keep = torch.ones(n)
    keep[pruned] = 0
    return {"0": {"weight": keep.reshape(n, 1, 1, 1).expand(n, 3, 3, 3).clone(), "bias": keep.clone()}}


def masked(model: nn.Module, masks: dict, x: torch.Tensor) -> torch.Tensor:
    core = {f"{m}.{t}": pc.Mask.from_dense(v) for m, ts in masks.items() for t, v in ts.items()}
    with torch.no_grad():
        return torch.func.functional_call(model, pc.apply_masks(pc.params_of(model), core), (x,))


def test_in_place_from_a_mask_file(tmp_path) -> None:
    model = net()
    model[1].bias.data.uniform_(-1, 1)  # constants of pruned channels: folded, not dropped as in NNI
    x = torch.randn(2, 3, 6, 6)
    masks = channel_masks([1, 5, 6])
    expected = masked(model, masks, x)
    path = tmp_path / "mask.pth"
    torch.save(masks, path)
    relu, linear = model[2], model[5]
    ModelSpeedup(model, x, str(path), map_location="cpu").speedup_model()
    assert model[0].out_channels == 5 and model[1].num_features == 5 and model[5].in_features == 5
    assert model[2] is relu and model[5] is not linear
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
    assert compute_sparsity_compact2origin(net(), model, [{"op_types": ["Conv2d"]}])[0]["total_sparsity"] == 3 / 8


def test_tuple_and_dict_dummy_inputs() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.fc = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.fc(F.relu(self.a(x) + self.b(y)).mean((2, 3)))

    keep = torch.tensor([1.0, 0.0, 1.0, 1.0])
    masks = {n: {"weight": keep.reshape(4, 1, 1, 1).expand(4, 3, 1, 1).clone(), "bias": keep.clone()} for n in "ab"}
    x, y = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    for dummy in ((x, y), [x, y], {"x": x, "y": y}):
        model = Two()
        ModelSpeedup(model, dummy, masks).speedup_model()
        assert model.a.out_channels == model.b.out_channels == model.fc.in_features == 3


def test_nni_errors() -> None:
    with pytest.raises(EmptyLayerError, match="empty") as info:
        ModelSpeedup(net(), torch.randn(1, 3, 4, 4), channel_masks(list(range(8)))).speedup_model()
    assert isinstance(info.value, SpeedupError) and isinstance(info.value, ShrinkError)
    grouped = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1, groups=2), nn.Flatten(), nn.Linear(4, 2))
    keep = torch.tensor([0.0, 1.0, 1.0, 1.0])
    masks = {"0": {"weight": keep.reshape(4, 1, 1, 1).expand(4, 3, 1, 1).clone(), "bias": keep}}
    # NNI 2.10 balances the groups instead of raising (checked on NNI 2.10.1): group 0 keeps 1 of
    # 2 channels, group 1 both, so group 0 keeps both back and nothing shrinks
    ModelSpeedup(grouped, torch.randn(1, 3, 1, 1), masks).speedup_model()
    assert grouped[0].out_channels == grouped[2].in_channels == 4
    assert issubclass(UnBalancedGroupError, SpeedupError)  # NNI's name, for scripts that catch it


def test_unbalanced_grouped_conv_transpose_keeps_the_fullest_groups_count() -> None:
    # NNI's v1 TransposeModel: L1 on conv1 keeps 7 channels in group 0 of the grouped
    # ConvTranspose2d behind it and 3 in group 1; NNI 2.10.1 speeds it up to 14 input channels
    class Transpose(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 20, 5), nn.BatchNorm2d(20)
            self.conv2, self.bn2 = nn.ConvTranspose2d(20, 50, 5, groups=2), nn.BatchNorm2d(50)
            self.fc = nn.Linear(8 * 8 * 50, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
            return self.fc(x.flatten(1))

    model = Transpose().eval()
    kept = [0, 1, 2, 3, 5, 6, 9, 11, 14, 15]
    keep = torch.zeros(20)
    keep[kept] = 1.0
    masks = {"conv1": {"weight": keep.reshape(20, 1, 1, 1).expand(20, 3, 5, 5).clone(), "bias": keep.clone()}}
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        model.bn1.bias.zero_()  # pruned channels then carry nothing, as in NNI's test
        model.conv1.weight.mul_(masks["conv1"]["weight"])
        model.conv1.bias.mul_(keep)
        expected = model(x)
    ModelSpeedup(model, x, masks).speedup_model()
    assert (model.conv1.out_channels, model.conv2.in_channels, model.conv2.groups) == (14, 14, 2)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="Please provide the mask"):
        ModelSpeedup(net(), torch.randn(1, 3, 4, 4), "/no/such/file.pth")


def test_customized_replace_func() -> None:
    calls = []

    def replace_bn(module: nn.Module, masks: tuple) -> nn.Module:
        in_masks, out_mask, _ = masks
        keep = in_masks[0].flatten().bool()
        calls.append(int(keep.sum()))
        new = nn.BatchNorm2d(int(keep.sum()))
        new.load_state_dict({k: v[keep] if v.dim() else v for k, v in module.state_dict().items()})
        return new.eval()

    model = net()
    ModelSpeedup(model, torch.randn(2, 3, 4, 4), channel_masks([0, 3]),
                 customized_replace_func={"BatchNorm2d": replace_bn}).speedup_model()
    assert calls == [6] and model[1].num_features == 6


def test_speedup_of_a_model_a_1x_pruner_still_wraps_unwraps_it_and_says_so(tmp_path, caplog) -> None:  # noqa: ANN001
    import logging

    from purecompress.compat.pruning_v1 import L1FilterPruner

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    x = torch.randn(1, 3, 8, 8)
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    expected = model(x)
    pruner.export_model(tmp_path / "model.pth", tmp_path / "mask.pth")
    with caplog.at_level(logging.WARNING):
        ModelSpeedup(model, x, str(tmp_path / "mask.pth")).speedup_model()
    assert "were still wrapped by a 1.x pruner" in caplog.text
    assert model[0].out_channels == 4 and model[2].in_channels == 4
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
