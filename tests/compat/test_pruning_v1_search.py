"""NNI 1.x's search pruners (NetAdapt, simulated annealing, ADMM, AutoCompress) on purecompress,
against NNI 2.10.1's own 1.x classes: NetAdapt and ADMM masks equal NNI's; the annealing's and
AutoCompress's random searches are checked for their files, budgets and call pattern."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

nni = pytest.importorskip("nni", reason="parity tests need nni==2.10.1 as the oracle")
import nni.algorithms.compression.pytorch.pruning as NV1  # noqa: E402
from schema import SchemaError  # noqa: E402

import purecompress.compat.pruning_v1 as V1  # noqa: E402
from tests.compat.test_pruning_v1_parity import Net, _masks  # noqa: E402  # conv-BN-relu x2 -> linear, [N, 1, 12, 12]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")




class Model(nn.Module):
    """NNI's ``test_pruners.py`` model: conv1 -> bn1 -> pool -> fc, on ``[N, 1, 28, 28]``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, kernel_size=3, padding=1), nn.BatchNorm2d(8)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.bn1(self.conv1(x))).view(x.size(0), -1))


def _net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    net = Net()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p))
    return net.eval()


X = torch.randn(4, 1, 12, 12, generator=torch.Generator().manual_seed(1))
REF = _net()(X).detach()


def _closeness(model: nn.Module) -> float:
    """A deterministic evaluator: minus the squared distance of the outputs to the dense model's."""
    model.eval()
    with torch.no_grad():
        return -float(((model(X) - REF) ** 2).sum())


