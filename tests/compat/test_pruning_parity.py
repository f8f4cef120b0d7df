"""purecompress.compat's one-shot pruners and allocators give NNI 2.10.1's masks and files."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

nni = pytest.importorskip("nni", reason="parity tests need nni==2.10.1 as the oracle")

import nni.algorithms.compression.v2.pytorch.pruning.tools as NT  # noqa: E402
import nni.compression.pytorch.pruning as N  # noqa: E402
from nni.algorithms.compression.v2.pytorch.pruning.basic_pruner import BasicPruner as NBasicPruner  # noqa: E402
from nni.algorithms.compression.v2.pytorch.utils import Scaling as NScaling  # noqa: E402
from nni.algorithms.compression.v2.pytorch.utils import compute_sparsity as n_compute_sparsity  # noqa: E402
from nni.algorithms.compression.v2.pytorch.utils import config_list_canonical as n_canonical  # noqa: E402
from schema import SchemaError  # noqa: E402

import purecompress.compat as C  # noqa: E402
from purecompress.selectors import ConfigError  # noqa: E402
from tests.compat.models import build  # noqa: E402

Masks = dict[str, dict[str, torch.Tensor]]


def assert_same(ours: Masks, theirs: Masks) -> None:
    assert list(ours) == list(theirs)
    for module, targets in theirs.items():
        assert sorted(ours[module]) == sorted(targets), module
        for target, mask in targets.items():
            got = ours[module][target]
            assert got.shape == mask.shape and got.dtype == mask.dtype and got.device == mask.device
            assert torch.equal(got, mask), f"{module}.{target}"


def both(model_name: str, make: Callable[[Any, nn.Module], Any]) -> tuple[Any, Any, Masks, Masks]:
    """Build the same model twice, prune it with NNI (namespace N) and compat (namespace C)."""
    theirs, ours = build(model_name), build(model_name)
    p_nni, p_ours = make(_NNI, theirs), make(_OURS, ours)
    return p_nni, p_ours, p_nni.compress()[1], p_ours.compress()[1]


class _NNI:
    pruning, tools, Scaling, BasicPruner = N, NT, NScaling, NBasicPruner


class _OURS:
    pruning, tools, Scaling, BasicPruner = C, C, C.Scaling, C.BasicPruner


# Every config key, over three models: (model, pruner, config_list, kwargs).
CASES = [
    ("conv_bn_linear", "LevelPruner", [{"sparsity": 0.6, "op_types": ["default"]}], {}),
    ("grouped", "LevelPruner", [{"sparsity_per_layer": 0.45, "op_types": ["default"]}], {}),
    ("embed_convt", "LevelPruner", [{"sparsity": 0.6, "op_types": ["default"]}], {}),
    ("embed_convt", "LevelPruner", [{"total_sparsity": 0.4, "op_types": ["Embedding", "ConvTranspose2d", "Linear"]}],
     {}),
    ("conv_bn_linear", "LevelPruner", [{"sparsity": 0.7, "op_types": ["Linear"]}],
     {"mode": "balance", "balance_gran": [4]}),
    ("embed_convt", "LevelPruner", [{"sparsity": 0.5, "op_types": ["Embedding", "Linear"]}],
     {"mode": "balance", "balance_gran": [1, 2]}),
    ("conv_bn_linear", "L1NormPruner", [{"sparsity_per_layer": 0.5, "op_types": ["Conv2d", "Linear"]}], {}),
    ("grouped", "L1NormPruner", [{"sparsity": 0.5, "op_types": ["Conv2d", "Linear"]}], {}),
    ("embed_convt", "L1NormPruner", [{"sparsity": 0.33, "op_types": ["Linear"]}], {}),
    ("conv_bn_linear", "L2NormPruner", [{"sparsity": 0.33, "op_names": ["features.0"]},
                                        {"sparsity": 0.7, "op_partial_names": ["fc"]}], {}),
    ("grouped", "L2NormPruner", [{"sparsity": 0.25, "op_types": ["Conv2d"]},
                                 {"sparsity": 0.5, "op_partial_names": ["wise"]}], {}),
    ("conv_bn_linear", "FPGMPruner", [{"sparsity": 0.5, "op_types": ["Conv2d", "Linear"]},
                                      {"exclude": True, "op_names": ["fc2"]}], {}),
    ("grouped", "FPGMPruner", [{"sparsity": 0.6, "op_types": ["Conv2d", "Linear"]},
                               {"exclude": True, "op_partial_names": ["depth"]}], {}),
    ("embed_convt", "FPGMPruner", [{"total_sparsity": 0.5, "op_types": ["Linear"]}], {}),
]


@pytest.mark.parametrize(("model", "pruner", "config", "kwargs"), CASES,
                         ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_pruner_masks_and_configs(model: str, pruner: str, config: list[dict], kwargs: dict) -> None:
    p_nni, p_ours, theirs, ours = both(model, lambda ns, m: getattr(ns.pruning, pruner)(m, copy.deepcopy(config),
                                                                                         **kwargs))
    assert_same(ours, theirs)
    assert list(p_ours.get_modules_wrapper()) == list(p_nni.get_modules_wrapper())
    for name, wrapper in p_nni.get_modules_wrapper().items():
        assert p_ours.get_modules_wrapper()[name].config == wrapper.config
    assert p_ours.get_origin2wrapped_parameter_name_map() == p_nni.get_origin2wrapped_parameter_name_map()
    assert [n for n, _ in p_ours.bound_model.named_parameters()] == \
        [n for n, _ in p_nni.bound_model.named_parameters()]
    assert list(p_ours.bound_model.state_dict()) == list(p_nni.bound_model.state_dict())


def _allocator_case(name: str) -> Callable[[Any, Any], Any]:
    def make(ns: Any, pruner: Any) -> Any:
        channel = ns.Scaling([1], kernel_padding_mode="back")
        return {
            "global_level": lambda: ns.tools.GlobalSparsityAllocator(pruner),
            "global_channel": lambda: ns.tools.GlobalSparsityAllocator(pruner, channel),
            "bank": lambda: ns.tools.BankSparsityAllocator(pruner, [2]),
            "threshold": lambda: ns.tools.ThresholdSparsityAllocator(pruner),
            "normal_blocks": lambda: ns.tools.NormalSparsityAllocator(pruner, ns.Scaling([2, 4])),
        }[name]()
    return make


ALLOCATOR_CASES = [
    # (model, allocator, metric(p, scaler kind), config_list)
    ("conv_bn_linear", "global_level", "element", [{"total_sparsity": 0.6, "op_types": ["default"],
                                                    "max_sparsity_per_layer": {"fc2": 0.3}}]),
    ("embed_convt", "global_level", "element", [{"total_sparsity": 0.8, "op_types": ["default"]}]),
    ("conv_bn_linear", "global_channel", "channel", [{"total_sparsity": 0.5, "op_types": ["Conv2d", "Linear"],
                                                      "max_sparsity_per_layer": 0.7}]),
    ("grouped", "global_channel", "channel", [{"total_sparsity": 0.4, "op_types": ["Conv2d", "Linear"]}]),
    ("conv_bn_linear", "bank", "element", [{"sparsity": 0.5, "op_types": ["Linear"]}]),
    ("conv_bn_linear", "threshold", "element", [{"sparsity": 0.6, "op_types": ["Conv2d", "Linear"]}]),
    ("conv_bn_linear", "normal_blocks", "blocks", [{"sparsity": 0.5, "op_types": ["Linear"]}]),
]


def _basic(ns: Any, model: nn.Module, config: list[dict], metric: str, allocator: Callable) -> Any:
    """A BasicPruner subclass built the NNI way (NNI's BasicPruner validates no schema)."""
    scalers = {"element": None, "channel": ns.Scaling([1], kernel_padding_mode="back"),
               "blocks": ns.Scaling([2, 4])}[metric]

    class Custom(ns.BasicPruner):
        def reset_tools(self) -> None:
            self.data_collector = ns.tools.TargetDataCollector(self)
            self.metrics_calculator = ns.tools.NormMetricsCalculator(p=1, scalers=scalers)
            self.sparsity_allocator = allocator(ns, self)

    return Custom(model, copy.deepcopy(config))


@pytest.mark.parametrize(("model", "allocator", "metric", "config"), ALLOCATOR_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in ALLOCATOR_CASES])
def test_allocators_driven_the_nni_way(model: str, allocator: str, metric: str, config: list[dict]) -> None:
    make = _allocator_case(allocator)
    _, _, theirs, ours = both(model, lambda ns, m: _basic(ns, m, config, metric, make))
    assert_same(ours, theirs)


