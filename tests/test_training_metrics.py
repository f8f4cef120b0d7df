"""Data-driven metrics and their loss terms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import purecompress as pc
from purecompress.collect import TaylorStats, batch_activation_stats
from purecompress.metrics_data import apoz, bn_scale, mean_activation, slim_penalty, taylor_fo


def test_apoz_is_one_minus_the_zero_fraction_per_conv_channel() -> None:
    out = torch.tensor([[[[0.0, 1.0], [2.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    stats = {"conv": batch_activation_stats(out, -3)}
    metric = apoz(stats, {"conv.weight": torch.zeros(3, 2, 1, 1)})["conv.weight"]
    assert metric.shape == (3, 2, 1, 1)
    assert metric.score.flatten().tolist() == [0.5, 0.0, 1.0]
    mean = mean_activation(stats, {"conv.weight": torch.zeros(3, 2, 1, 1)})["conv.weight"]
    assert mean.score.flatten().tolist() == [0.75, 0.0, 1.0]


def test_activation_metrics_check_params() -> None:
    stats = {"fc": batch_activation_stats(torch.ones(2, 3), -1)}
    with pytest.raises(KeyError, match="fc.weight"):
        apoz(stats, {})
    with pytest.raises(ValueError, match="output channels"):
        apoz(stats, {"fc.weight": torch.zeros(4, 2)})


def test_taylor_metric_sums_blocks_and_allocates() -> None:
    score = torch.tensor([[1.0, 1.0], [5.0, 0.0], [0.0, 0.5]])
    metrics = taylor_fo({"w": TaylorStats(score, 3)})
    assert metrics["w"].score.flatten().tolist() == [2.0, 5.0, 0.5]
    assert pc.allocate_per_layer(metrics, 0.34)["w"].keep.flatten().tolist() == [True, True, False]
    fine = taylor_fo({"w": TaylorStats(score, 3)}, block=pc.Block.element())
    assert torch.equal(fine["w"].score, score)


def test_bn_scale_and_slim_penalty_gradient() -> None:
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -2.0, 0.25]))
    params = pc.params_of(model)
    plan = pc.select(model, pc.from_config_list([{"total_sparsity": 0.3, "op_types": ["BatchNorm2d"]}]))
    metrics = bn_scale(params, plan)
    assert metrics["1.weight"].score.tolist() == [0.5, 2.0, 0.25]
    g = torch.func.grad(lambda p: slim_penalty(p, ["1.weight"], scale=0.1))({"1.weight": params["1.weight"]})
    torch.testing.assert_close(g["1.weight"], torch.tensor([0.1, -0.1, 0.1]))
    assert slim_penalty(params, [], scale=1.0).item() == 0.0
