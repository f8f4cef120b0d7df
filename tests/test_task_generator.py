"""Task generators and schedulers: log_dir layout, safe files, best results, errors, progress."""

from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from purecompress.compat import pruning as iterative
from purecompress.compat.pruning import (
    AGPTaskGenerator,
    LinearTaskGenerator,
    LotteryTicketTaskGenerator,
    PruningScheduler,
    SimulatedAnnealingTaskGenerator,
    Task,
    TaskGenerator,
    TaskResult,
)
from purecompress.compat.pruning.basic_scheduler import parse_evaluator_args

CONFIG = [{"op_types": ["Conv2d", "Linear"], "sparsity": 0.8}]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def _root(log_dir: Path) -> Path:
    return next(p for p in log_dir.iterdir() if p.is_dir())


def test_layout_and_files_load_weights_only(tmp_path: Path) -> None:
    pruner = iterative.AGPPruner(_model(), CONFIG, "level", 3, log_dir=str(tmp_path), keep_intermediate_result=True)
    pruner.compress()
    root = _root(tmp_path)
    assert {p.name for p in root.iterdir()} == {"origin", "intermediate_result", "best_result", ".tasks"}
    for folder in ("origin", "best_result"):
        assert isinstance(torch.load(root / folder / "model.pth", weights_only=True), dict)
        torch.load(root / folder / "masks.pth", weights_only=True)
        json.loads((root / folder / "config_list.json").read_text())
    for path in (root / "intermediate_result").glob("*.pth"):
        torch.load(path, weights_only=True)
    tasks = json.loads((root / ".tasks").read_text())
    assert len(tasks) == 4 and all(t["status"] == "Finished" for t in tasks.values())


def test_intermediate_files_removed_unless_kept(tmp_path: Path) -> None:
    pruner = iterative.LinearPruner(_model(), CONFIG, "level", 2, log_dir=str(tmp_path))
    pruner.compress()
    left = sorted(p.name for p in (_root(tmp_path) / "intermediate_result").iterdir())
    assert left == ["2_compact_model.pth", "2_compact_model_masks.pth"]


class _Boom:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch pwned_marker",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_never_executed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    pruner = iterative.LinearPruner(_model(), CONFIG, "level", 1, log_dir=str(tmp_path))
    pruner.compress()
    best = _root(tmp_path) / "best_result"
    for name in ("model.pth", "masks.pth"):
        with (best / name).open("wb") as f:
            pickle.dump(_Boom(), f)
    with pytest.raises(pickle.UnpicklingError):
        pruner.get_best_result()
    assert not (tmp_path / "pwned_marker").exists()


def test_task_counts_and_modes(tmp_path: Path) -> None:
    for cls, n, count in [(LinearTaskGenerator, 3, 4), (AGPTaskGenerator, 3, 4), (LotteryTicketTaskGenerator, 3, 3)]:
        gen = cls(n, _model(), CONFIG, log_dir=str(tmp_path))
        seen = 0
        while (task := gen.next()) is not None:
            model, masks, _ = task.load_data()
            gen.receive_task_result(TaskResult(task.task_id, model, masks, masks, None))
            seen += 1
        assert seen == count
        assert gen._best_result_mode == "latest"
    skip = LinearTaskGenerator(3, _model(), CONFIG, log_dir=str(tmp_path), skip_first_iteration=True)
    assert skip.current_iteration == 2  # iteration 1 already generated
    with pytest.raises(ValueError, match="best_result_mode"):
        TaskGenerator(None, best_result_mode="best")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="total_iteration"):
        LinearTaskGenerator(0, _model(), CONFIG, log_dir=str(tmp_path))


def test_simulated_annealing_generator_needs_scores(tmp_path: Path) -> None:
    gen = SimulatedAnnealingTaskGenerator(_model(), [{"op_types": ["Conv2d", "Linear"], "total_sparsity": 0.5}],
                                          log_dir=str(tmp_path), seed=0)
    task = gen.next()
    assert task is not None
    model, masks, config_list = task.load_data()
    assert [c["op_names"] for c in config_list] == [["0"], ["3"]]  # ascending size
    with pytest.raises(ValueError, match="score"):
        gen.receive_task_result(TaskResult(task.task_id, model, {}, {}, None))


def test_simulated_annealing_pruner_runs_with_origin_masks(tmp_path: Path) -> None:
    model = _model()
    masks = {"3": {"weight": (torch.rand(10, 144) > 0.5).float()}}
    gen = SimulatedAnnealingTaskGenerator(model, [{"op_types": ["Linear"], "total_sparsity": 0.8}],
                                          origin_masks=masks, log_dir=str(tmp_path), seed=1)
    _, _, config_list = gen.next().load_data()  # type: ignore[union-attr]
    assert config_list[0]["total_sparsity"] == pytest.approx(0.8, abs=0.02)


def test_unknown_inner_pruner() -> None:
    with pytest.raises(ValueError, match="unknown pruning_algorithm"):
        iterative.inner_pruner("magnitude")


def test_speedup_error_names_the_feature(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "purecompress.compat.speedup", None)
    with pytest.raises(NotImplementedError, match="ModelSpeedup"):
        iterative.AGPPruner(_model(), CONFIG, "level", 2, log_dir=str(tmp_path), speedup=True, dummy_input=None)