def test_allocator_swapped_on_a_built_pruner() -> None:
    def make(ns: Any, m: nn.Module) -> Any:
        pruner = ns.pruning.LevelPruner(m, [{"total_sparsity": 0.5, "op_types": ["default"]}])
        pruner.sparsity_allocator = ns.tools.GlobalSparsityAllocator(pruner)
        return pruner

    _, _, theirs, ours = both("grouped", make)
    assert_same(ours, theirs)


def test_continuous_masking_second_compress() -> None:
    p_nni, p_ours, first_nni, first_ours = both(
        "conv_bn_linear",
        lambda ns, m: ns.pruning.L1NormPruner(m, [{"sparsity": 0.3, "op_types": ["Conv2d", "Linear"]}]))
    assert_same(first_ours, first_nni)
    for pruner in (p_nni, p_ours):
        for wrapper in pruner.get_modules_wrapper().values():
            wrapper.config["total_sparsity"] = 0.6
        with torch.no_grad():  # make the pruned channels the largest: continuous masking keeps them pruned
            for wrapper in pruner.get_modules_wrapper().values():
                wrapper.weight.mul_(1 + 10 * (1 - wrapper.weight_mask))
    assert_same(p_ours.compress()[1], p_nni.compress()[1])


def test_exported_files_identical(tmp_path: Path) -> None:
    config = [{"sparsity": 0.5, "op_types": ["Conv2d", "Linear"]}, {"exclude": True, "op_names": ["fc2"]}]
    p_nni, p_ours, _, _ = both("conv_bn_linear", lambda ns, m: ns.pruning.L1NormPruner(m, copy.deepcopy(config)))
    p_nni.export_model(tmp_path / "nni_model.pth", tmp_path / "nni_mask.pth")
    p_ours.export_model(tmp_path / "our_model.pth", tmp_path / "our_mask.pth")
    for kind in ("model", "mask"):
        theirs = torch.load(tmp_path / f"nni_{kind}.pth", weights_only=True)
        ours = torch.load(tmp_path / f"our_{kind}.pth", weights_only=True)
        assert list(ours) == list(theirs)
        for key, value in theirs.items():
            if kind == "model":
                assert torch.equal(ours[key], value), key
            else:
                assert list(ours[key]) == list(value) == ["weight", "bias"]
                assert torch.equal(ours[key]["weight"], value["weight"])
                if value["bias"] is None:
                    assert ours[key]["bias"] is None
                else:
                    assert torch.equal(ours[key]["bias"], value["bias"])
    assert (torch.load(tmp_path / "our_mask.pth", weights_only=True)["features.3"]["bias"]) is None  # no bias


