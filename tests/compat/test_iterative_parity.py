"""Iterative pruners against NNI 2.10.1: schedules, task counts, best results, final masks.

NNI's task generators ``torch.load`` pickled whole models, which torch >= 2.6 refuses by default:
``torch.load`` is patched (``weights_only=False`` unless given) inside these tests only.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

nni = pytest.importorskip("nni", reason="NNI 2.10.1 is the oracle of the parity tests")

import nni.compression.pytorch.pruning as nni_pruning  # noqa: E402
from nni.algorithms.compression.v2.pytorch.base import Task as NniTask  # noqa: E402
from nni.algorithms.compression.v2.pytorch.base import TaskResult as NniTaskResult  # noqa: E402
from nni.algorithms.compression.v2.pytorch.pruning.tools import TaskGenerator as NniTaskGenerator  # noqa: E402

from purecompress.compat import pruning as iterative  # noqa: E402
from purecompress.compat import pruning as ours_tg  # noqa: E402
from purecompress.compat.pruning import Task, TaskResult  # noqa: E402
from purecompress.compat.utils import compute_sparsity_mask2compact  # noqa: E402
from purecompress.pruning import iteration_sparsities  # noqa: E402
from purecompress.search import count_flops_params  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


class TorchModel(torch.nn.Module):
    """The model of NNI's iterative pruner tests."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 5, 5, 1)
        self.bn1 = torch.nn.BatchNorm2d(5)
        self.conv2 = torch.nn.Conv2d(5, 10, 5, 1)
        self.bn2 = torch.nn.BatchNorm2d(10)
        self.fc1 = torch.nn.Linear(4 * 4 * 10, 100)
        self.fc2 = torch.nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2, 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2, 2)
        x = F.relu(self.fc1(x.view(-1, 4 * 4 * 10)))
        return F.log_softmax(self.fc2(x), dim=1)


_X = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
_Y = torch.randint(0, 10, (4,), generator=torch.Generator().manual_seed(2))