def test_argument_forms() -> None:
    using, args = parse_evaluator_args("X", {"evaluator": ..., "speedup": False},
                                       {"finetuner": None, "speedup": False, "evaluator": None}, (len,), {})
    assert not using and args == {"finetuner": len, "speedup": False, "evaluator": None}
    with pytest.raises(TypeError, match="unexpected"):
        parse_evaluator_args("X", {"evaluator": None}, {"finetuner": None}, (), {"bogus": 1})
    with pytest.raises(TypeError, match="multiple"):
        parse_evaluator_args("X", {"evaluator": None}, {"finetuner": None}, (len,), {"finetuner": len})


def test_scheduler_with_plain_callables_and_best_maximize(tmp_path: Path) -> None:
    scores = iter([0.2, 0.9, 0.1, 0.5, 0.3, 0.4] * 20)
    calls = []
    pruner = iterative.SimulatedAnnealingPruner(_model(), [{"op_types": ["Linear"], "total_sparsity": 0.5}],
                                                lambda m: next(scores), start_temperature=30,
                                                finetuner=lambda m: calls.append(m), log_dir=str(tmp_path), seed=0)
    pruner.progress = False
    pruner.compress()
    task_id, model, masks, score, _ = pruner.get_best_result()
    assert score == 0.9 and task_id == 1 and calls
    assert float(1 - masks["3"]["weight"].mean()) == pytest.approx(0.5, abs=0.01)
    assert isinstance(pruner, PruningScheduler)


def test_lottery_rewinds_weights(tmp_path: Path) -> None:
    model = _model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    def finetuner(m: nn.Module) -> None:
        with torch.no_grad():
            for p in m.parameters():
                p.add_(1.0)

    pruner = iterative.LotteryTicketPruner(model, CONFIG, "level", 2, log_dir=str(tmp_path), finetuner=finetuner)
    pruner.compress()
    _, best, masks, _, _ = pruner.get_best_result()
    weight = best.state_dict()["3.weight"]
    kept = masks["3"]["weight"].bool()
    assert torch.equal(weight[kept], initial["3.weight"][kept])
    assert (weight[~kept] == 0).all()


def test_amc_generator_counts_tasks(tmp_path: Path) -> None:
    pruner = iterative.AMCPruner(3, _model(), [{"op_types": ["Conv2d", "Linear"], "total_sparsity": 0.3}],
                                 torch.randn(2, 1, 8, 8), lambda m: random.random(), log_dir=str(tmp_path),
                                 ddpg_params={"hidden1": 8, "hidden2": 8, "bsize": 4})
    pruner.compress()
    assert len(pruner.task_generator._tasks) == 3
    with pytest.raises(ValueError, match="pruning_algorithm"):
        iterative.AMCPruner(3, _model(), CONFIG, torch.randn(1, 1, 8, 8), len, pruning_algorithm="level")


def test_task_without_skeleton_explains(tmp_path: Path) -> None:
    path = tmp_path / "m.pth"
    torch.save(_model().state_dict(), path)
    with pytest.raises(RuntimeError, match="skeleton"):
        Task(0, path, path, path).load_data()


def test_speedup_rebuilds_compact_models_from_state_dicts(tmp_path: Path) -> None:
    pytest.importorskip("purecompress.compat.speedup", reason="shrinking comes with the speedup feature")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 10))
    x = torch.randn(2, 1, 8, 8)
    pruner = iterative.AGPPruner(model, [{"op_names": ["0"], "sparsity": 0.5}], "l1", 2, log_dir=str(tmp_path),
                                 speedup=True, dummy_input=x)
    pruner.compress()
    _, compact, masks, _, configs = pruner.get_best_result()
    assert masks == {} and compact[0].out_channels == 4 and compact(x).shape == (2, 10)
    root = _root(tmp_path)
    assert isinstance(torch.load(root / "best_result" / "model.pth", weights_only=True), dict)


def test_progress_bar_on_request_and_off_by_default(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pruner = iterative.LinearPruner(_model(), CONFIG, "level", 2, log_dir=str(tmp_path))
    pruner.compress()  # stderr is not a terminal here: no bar
    assert "LinearPruner" not in capsys.readouterr().err
    pruner = iterative.LinearPruner(_model(), CONFIG, "level", 2, log_dir=str(tmp_path))
    pruner.progress = True
    pruner.compress()
    err = capsys.readouterr().err
    assert "LinearPruner" in err and "3/3" in err and "sparsity" in err


def test_scheduler_with_a_user_pruner_and_generator(tmp_path: Path) -> None:
    from purecompress.compat import L1NormPruner

    model = _model()
    generator = AGPTaskGenerator(2, model, [{"op_types": ["Conv2d"], "sparsity": 0.5}], log_dir=str(tmp_path),
                                 keep_intermediate_result=True)
    scheduler = PruningScheduler(L1NormPruner(None, None), generator, finetuner=None, speedup=False,
                                 dummy_input=None, evaluator=lambda m: 0.5, reset_weight=False)
    scheduler.compress()
    task_id, _, masks, score, configs = scheduler.get_best_result()
    assert task_id == 2 and score is None and configs[0]["total_sparsity"] == 0.5
    assert masks["0"]["weight"].sum(dim=(1, 2, 3)).count_nonzero() == 2