# NNI's exact vectors (NNI_PARITY.md) -------------------------------------------------------------


def _filters(n: int, shape: tuple[int, ...], value: Callable[[int], float]) -> nn.Module:
    conv = nn.Conv2d(shape[0], n, shape[1:])
    with torch.no_grad():
        for i in range(n):
            conv.weight[i] = value(i)
    return nn.Sequential(conv)


@pytest.mark.parametrize("ns", [_NNI, _OURS], ids=["nni", "ours"])
def test_exact_vectors(ns: Any) -> None:
    model = _filters(5, (1, 5, 5), float)
    masks = ns.pruning.L1NormPruner(model, [{"sparsity": 0.2, "op_types": ["Conv2d"]}]).compress()[1]
    assert masks["0"]["weight"].sum((1, 2, 3)).tolist() == [0, 25, 25, 25, 25]
    for sparsity, kept in ((0.2, [125] * 4 + [0, 0] + [125] * 4), (0.6, [125, 125] + [0] * 6 + [125, 125])):
        model = _filters(10, (5, 5, 5), lambda i: i + 1.0)
        masks = ns.pruning.FPGMPruner(model, [{"sparsity": sparsity, "op_types": ["Conv2d"]}]).compress()[1]
        assert masks["0"]["weight"].sum((1, 2, 3)).tolist() == kept
    model = nn.Sequential(nn.Linear(4, 10))
    masks = ns.pruning.L1NormPruner(model, [{"sparsity": 0.33, "op_types": ["Linear"]}]).compress()[1]
    assert int(masks["0"]["weight"][:, 0].sum()) == 7 and int(masks["0"]["bias"].sum()) == 7
    per_channel = ns.Scaling([1], kernel_padding_mode="back")
    l2 = ns.tools.NormMetricsCalculator(p=2, scalers=per_channel).calculate_metrics(
        {"m": {"weight": torch.ones(3, 3, 3)}})
    assert l2["m"]["weight"].tolist() == [3.0, 3.0, 3.0]
    dist = ns.tools.DistMetricsCalculator(p=2, scalers=per_channel).calculate_metrics(
        {"m": {"weight": torch.tensor([[1.0, 2.0], [4.0, 6.0]])}})
    assert dist["m"]["weight"].tolist() == [5.0, 5.0]