def finetuner(model: torch.nn.Module) -> None:
    """One deterministic SGD step on fixed data (moves the weights between iterations)."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.zero_grad()
    F.nll_loss(model(_X), _Y).backward()
    optimizer.step()


@pytest.fixture
def nni_load(monkeypatch: pytest.MonkeyPatch) -> None:
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: load(*a, **{"weights_only": False, **k}))


def _model() -> TorchModel:
    torch.manual_seed(0)
    return TorchModel()


def _nni_configs(log_dir: Path) -> dict[int, dict[str, float]]:
    import json_tricks

    root = next(p for p in log_dir.iterdir() if p.is_dir())
    out = {}
    for path in (root / "intermediate_result").glob("*_config_list.json"):
        with path.open() as f:
            out[int(path.name.split("_")[0])] = {c["op_names"][0]: c["total_sparsity"] for c in json_tricks.load(f)}
    return out


def _our_configs(pruner: iterative.PruningScheduler) -> dict[int, dict[str, float]]:
    out = {}
    for task_id, task in pruner.task_generator._tasks.items():
        with Path(task.config_list_path).open() as f:
            out[task_id] = {c["op_names"][0]: c["total_sparsity"] for c in json.load(f)}
    return out


@pytest.mark.parametrize("name,kind,n", [("LinearPruner", "linear", 2), ("AGPPruner", "agp", 3),
                                         ("LotteryTicketPruner", "lottery", 2)])
def test_function_based_pruners_match_nni(name: str, kind: str, n: int, tmp_path: Path, nni_load: None) -> None:
    config_list = [{"op_types": ["Conv2d", "Linear"], "sparsity": 0.8}]
    theirs_model, ours_model = _model(), _model()
    theirs = getattr(nni_pruning, name)(theirs_model, copy.deepcopy(config_list), "level", n,
                                        log_dir=str(tmp_path / "nni"), keep_intermediate_result=True,
                                        finetuner=finetuner)
    theirs.compress()
    ours = getattr(iterative, name)(ours_model, copy.deepcopy(config_list), "level", n, log_dir=str(tmp_path / "pc"),
                                    keep_intermediate_result=True, finetuner=finetuner)
    ours.compress()
    nni_configs, our_configs = _nni_configs(tmp_path / "nni"), _our_configs(ours)
    assert len(our_configs) == len(nni_configs) == len(iteration_sparsities(kind, 0.8, n))  # task counts
    for task_id in nni_configs:
        assert our_configs[task_id] == pytest.approx(nni_configs[task_id])
        expected = iteration_sparsities(kind, 0.8, n)[task_id]
        assert all(v == pytest.approx(expected) for v in our_configs[task_id].values())
    t_id, _, t_masks, t_score, _ = theirs.get_best_result()
    o_id, o_model, o_masks, o_score, _ = ours.get_best_result()
    assert (o_id, o_score) == (t_id, t_score)
    assert set(o_masks) == set(t_masks)
    for module in t_masks:
        assert torch.equal(o_masks[module]["weight"].bool(), t_masks[module]["weight"].bool()), module


def _best_of(generator_cls: type, task_cls: type, result_cls: type, mode: str, scores: list, tmp: Path) -> tuple:
    class Fixed(generator_cls):  # type: ignore[misc, valid-type]
        def init_pending_tasks(self) -> list:
            tasks = []
            for i in range(len(scores)):
                path = Path(self._intermediate_result_dir, f"{i}_config_list.json")
                path.write_text("[]")
                tasks.append(task_cls(i, self._origin_model_path, self._origin_masks_path, path))
                self._tasks[i] = tasks[-1]
            if hasattr(tasks[0], "skeleton"):
                for t in tasks:
                    t.skeleton = self._origin_skeleton
            return tasks

        def generate_tasks(self, task_result: object) -> list:
            return []

    model = _model()
    gen = Fixed(model, {}, [], log_dir=str(tmp), keep_intermediate_result=True, best_result_mode=mode)
    while (task := gen.next()) is not None:
        gen.receive_task_result(result_cls(task.task_id, model, {}, {}, scores[task.task_id]))
    best = gen.get_best_result()
    return best[0], best[3]


@pytest.mark.parametrize("mode", ["latest", "maximize", "minimize"])
@pytest.mark.parametrize("scores", [[None, 0.3, 0.7, 0.5, None], [0.2, None, 0.1], [None, None]])
def test_best_result_selection_matches_nni(mode: str, scores: list, tmp_path: Path, nni_load: None) -> None:
    theirs = _best_of(NniTaskGenerator, NniTask, NniTaskResult, mode, scores, tmp_path / "nni")
    ours = _best_of(ours_tg.TaskGenerator, Task, TaskResult, mode, scores, tmp_path / "pc")
    assert ours == theirs


def _sparsity(model: torch.nn.Module, masks: dict, config_list: list[dict]) -> float:
    return compute_sparsity_mask2compact(model, masks, config_list)[0]["total_sparsity"]


def test_simulated_annealing_band(tmp_path: Path) -> None:
    config_list = [{"op_types": ["Conv2d"], "total_sparsity": 0.8}]
    pruner = iterative.SimulatedAnnealingPruner(_model(), config_list, lambda m: random.Random(0).random(),
                                                start_temperature=40, log_dir=str(tmp_path), seed=0)
    pruner.compress()
    _, model, masks, _, _ = pruner.get_best_result()
    assert 0.78 < _sparsity(model, masks, config_list) < 0.82


def test_auto_compress_band(tmp_path: Path) -> None:
    pytest.importorskip("purecompress.compat.pruning", reason="ADMM comes with the training pruners")
    config_list = [{"op_types": ["Conv2d"], "total_sparsity": 0.8}]
    model = _model()

    def trainer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, criterion: object) -> None:
        model.train()
        optimizer.zero_grad()
        criterion(model(_X), _Y).backward()
        optimizer.step()

    traced = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.01)
    admm_params = {"trainer": trainer, "traced_optimizer": traced, "criterion": F.nll_loss, "iterations": 2,
                   "training_epochs": 1}
    sa_params = {"evaluator": lambda m: random.random(), "start_temperature": 40, "cool_down_rate": 0.5}
    pruner = iterative.AutoCompressPruner(model, config_list, 2, admm_params, sa_params=sa_params,
                                          log_dir=str(tmp_path), evaluator=lambda m: random.random())
    pruner.compress()
    _, best, masks, _, _ = pruner.get_best_result()
    assert 0.78 < _sparsity(best, masks, config_list) < 0.82


def test_amc_meets_flops_budget(tmp_path: Path) -> None:
    config_list = [{"op_types": ["Conv2d"], "total_sparsity": 0.5, "max_sparsity_per_layer": 0.8}]
    dummy = torch.rand(2, 1, 28, 28)
    ddpg = {"hidden1": 32, "hidden2": 32, "warmup": 2, "bsize": 8}
    model = _model()
    pruner = iterative.AMCPruner(3, model, config_list, dummy, lambda m: random.random(), finetuner=finetuner,
                                 ddpg_params=ddpg, target="flops", log_dir=str(tmp_path))
    pruner.compress()
    _, best, masks, _, configs = pruner.get_best_result()
    from purecompress.pruning import Mask

    dense = count_flops_params(_model(), dummy)
    pruned = count_flops_params(best, dummy, {f"{k}.weight": Mask.from_dense(v["weight"]) for k, v in masks.items()})
    conv = ["conv1", "conv2"]
    assert sum(pruned.layers[n].flops for n in conv) <= 0.5 * sum(dense.layers[n].flops for n in conv)
    assert len(pruner.task_generator._tasks) == 3
    assert all(c["total_sparsity"] <= 0.8 + 1e-3 for c in configs)