def _shrink_a_little(model: nn.Module) -> None:
    """A deterministic short-term fine-tuner (its weights must carry over to the next iteration)."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.99)


def _trainer(model: nn.Module, optimizer: torch.optim.Optimizer, criterion, epoch: int) -> None:  # noqa: ANN001
    g = torch.Generator().manual_seed(epoch)
    model.train()
    for _ in range(2):
        x, y = torch.randn(4, 1, 12, 12, generator=g), torch.tensor([0, 1, 2, 0])
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()


def _assert_same_masks(ours: dict, theirs: dict) -> None:
    assert list(ours) == list(theirs)
    for name, (w, b) in theirs.items():
        assert torch.equal(ours[name][0], w), name
        assert (ours[name][1] is None) == (b is None) and (b is None or torch.equal(ours[name][1], b)), name


# NetAdapt ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("base_algo", "op_types"), [("l1", ["Conv2d"]), ("fpgm", ["Conv2d"]), ("level", ["default"])])
def test_netadapt_chooses_the_layers_sparsities_masks_and_weights_nni_does(tmp_path: Path, base_algo: str,
                                                                          op_types: list[str]) -> None:
    results = {}
    for ns in (NV1, V1):
        model, out = _net(), tmp_path / ns.__name__
        pruner = ns.NetAdaptPruner(model, [{"sparsity": 0.5, "op_types": op_types}], _shrink_a_little, _closeness,
                                   base_algo=base_algo, sparsity_per_iteration=0.2, experiment_data_dir=str(out))
        assert pruner.compress() is model
        results[ns] = (json.loads((out / "search_result.json").read_text()), _masks(pruner), model.state_dict())
    (n_json, n_masks, n_state), (c_json, c_masks, c_state) = results[NV1], results[V1]
    assert c_json == n_json  # the generated config list (layers in first-chosen order, sparsities) and score
    _assert_same_masks(c_masks, n_masks)
    assert list(c_state) == list(n_state) and all(torch.equal(c_state[k], n_state[k]) for k in n_state)
    assert len(json.loads(c_json["config_list"])) >= 1


def test_netadapt_on_nnis_test_model_and_its_history(tmp_path: Path) -> None:
    theirs, ours = Model(), Model()
    ours.load_state_dict(theirs.state_dict())
    config = [{"sparsity": 0.5, "op_types": ["Conv2d"]}]
    n = NV1.NetAdaptPruner(theirs, config, lambda m: m, lambda m: 0.9, experiment_data_dir=str(tmp_path / "n"))
    c = V1.NetAdaptPruner(ours, config, lambda m: m, lambda m: 0.9, experiment_data_dir=str(tmp_path / "c"))
    n.compress()
    c.compress()
    _assert_same_masks(_masks(c), _masks(n))
    assert (tmp_path / "c" / "search_result.json").read_text() == (tmp_path / "n" / "search_result.json").read_text()
    # 88 counted weights, 4 a step: conv1 relates its 72 and fc's 16, 4/88 never prunes one of 8 filters;
    # 0.05 added ten times is 0.4999..., so 11 iterations (as NNI: the same file)
    assert c.result is not None and len(c.result.history) == 11
    assert {s.chosen.sparsity for s in c.result.history if s.chosen} == {4 / 88}
    c.export_model(tmp_path / "m.pth", tmp_path / "mask.pth")
    assert set(torch.load(tmp_path / "mask.pth", weights_only=True)) == {"conv1"}


def test_netadapt_minimize_and_bad_arguments(tmp_path: Path) -> None:
    model = _net()
    pruner = V1.NetAdaptPruner(model, [{"sparsity": 0.3, "op_types": ["Conv2d"]}], None, lambda m: -_closeness(m),
                               optimize_mode="minimize", sparsity_per_iteration=0.2, experiment_data_dir=str(tmp_path))
    pruner.compress()
    best = V1.NetAdaptPruner(_net(), [{"sparsity": 0.3, "op_types": ["Conv2d"]}], None, _closeness,
                             sparsity_per_iteration=0.2, experiment_data_dir=str(tmp_path))
    best.compress()
    _assert_same_masks(_masks(pruner), _masks(best))  # minimising -x is maximising x
    with pytest.raises(ValueError, match="base_algo must be one of"):
        V1.NetAdaptPruner(_net(), [{"sparsity": 0.3, "op_types": ["Conv2d"]}], None, _closeness, base_algo="l3")
    with pytest.raises(ValueError, match="optimize_mode must be"):
        V1.NetAdaptPruner(_net(), [{"sparsity": 0.3, "op_types": ["Conv2d"]}], None, _closeness, optimize_mode="max")
    with pytest.raises(SchemaError):  # l1 prunes Conv2d only, as in 1.x
        V1.NetAdaptPruner(_net(), [{"sparsity": 0.3, "op_types": ["Linear"]}], None, _closeness)
    with pytest.raises(SchemaError, match="nothing to search over"):
        V1.SimulatedAnnealingPruner(_net(), [{"sparsity": 0.3, "op_types": ["Conv2d"], "op_names": ["fc"]}],
                                    _closeness)


# Simulated annealing ----------------------------------------------------------------------------

def test_annealing_writes_nnis_files_and_sets_the_best_masks_on_the_model(tmp_path: Path) -> None:
    np.random.seed(0)
    model = _net()
    pruner = V1.SimulatedAnnealingPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], _closeness,
                                         experiment_data_dir=str(tmp_path))
    assert pruner.compress() is model
    result = json.loads((tmp_path / "search_result.json").read_text())
    with open(tmp_path / "search_history.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["sparsity", "performance", "config_list"]
    assert result["performance"] == max(float(r["performance"]) for r in rows)
    best = json.loads(result["config_list"])
    assert [c["op_names"] for c in best] == [["conv1"], ["conv2"]]  # ascending size, 1.x's base configs
    # the model's masks are the base pruner's at the best config list (NNI hands back another model)
    _assert_same_masks({k: v for k, v in _masks(pruner).items()}, _masks(_l1(best)))
    pruned = sum(int((w.weight_mask == 0).sum()) for w in pruner.get_modules_wrapper())
    assert 0.3 < pruned / (72 + 720) < 0.6  # the budget, in whole filters
    np.random.seed(0)
    again = V1.SimulatedAnnealingPruner(_net(), [{"sparsity": 0.5, "op_types": ["Conv2d"]}], _closeness,
                                        experiment_data_dir=str(tmp_path / "again"))
    again.compress()
    _assert_same_masks(_masks(again), _masks(pruner))  # np.random.seed repeats a run, as in NNI


def _l1(config_list: list[dict]) -> object:
    pruner = V1.L1FilterPruner(_net(), config_list)
    pruner.compress()
    return pruner


def test_annealing_evaluates_nnis_schedule_plus_its_first_draw(tmp_path: Path) -> None:
    counts = {}
    for ns in (NV1, V1):
        calls: list[int] = []
        pruner = ns.SimulatedAnnealingPruner(_net(), [{"sparsity": 0.5, "op_types": ["Conv2d"]}],
                                             lambda m, calls=calls: calls.append(1) or 0.9,
                                             experiment_data_dir=str(tmp_path / ns.__name__))
        assert pruner.compress(return_config_list=True)
        counts[ns] = len(calls)
    # a constant score is always accepted: 100 * 0.9**k > 20 for k < 16; 1.x never scores its first draw
    assert counts == {NV1: 16, V1: 17}


# ADMM -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("base_algo", "config"), [
    ("l1", [{"sparsity": 0.5, "op_types": ["Conv2d"]}]),
    ("fpgm", [{"sparsity": 0.5, "op_types": ["Conv2d"]}]),
    ("level", [{"sparsity": 0.6, "op_types": ["default"]}]),
])
def test_admm_masks_equal_nnis_after_training(base_algo: str, config: list[dict]) -> None:
    results, weights = {}, {}
    for ns in (NV1, V1):
        model = _net()
        pruner = ns.ADMMPruner(model, [dict(c) for c in config], _trainer, num_iterations=3, epochs_per_iteration=2,
                               row=1e-2, base_algo=base_algo)
        assert pruner.compress() is model
        results[ns], weights[ns] = _masks(pruner), {w.name: w.module.weight.detach() for w in pruner.modules_wrapper}
    _assert_same_masks(results[V1], results[NV1])
    for name, w in weights[NV1].items():  # 1.x's first round trains without the penalty (its Z is W itself)
        torch.testing.assert_close(weights[V1][name], w, atol=5e-3, rtol=0)


def test_admm_pulls_the_weights_towards_the_projection() -> None:
    def steps(row: float) -> torch.Tensor:
        model = _net()
        pruner = V1.ADMMPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], _trainer, num_iterations=2,
                               epochs_per_iteration=1, row=row)
        pruner.compress()
        mask = pruner.modules_wrapper[0].weight_mask
        return (model.conv1.module.weight.detach() * (1 - mask)).abs().sum()

    assert steps(0.5) < steps(0.0)  # the penalty shrinks what the masks then prune
    with pytest.raises(ValueError, match="trainer"):
        V1.ADMMPruner(_net(), [{"sparsity": 0.5, "op_types": ["Conv2d"]}], None)  # type: ignore[arg-type]


def test_admm_trains_with_1xs_adam_and_penalises_its_first_round_too() -> None:
    optimizers: list[torch.optim.Optimizer] = []

    def trainer(model: nn.Module, optimizer: torch.optim.Optimizer, criterion, epoch: int) -> None:  # noqa: ANN001
        optimizers.append(optimizer)
        _trainer(model, optimizer, criterion, epoch)

    def one_round(ns: object, row: float) -> torch.Tensor:
        model = _net()
        ns.ADMMPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], trainer, num_iterations=1,  # type: ignore[attr-defined]
                      epochs_per_iteration=2, row=row).compress()
        return model.conv1.module.weight.detach()

    assert torch.equal(one_round(V1, 0.0), one_round(NV1, 0.0))  # no penalty: the same training, bit for bit
    assert torch.equal(one_round(NV1, 0.5), one_round(NV1, 0.0))  # 1.x: Z is W itself until the first projection
    assert not torch.equal(one_round(V1, 0.5), one_round(V1, 0.0))
    assert all(isinstance(o, torch.optim.Adam) and o.defaults["lr"] == 1e-3 and o.defaults["weight_decay"] == 5e-5
               for o in optimizers)


# AutoCompress -----------------------------------------------------------------------------------

def test_autocompress_shrinks_the_model_round_by_round(tmp_path: Path) -> None:
    np.random.seed(0)
    model = Model()
    scores: list[int] = []

    def evaluator(m: nn.Module) -> float:
        scores.append(m.conv1.out_channels if isinstance(m.conv1, nn.Conv2d) else m.conv1.module.out_channels)
        return 0.9

    pruner = V1.AutoCompressPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], lambda *a, **k: None,
                                   evaluator, torch.randn(2, 1, 28, 28), num_iterations=2, admm_num_iterations=2,
                                   admm_epochs_per_iteration=1, experiment_data_dir=str(tmp_path))
    assert pruner.compress() is model
    # each round prunes 1 - 0.5 ** (1/2) of the conv weights: 8 -> 6 -> 4 or 5 filters
    assert isinstance(model.conv1, nn.Conv2d) and 4 <= model.conv1.out_channels <= 5
    assert model.fc.in_features == model.conv1.out_channels and scores[-1] == model.conv1.out_channels
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 2)
    assert sorted(os.listdir(tmp_path)) == ["search_history.csv", "search_result.json"]  # round files removed
    pruner.export_model(tmp_path / "m.pth", tmp_path / "mask.pth", tmp_path / "m.onnx", input_shape=(2, 1, 28, 28))
    assert torch.load(tmp_path / "m.pth", weights_only=True)["conv1.weight"].shape[0] == model.conv1.out_channels
    assert (tmp_path / "m.onnx").stat().st_size > 0 and not (tmp_path / "mask.pth").exists()
    with pytest.raises(SchemaError):  # 1.x never checks; a bad config fails at once here
        V1.AutoCompressPruner(Model(), [{"sparsity": 1.5, "op_types": ["Conv2d"]}], None, evaluator, None)