@pytest.mark.parametrize("ns", [_NNI, _OURS], ids=["nni", "ours"])
def test_scaling_examples(ns: Any) -> None:
    grid = ns.Scaling([2, 3]).shrink(torch.arange(24.0).view(4, 6))
    assert grid.tolist() == [[4.0, 7.0], [16.0, 19.0]]
    assert ns.Scaling([5]).shrink(torch.ones(10, 10)).shape == (10, 2)
    assert ns.Scaling([1], "back").shrink(torch.ones(4, 3, 2, 2)).shape == (4,)
    expanded = ns.Scaling([2, 3]).expand(grid, [4, 6])
    assert expanded[:2, :3].unique().tolist() == [4.0] and expanded.shape == (4, 6)
    ns.Scaling([2]).validate([4, 6])


def test_scaling_same_as_nni_on_many_kernels() -> None:
    for kernel, mode, shape in [([1], "back", (8, 3, 3, 3)), ([2, -1], "front", (4, 3)), ([-1, 1], "back", (4, 3, 2)),
                                ([1, 2], "front", (6, 4, 4)), ([3], "front", (2, 9))]:
        t = torch.randn(shape)
        ours, theirs = C.Scaling(kernel, mode), NScaling(kernel, mode)
        assert torch.allclose(ours.shrink(t), theirs.shrink(t))
        assert torch.equal(ours.shrink(t, lambda b: b.amax(-1)), theirs.shrink(t, lambda b: b.amax(-1)))
        assert torch.equal(ours.expand(theirs.shrink(t), list(shape)), theirs.expand(theirs.shrink(t), list(shape)))


# Config validation: NNI raises SchemaError, purecompress ConfigError naming index and key -----------------------

