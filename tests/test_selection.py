"""Example tests of select(): NNI's matching rules, the Plan, and unmatched-selector warnings."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import purecompress as pc


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 8, 3, bias=False)
        self.block = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        self.fc = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.bn1(self.conv1(x)))
        return self.fc(self.block(x.mean((2, 3))))


def _select(config_list: list[dict[str, object]], **kwargs: object) -> pc.Plan:
    return pc.select(Net(), pc.from_config_list(config_list), **kwargs)  # type: ignore[arg-type]


def test_default_expands_to_weighted_types_only() -> None:
    plan = _select([{"sparsity": 0.5, "op_types": ["default"]}])
    assert plan.modules == ("conv1", "conv2", "block.0", "block.2", "fc")
    assert [e.type_name for e in plan] == ["Conv2d", "Conv2d", "Linear", "Linear", "Linear"]


def test_last_match_wins() -> None:
    plan = _select([{"sparsity": 0.5, "op_types": ["Linear"]}, {"sparsity": 0.8, "op_names": ["fc"]},
                    {"sparsity": 0.2, "op_types": ["Conv2d"]}, {"sparsity": 0.3, "op_names": ["block.0"]}])
    assert {e.module: e.config.sparsity for e in plan} == {
        "conv1": 0.2, "conv2": 0.2, "block.0": 0.3, "block.2": 0.5, "fc": 0.8}
    assert plan["fc"].index == 1 and plan["block.0"].index == 3


def test_exclude_removes_and_a_later_config_can_re_add() -> None:
    plan = _select([{"sparsity": 0.5, "op_types": ["Linear"]}, {"exclude": True, "op_partial_names": ["block"]}])
    assert plan.modules == ("fc",)
    plan = _select([{"exclude": True, "op_names": ["fc"]}, {"sparsity": 0.5, "op_types": ["Linear"]}])
    assert "fc" in plan  # the later config wins over the earlier exclude


def test_exclude_false_does_not_exclude() -> None:
    # NNI excludes even for exclude: False; purecompress only for True.
    plan = _select([{"sparsity": 0.5, "op_types": ["Linear"]},
                    {"exclude": False, "sparsity": 0.1, "op_names": ["fc"]}])
    assert "fc" in plan and plan["fc"].config.sparsity == 0.1


def test_op_partial_names_match_substrings() -> None:
    plan = _select([{"sparsity": 0.5, "op_partial_names": ["conv"]}])
    assert plan.modules == ("conv1", "conv2")


def test_op_names_re_match_whole_names() -> None:
    plan = _select([{"sparsity": 0.5, "op_names_re": [r"block\.\d"]}])
    assert plan.modules == ("block.0", "block.1", "block.2")
    plan = _select([{"sparsity": 0.5, "op_names_re": [r"block\.\d"], "op_types": ["Linear"]}])
    assert plan.modules == ("block.0", "block.2")


def test_types_and_names_must_both_match() -> None:
    plan = _select([{"sparsity": 0.5, "op_types": ["Conv2d"], "op_names": ["conv1", "fc"]}])
    assert plan.modules == ("conv1",)


def test_root_module_is_never_selected() -> None:
    plan = pc.select(nn.Linear(2, 2), pc.from_config_list([{"sparsity": 0.5, "op_types": ["Linear"]}]), warn=False)
    assert len(plan) == 0


def test_plan_entries_targets_and_groups() -> None:
    plan = _select([{"sparsity": 0.5, "op_types": ["Conv2d"]},
                    {"sparsity": 0.3, "op_types": ["Linear", "BatchNorm2d"]}])
    assert plan["conv1"].params == {"conv1.weight": (4, 1, 3, 3), "conv1.bias": (4,)}
    assert plan["conv2"].params == {"conv2.weight": (8, 4, 3, 3)}  # no bias
    assert set(plan["bn1"].params) == {"bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                                       "bn1.num_batches_tracked"}
    assert list(plan.targets()) == ["conv1.weight", "bn1.weight", "conv2.weight", "block.0.weight",
                                    "block.2.weight", "fc.weight"]
    assert list(plan.targets("bias")) == ["conv1.bias", "bn1.bias", "block.0.bias", "block.2.bias", "fc.bias"]
    assert plan.groups() == {0: ("conv1", "conv2"), 1: ("bn1", "block.0", "block.2", "fc")}
    with pytest.raises(KeyError, match="not in this plan"):
        plan["nope"]
    assert "nope" not in plan


def test_root_level_targets_have_no_prefix() -> None:
    entry = pc.PlanEntry("", "Linear", 0, None, {"weight": (2, 2)})
    assert pc.Plan((entry,)).targets() == {"weight": entry}


@pytest.mark.parametrize(
    ("config_list", "what"),
    [
        ([{"sparsity": 0.5, "op_types": ["Conv3d"]}], r"config_list\[0\]: op_types \['Conv3d'\]"),
        ([{"sparsity": 0.5, "op_types": ["Linear"]}, {"sparsity": 0.5, "op_names": ["fc2"]}],
         r"config_list\[1\]: names \['fc2'\]"),
        ([{"sparsity": 0.5, "op_partial_names": ["xyz"]}], r"names \['xyz'\]"),
        ([{"sparsity": 0.5, "op_names_re": ["conv"]}], r"names \['conv'\]"),
        ([{"sparsity": 0.5, "op_types": ["Conv2d"], "op_names": ["fc"]}], "never together"),
        ([{"exclude": True, "op_names": ["missing"]}], r"names \['missing'\]"),
    ],
)
def test_unmatched_selectors_warn(config_list: list[dict[str, object]], what: str) -> None:
    with pytest.warns(pc.UnmatchedSelectorWarning, match=what):
        _select(config_list)


def test_matching_selectors_and_default_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _select([{"sparsity": 0.5, "op_types": ["default"]}, {"exclude": True, "op_names": ["fc"]}])


def test_warn_false_silences_unmatched_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(_select([{"sparsity": 0.5, "op_types": ["Conv3d"]}], warn=False)) == 0


def test_select_does_not_modify_the_model() -> None:
    model = Net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    pc.select(model, pc.from_config_list([{"sparsity": 0.5, "op_types": ["default"]}]))
    assert [type(m) for m in model.modules()] == types
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
