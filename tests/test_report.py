"""Example tests of sparsity_report: per layer, per config group, total, and the table."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import purecompress as pc


def _setup() -> tuple[pc.Params, pc.Masks, pc.Plan]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 5), nn.Linear(5, 2))
    plan = pc.select(model, pc.from_config_list([
        {"sparsity": 0.5, "op_names": ["0"]},
        {"sparsity": 0.2, "op_names": ["2", "3"]},
    ]))
    params = pc.params_of(model)
    return params, pc.allocate(pc.l1_norm(params, plan), plan), plan


def test_layers_report_each_mask() -> None:
    params, masks, plan = _setup()
    report = pc.sparsity_report(params, masks, plan)
    by_name = {lay.name: lay for lay in report.layers}
    assert set(by_name) == set(masks)
    assert (by_name["0.weight"].numel, by_name["0.weight"].kept) == (40, 20)
    assert by_name["0.weight"].sparsity == 0.5
    assert (by_name["0.bias"].numel, by_name["0.bias"].kept) == (10, 5)
    assert (by_name["2.weight"].numel, by_name["2.weight"].kept) == (50, 40)
    assert (by_name["3.weight"].numel, by_name["3.weight"].kept) == (10, 10)  # int(0.2 * 2) = 0 rows


def test_total_is_over_masked_weights_only() -> None:
    params, masks, plan = _setup()
    report = pc.sparsity_report(params, masks, plan)
    assert report.total == pytest.approx(1 - (20 + 40 + 10) / (40 + 50 + 10))


def test_groups_are_per_config_index() -> None:
    params, masks, plan = _setup()
    report = pc.sparsity_report(params, masks, plan)
    assert set(report.groups) == {0, 1}
    assert report.groups[0] == 0.5
    assert report.groups[1] == pytest.approx(1 - (40 + 10) / (50 + 10))


def test_groups_count_unmasked_targets_as_dense_and_need_a_plan() -> None:
    params, masks, plan = _setup()
    partial = {k: v for k, v in masks.items() if not k.startswith("3.")}
    assert pc.sparsity_report(params, partial, plan).groups[1] == pytest.approx(1 - (40 + 10) / 60)
    assert pc.sparsity_report(params, masks).groups == {}


def test_params_total_and_kept_count_every_float_tensor() -> None:
    params, masks, plan = _setup()
    report = pc.sparsity_report(params, masks, plan)
    assert report.params_total == sum(t.numel() for t in params.values())
    pruned = sum(lay.numel - lay.kept for lay in report.layers)
    assert report.params_kept == report.params_total - pruned


def test_integer_buffers_are_not_counted() -> None:
    params = {"w": torch.ones(2, 2), "n": torch.tensor(3)}
    report = pc.sparsity_report(params, {"w": pc.Mask(torch.tensor([[True], [False]]), (2, 2))})
    assert report.params_total == 4 and report.params_kept == 2


def test_empty_and_bias_only_masks() -> None:
    report = pc.sparsity_report({"w": torch.ones(3)}, {})
    assert report.layers == () and report.total == 0.0 and report.params_kept == 3
    bias_only = pc.sparsity_report({"bias": torch.ones(4)}, {"bias": pc.Mask(torch.tensor([True, False] * 2), (4,))})
    assert bias_only.total == 0.5  # with no weights, the total is over what is masked


def test_mask_for_an_unknown_param_is_an_error() -> None:
    with pytest.raises(KeyError, match="not in params"):
        pc.sparsity_report({}, {"w": pc.Mask.dense((2,))})


def test_table_has_a_row_per_layer_and_a_total() -> None:
    params, masks, plan = _setup()
    table = pc.sparsity_report(params, masks, plan).table()
    lines = table.splitlines()
    assert lines[0].split() == ["layer", "params", "kept", "sparsity"]
    assert len(lines) == 1 + len(masks) + 1
    assert lines[-1].startswith("total")
    assert any(line.split() == ["0.weight", "40", "20", "50.00%"] for line in lines)


def test_float_buffers_count_unless_left_out() -> None:
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4))
    assert pc.sparsity_report(pc.params_of(model), {}).params_total == 12 + 8 + 8  # + running stats
    assert pc.sparsity_report(pc.params_of(model, buffers=False), {}).params_total == 20