BAD = [
    ("LevelPruner", [{"sparsity": 1.5, "op_types": ["default"]}], 0, "sparsity"),
    ("LevelPruner", [{"sparsity": 1, "op_types": ["default"]}], 0, "sparsity"),
    ("LevelPruner", [{"op_types": ["default"], "sparsity": 0.5}, {"sparsity": 0.5, "op_types": ["Linear"], "foo": 1}],
     1, "foo"),
    ("LevelPruner", [{"sparsity": 0.5, "op_types": ["default"], "exclude": True}], 0, "exclude"),
    ("LevelPruner", [{"total_sparsity": 0.5, "op_types": ["default"], "max_sparsity_per_layer": 0.5}], 0,
     "max_sparsity_per_layer"),
    ("LevelPruner", [{"sparsity": 0.5, "op_names": "fc1"}], 0, "op_names"),
    ("L1NormPruner", [{"sparsity": 0.5, "op_types": ["BatchNorm2d"]}], 0, "op_types"),
    ("L1NormPruner", [{"sparsity": 0.5, "op_types": ["default"]}], 0, "op_types"),
    ("FPGMPruner", [{"exclude": True, "op_types": ["BatchNorm2d"]}, {"sparsity": 0.5, "op_types": ["Conv2d"]}], 0,
     "op_types"),
    ("L2NormPruner", [{"sparsity": 0.5}], 0, None),
    ("L2NormPruner", [{"sparsity": -0.1, "op_types": ["Conv2d"]}], 0, "sparsity"),
]


@pytest.mark.parametrize(("pruner", "config", "index", "key"), BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_configs(pruner: str, config: list[dict], index: int, key: str | None) -> None:
    with pytest.raises((SchemaError, ValueError)):
        getattr(N, pruner)(build("conv_bn_linear"), copy.deepcopy(config))
    with pytest.raises(ConfigError) as err:
        getattr(C, pruner)(build("conv_bn_linear"), copy.deepcopy(config))
    assert err.value.index == index and err.value.key == key, str(err.value)
    assert isinstance(err.value, SchemaError) and isinstance(err.value, C.SchemaError)  # NNI's type, caught alike
    assert f"config_list[{index}]" in str(err.value)


def test_both_sparsity_keys_rejected() -> None:
    config = [{"sparsity": 0.5, "sparsity_per_layer": 0.5, "op_types": ["Linear"]}]
    with pytest.raises((SchemaError, ValueError)):
        N.LevelPruner(build("conv_bn_linear"), copy.deepcopy(config))
    with pytest.raises(ConfigError, match="sparsity"):
        C.LevelPruner(build("conv_bn_linear"), copy.deepcopy(config))


def test_exclude_false_is_not_an_exclusion() -> None:
    """NNI excludes on the key's presence (a bug); purecompress refuses the ambiguous entry."""
    config = [{"sparsity": 0.5, "op_types": ["Linear"]}, {"exclude": False, "op_names": ["fc1"]}]
    _, masks = N.LevelPruner(build("conv_bn_linear"), copy.deepcopy(config)).compress()
    assert "fc1" not in masks
    with pytest.raises(ConfigError, match="exclude: False does not exclude"):
        C.LevelPruner(build("conv_bn_linear"), copy.deepcopy(config))


@pytest.mark.parametrize(("model", "pruner", "config", "kwargs"), CASES[:4] + CASES[9:13],
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES[:4] + CASES[9:13])])
def test_canonical_configs_and_sparsity_helpers(model: str, pruner: str, config: list[dict], kwargs: dict) -> None:
    m = build(model)
    assert C.config_list_canonical(m, copy.deepcopy(config)) == n_canonical(m, copy.deepcopy(config))
    _, p_ours, theirs, ours = both(model, lambda ns, mm: getattr(ns.pruning, pruner)(mm, copy.deepcopy(config),
                                                                                      **kwargs))
    canonical = p_ours.config_list
    origin = build(model)
    assert C.compute_sparsity(origin, origin, ours, canonical) == n_compute_sparsity(origin, origin, theirs, canonical)
