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
    with pytest.raises(NotImplementedError, match="mode"):
        count_flops_params(_model(), (1, 3, 8, 8), mode="full")
