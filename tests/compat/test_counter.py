"""compat.count_flops_params: NNI's signature and numbers on dense models, kept channels on pruned ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from purecompress.compat import L1NormPruner
from purecompress.compat.counter import count_flops_params


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.Flatten(), nn.Linear(16 * 4 * 4, 10))


def test_dense_counts_match_nni() -> None:
    counter = pytest.importorskip("nni.compression.pytorch.utils.counter", reason="parity needs nni==2.10.1")
    x = torch.randn(1, 3, 8, 8)
    flops, params, results = count_flops_params(_model(), x, verbose=False)
    nni_flops, nni_params, nni_results = counter.count_flops_params(_model(), x, verbose=False)
    assert (flops, params) == (nni_flops, nni_params)
    assert [r["flops"] for r in results] == [r["flops"] for r in nni_results]
    assert [r["weight_shape"] for r in results] == [list(r["weight_shape"]) for r in nni_results]


def test_wrapped_model_counts_only_kept_output_channels() -> None:
    model = _model()
    dense_flops, _, dense = count_flops_params(model, (1, 3, 8, 8), verbose=False)
    L1NormPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}]).compress()
    flops, _, results = count_flops_params(model, (1, 3, 8, 8), verbose=False)
    assert [r["name"] for r in results] == ["0", "2", "4"]
    assert results[0]["flops"] == dense[0]["flops"] // 2 and results[1]["flops"] == dense[1]["flops"] // 2
    assert flops < dense_flops


def test_unsupported_options_say_so() -> None:
    with pytest.raises(NotImplementedError, match="custom_ops"):
        count_flops_params(_model(), (1, 3, 8, 8), custom_ops={nn.Conv2d: print})
    with pytest.raises(ValueError, match="mode"):
        count_flops_params(_model(), (1, 3, 8, 8), mode="all")


class _NniModel1(nn.Module):
    """NNI's FlopsCounterTest Model1: every module type of mode='full'."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.relu = nn.Conv2d(3, 5, 1, 1), nn.BatchNorm2d(5), nn.LeakyReLU()
        self.linear, self.upsample = nn.Linear(20, 10), nn.UpsamplingBilinear2d(size=2)
        self.pool = nn.AdaptiveAvgPool2d((2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.upsample(self.relu(self.bn(self.conv(x)))))
        return self.linear(x.view(x.size(0), -1))


class _NniModel2(nn.Module):
    """NNI's Model2: conv2 runs 5 times in one forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.conv2 = nn.Conv2d(3, 5, 1, 1), nn.Conv2d(5, 5, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        for _ in range(5):
            x = self.conv2(x)
        return x


class _Full(nn.Module):
    """Every mode='full' type, pools and upsampling modes included, one module reused."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.LeakyReLU()
        self.pool, self.apool = nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(3)
        self.up, self.near = nn.Upsample(scale_factor=2, mode="bilinear"), nn.UpsamplingNearest2d(scale_factor=2)
        self.conv1d, self.bn1d, self.fc = nn.Conv1d(6, 4, 3), nn.BatchNorm1d(4), nn.Linear(4 * 34, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.conv(x)))
        x = self.near(self.up(self.apool(self.pool(x))))  # 3x3 -> 6x6 -> 12x12
        x = self.act(self.bn1d(self.conv1d(x.flatten(2)[:, :, :36])))
        return self.fc(x.flatten(1))


@pytest.mark.parametrize(("model", "mode", "expected"), [(_NniModel1, "full", (610, 240)),
                                                         (_NniModel2, "default", (560, 50)),
                                                         (_Full, "full", None), (_Full, "default", None)])
@pytest.mark.parametrize("batch", [1, 2])
def test_full_mode_and_repeated_calls_match_nni(model: type[nn.Module], mode: str, expected: tuple[int, int] | None,
                                               batch: int) -> None:
    counter = pytest.importorskip("nni.compression.pytorch.utils.counter", reason="parity needs nni==2.10.1")
    torch.manual_seed(0)
    flops, params, results = count_flops_params(model(), (batch, 3, 2, 2) if model is not _Full else
                                                (batch, 3, 12, 12), mode=mode, verbose=False)
    torch.manual_seed(0)
    n_flops, n_params, n_results = counter.count_flops_params(model(), (batch, 3, 2, 2) if model is not _Full else
                                                              (batch, 3, 12, 12), mode=mode, verbose=False)
    assert (flops, params) == (int(n_flops), n_params)
    assert expected is None or (flops, params) == expected
    assert [(r["name"], r["module_type"], int(r["flops"]), r["params"]) for r in results] == \
        [(r["name"], r["module_type"], int(r["flops"]), r["params"]) for r in n_results]
