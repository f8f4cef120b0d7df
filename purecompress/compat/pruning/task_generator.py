"""NNI 2.10's task generators (``pruning.tools.task_generator``): the tasks of an iterative
pruning run (:class:`Task`, :class:`TaskResult`), the :class:`TaskGenerator` base with its log
directory, and the schedule-driven generators (linear, AGP, lottery ticket, simulated annealing).

The sparsity of each iteration comes from the core schedules (:func:`~purecompress.agp_schedule`,
...); models and masks are saved as safetensors and loaded with ``weights_only=True``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from purecompress.compat.pruning.base import NniMasks
from purecompress.compat.utils import compute_sparsity, config_list_canonical, get_model_weights_numel
from purecompress.pruning import agp_schedule, from_config_list, linear_schedule, lottery_schedule, relative_sparsity
from purecompress.search.annealing import Annealer, AnnealState

__all__ = [
    "AGPTaskGenerator",
    "FunctionBasedTaskGenerator",
    "LinearTaskGenerator",
    "LotteryTicketTaskGenerator",
    "SimulatedAnnealingTaskGenerator",
    "Task",
    "TaskGenerator",
    "TaskResult",
    "checked_config_list",
    "load_model",
    "save_model",
]


_logger = logging.getLogger(__name__)




PathLike = str | os.PathLike[str]



def checked_config_list(config_list: object) -> list[dict]:
    """``config_list`` as a list after the core's validation (None: ``[]``), before any file is written.

    Raises:
        ConfigError: not a list of valid pruning config dicts (naming the entry and the key).
    """
    if config_list is None:
        return []
    from_config_list(config_list)  # type: ignore[arg-type]
    return list(config_list)  # type: ignore[call-overload]



def save_model(model: nn.Module, path: PathLike) -> None:
    """Save ``model.state_dict()`` (never the pickled module)."""
    torch.save(model.state_dict(), path)



def load_model(skeleton: nn.Module, path: PathLike) -> nn.Module:
    """A deep copy of ``skeleton`` with the ``state_dict`` at ``path`` (``weights_only=True``)."""
    model = copy.deepcopy(skeleton)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model



def same_structure(a: nn.Module, b: nn.Module) -> bool:
    """Whether ``a`` and ``b`` have the same state-dict keys and shapes and the same module types."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa) and \
        [type(m) for m in a.modules()] == [type(m) for m in b.modules()]



class Task:
    """One pruning step: the model and masks to start from and the config list to prune with.

    Args:
        task_id: unique id; model_path, masks_path, config_list_path: its inputs on disk.
        speedup, finetune, evaluate: False turns the scheduler's step off for this task.
    """

    _reference_counter: dict[str, int] = {}

    def __init__(self, task_id: int | str, model_path: PathLike, masks_path: PathLike, config_list_path: PathLike,
                 speedup: bool = True, finetune: bool = True, evaluate: bool = True) -> None:
        self.task_id = task_id
        self.model_path = model_path
        self.masks_path = masks_path
        self.config_list_path = config_list_path
        self.speedup = speedup
        self.finetune = finetune
        self.evaluate = evaluate
        self.status = "Pending"
        self.score: float | None = None
        self.state: dict[str, Any] = {}
        self.skeleton: nn.Module | None = None
        for ref in self.referenced_paths():
            self._reference_counter[str(ref)] = self._reference_counter.get(str(ref), 0) + 1
        self._cleaned = False

    def to_dict(self) -> dict[str, Any]:
        """The JSON record written to ``.tasks``."""
        return {"task_id": self.task_id, "model_path": str(self.model_path), "masks_path": str(self.masks_path),
                "config_list_path": str(self.config_list_path), "speedup": self.speedup,
                "finetune": self.finetune, "evaluate": self.evaluate, "status": self.status,
                "score": self.score, "state": self.state}

    def load_data(self) -> tuple[nn.Module, NniMasks, list[dict]]:
        """``(model, masks before pruning, config list)``, all read with ``weights_only=True``."""
        if self.skeleton is None:
            raise RuntimeError(f"task {self.task_id} has no model skeleton: models are stored as state_dicts "
                               "and rebuilt from the generator's in-memory model, not unpickled")
        model = load_model(self.skeleton, self.model_path)
        masks = torch.load(self.masks_path, weights_only=True)
        with Path(self.config_list_path).open() as f:
            config_list = json.load(f)
        return model, masks, config_list

    def referenced_paths(self) -> list[PathLike]:
        """The files this task reads (reference counted, removed after the last user)."""
        return [self.model_path, self.masks_path, self.config_list_path]

    def clean_up(self) -> None:
        """Release this task's files; delete the ones no other task needs."""
        if self._cleaned:
            _logger.debug("task %s already cleaned up", self.task_id)
            return
        for ref in map(str, self.referenced_paths()):
            self._reference_counter[ref] -= 1
            if self._reference_counter[ref] <= 0 and os.path.exists(ref):
                os.remove(ref)
        self._cleaned = True



class TaskResult:
    """What a pruning step produced.

    Args:
        task_id: the task's id; compact_model: the pruned (maybe shrunk) model;
        compact_model_masks: masks on the compact model (``{}`` after shrinking);
        pruner_generated_masks: masks on the model the task started from; score: or None.
    """

    def __init__(self, task_id: int | str, compact_model: nn.Module, compact_model_masks: NniMasks,
                 pruner_generated_masks: NniMasks, score: float | None) -> None:
        self.task_id = task_id
        self.compact_model = compact_model
        self.compact_model_masks = compact_model_masks
        self.pruner_generated_masks = pruner_generated_masks
        self.score = score



class TaskGenerator:
    """Generates the tasks of an iterative pruning run and keeps the best result.

    Args:
        origin_model: the unwrapped model to prune (kept in memory as the skeleton of every file).
        origin_masks: masks already on it ``{module: {'weight': t, 'bias': t}}``.
        origin_config_list: the user's config list.
        log_dir: where ``<timestamp>/`` goes.
        keep_intermediate_result: keep every task's model, masks and config list.
        best_result_mode: ``'latest'``, ``'maximize'`` or ``'minimize'`` the score; while no
            scored result exists, any result is best.
    """

    def __init__(self, origin_model: nn.Module | None, origin_masks: NniMasks | None = None,
                 origin_config_list: list[dict] | None = None, log_dir: PathLike = ".",
                 keep_intermediate_result: bool = False,
                 best_result_mode: Literal["latest", "maximize", "minimize"] = "maximize") -> None:
        if best_result_mode not in ("latest", "maximize", "minimize"):
            raise ValueError(f"best_result_mode must be 'latest', 'maximize' or 'minimize', got {best_result_mode!r}")
        self._log_dir = log_dir
        self._keep_intermediate_result = keep_intermediate_result
        self._best_result_mode = best_result_mode
        if origin_model is not None:
            self.reset(origin_model, checked_config_list(origin_config_list), dict(origin_masks or {}))

    # -- life cycle ---------------------------------------------------------------------------
    def reset(self, model: nn.Module, config_list: list[dict] | None = None, masks: NniMasks | None = None) -> None:
        """Start a new run on ``model`` in a new ``<log_dir>/<timestamp>/``."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"Only a torch.nn.Module can be pruned, got {type(model).__name__}")
        config_list, masks = checked_config_list(config_list), dict(masks or {})
        self._log_dir_root = Path(self._log_dir, datetime.now().strftime("%Y-%m-%d-%H-%M-%S-%f")).absolute()
        self._intermediate_result_dir = self._log_dir_root / "intermediate_result"
        self._intermediate_result_dir.mkdir(parents=True, exist_ok=True)
        self._origin_skeleton = copy.deepcopy(model)
        self._skeletons: dict[str, nn.Module] = {}
        self._origin_model_path = self._log_dir_root / "origin" / "model.pth"
        self._origin_masks_path = self._log_dir_root / "origin" / "masks.pth"
        self._origin_config_list_path = self._log_dir_root / "origin" / "config_list.json"
        self._save_data("origin", model, masks, config_list)
        self._task_id_candidate = 0
        self._tasks: dict[int | str, Task] = {}
        self._best_score: float | None = None
        self._best_task_id: int | str | None = None
        self._best_skeleton: nn.Module = self._origin_skeleton
        self._pending_tasks: list[Task] = self.init_pending_tasks()
        self._dump_tasks_info()

    def init_pending_tasks(self) -> list[Task]:
        """The first tasks (subclasses)."""
        raise NotImplementedError

    def generate_tasks(self, task_result: TaskResult) -> list[Task]:
        """The tasks that follow ``task_result`` (subclasses)."""
        raise NotImplementedError

    def next(self) -> Task | None:
        """Pop the next pending task (None when the run is over)."""
        if not self._pending_tasks:
            return None
        task = self._pending_tasks.pop(0)
        task.status = "Running"
        self._dump_tasks_info()
        return task

    def receive_task_result(self, task_result: TaskResult) -> None:
        """Record a result: best result, task status, the next tasks, file clean-up."""
        task_id = task_result.task_id
        if task_id not in self._tasks:
            raise KeyError(f"Task {task_id} does not exist")
        self.update_best_result(task_result)
        self._tasks[task_id].status = "Finished"
        self._pending_tasks.extend(self.generate_tasks(task_result))
        self._dump_tasks_info()
        if not self._keep_intermediate_result:
            self._tasks[task_id].clean_up()

    def update_best_result(self, task_result: TaskResult) -> None:
        """Save ``task_result`` under ``best_result/`` if it is the best so far."""
        task = self._tasks[task_result.task_id]
        task.score = task_result.score
        mode, score, best = self._best_result_mode, task.score, self._best_score
        better = mode == "latest" or best is None or (
            score is not None and (score > best if mode == "maximize" else score < best))
        if not better:
            return
        if mode != "latest":
            self._best_score = score
        self._best_task_id = task_result.task_id
        with Path(task.config_list_path).open() as f:
            config_list = json.load(f)
        self._save_data("best_result", task_result.compact_model, task_result.compact_model_masks, config_list)
        self._best_skeleton = self._skeleton_for(task_result.compact_model)

    def get_best_result(self) -> tuple[int | str, nn.Module, NniMasks, float | None, list[dict]] | None:
        """``(task_id, compact model, its masks, score, config list)`` of the best result, or None."""
        if self._best_task_id is None:
            return None
        root = self._log_dir_root / "best_result"
        model = load_model(self._best_skeleton, root / "model.pth")
        masks = torch.load(root / "masks.pth", weights_only=True)
        with (root / "config_list.json").open() as f:
            config_list = json.load(f)
        return self._best_task_id, model, masks, self._best_score, config_list

    # -- files --------------------------------------------------------------------------------
    def _skeleton_for(self, model: nn.Module) -> nn.Module:
        if same_structure(model, self._origin_skeleton):
            return self._origin_skeleton
        return copy.deepcopy(model)

    def _save_model(self, model: nn.Module, path: Path) -> None:
        save_model(model, path)
        self._skeletons[str(path)] = self._skeleton_for(model)

    def _load_model(self, path: PathLike) -> nn.Module:
        return load_model(self._skeletons.get(str(path), self._origin_skeleton), path)

    def _new_task(self, model_path: Path, masks_path: Path, config_list: list[dict], **flags: bool) -> Task:
        """Write the config list, create and register task ``_task_id_candidate``."""
        task_id = self._task_id_candidate
        config_list_path = self._intermediate_result_dir / f"{task_id}_config_list.json"
        with config_list_path.open("w") as f:
            json.dump(config_list, f, indent=4)
        task = Task(task_id, model_path, masks_path, config_list_path, **flags)
        task.skeleton = self._skeletons.get(str(model_path), self._origin_skeleton)
        self._tasks[task_id] = task
        self._task_id_candidate += 1
        return task

    def _save_data(self, folder: str, model: nn.Module, masks: Mapping[str, Any], config_list: list[dict]) -> None:
        root = self._log_dir_root / folder
        root.mkdir(parents=True, exist_ok=True)
        save_model(model, root / "model.pth")
        torch.save(dict(masks), root / "masks.pth")
        with (root / "config_list.json").open("w") as f:
            json.dump(config_list, f, indent=4)

    def _dump_tasks_info(self) -> None:
        tasks = {str(task_id): task.to_dict() for task_id, task in self._tasks.items()}
        with (self._log_dir_root / ".tasks").open("w") as f:
            json.dump(tasks, f, indent=4)


_logger = logging.getLogger(__name__)



class FunctionBasedTaskGenerator(TaskGenerator):
    """One task per iteration, its sparsity a function of the iteration (``best_result_mode='latest'``).

    Each task prunes the latest compact model to the scheduled sparsity, converted to a sparsity
    relative to that compact model (:func:`purecompress.relative_sparsity`).

    Args:
        total_iteration: N; iterations run ``0..N`` (``1..N`` with ``skip_first_iteration``).
        origin_model, origin_config_list, origin_masks, log_dir, keep_intermediate_result: as
            :class:`TaskGenerator`.
    """

    schedule: Callable[..., float] = staticmethod(linear_schedule)
    first_iteration = 0

    def __init__(self, total_iteration: int, origin_model: nn.Module, origin_config_list: list[dict],
                 origin_masks: NniMasks | None = None, log_dir: PathLike = ".", keep_intermediate_result: bool = False,
                 skip_first_iteration: bool = False) -> None:
        if total_iteration < 1:
            raise ValueError(f"total_iteration must be >= 1, got {total_iteration}")
        self.total_iteration = total_iteration
        self.skip_first_iteration = skip_first_iteration
        super().__init__(origin_model, origin_masks=origin_masks, origin_config_list=origin_config_list,
                         log_dir=log_dir, keep_intermediate_result=keep_intermediate_result, best_result_mode="latest")

    def reset(self, model: nn.Module, config_list: list[dict] | None = None, masks: NniMasks | None = None) -> None:
        """Restart at the first iteration."""
        self.current_iteration = max(self.first_iteration, 1 if self.skip_first_iteration else 0)
        self.target_sparsity = config_list_canonical(model, checked_config_list(config_list))
        super().reset(model, config_list, masks)

    def init_pending_tasks(self) -> list[Task]:
        """The first task, from the origin model and masks."""
        model = self._load_model(self._origin_model_path)
        masks = torch.load(self._origin_masks_path, weights_only=True)
        return self.generate_tasks(TaskResult("origin", model, masks, masks, None))

    def generate_tasks(self, task_result: TaskResult) -> list[Task]:
        """Save the result as the next task's input; a task for the next iteration, if any."""
        model_path = self._intermediate_result_dir / f"{task_result.task_id}_compact_model.pth"
        masks_path = self._intermediate_result_dir / f"{task_result.task_id}_compact_model_masks.pth"
        self._save_model(task_result.compact_model, model_path)
        torch.save(dict(task_result.compact_model_masks), masks_path)
        current, compact2origin, _ = compute_sparsity(self._origin_skeleton, task_result.compact_model,
                                                      task_result.compact_model_masks, self.target_sparsity)
        if task_result.task_id != "origin":
            self._tasks[task_result.task_id].state["current2origin_sparsity"] = current
        if self.current_iteration > self.total_iteration:
            return []
        config_list = self.generate_config_list(self.target_sparsity, self.current_iteration, compact2origin)
        config_list = self.allocate_sparsity(config_list, task_result.compact_model, task_result.compact_model_masks)
        task = self._new_task(model_path, masks_path, config_list, speedup=True, finetune=True, evaluate=False)
        self.current_iteration += 1
        return [task]

    def generate_config_list(self, target_sparsity: list[dict], iteration: int,
                             compact2origin_sparsity: list[dict]) -> list[dict]:
        """Each target config with ``total_sparsity`` relative to the compact model."""
        out = []
        for target, now in zip(target_sparsity, compact2origin_sparsity):
            absolute = self.schedule(iteration, target["total_sparsity"], end=self.total_iteration)
            out.append({**copy.deepcopy(target),
                        "total_sparsity": relative_sparsity(absolute, now["total_sparsity"])})
        return out

    def allocate_sparsity(self, new_config_list: list[dict], model: nn.Module, masks: NniMasks) -> list[dict]:
        """Hook to redistribute the sparsity among layers (AutoCompress); identity here."""
        del model, masks
        return new_config_list



class LinearTaskGenerator(FunctionBasedTaskGenerator):
    """``s_i = i/N * s`` (:func:`purecompress.linear_schedule`)."""

    schedule = staticmethod(linear_schedule)



class AGPTaskGenerator(FunctionBasedTaskGenerator):
    """``s_i = (1 - (1 - i/N)^3) * s`` (:func:`purecompress.agp_schedule`)."""

    schedule = staticmethod(agp_schedule)



class LotteryTicketTaskGenerator(FunctionBasedTaskGenerator):
    """``s_i = 1 - (1 - s)^(i/N)``, iterations ``1..N`` (:func:`purecompress.lottery_schedule`)."""

    schedule = staticmethod(lottery_schedule)
    first_iteration = 1



class SimulatedAnnealingTaskGenerator(TaskGenerator):
    """Simulated annealing over per-layer sparsities (:class:`purecompress.search.Annealer`).

    Each ``total_sparsity`` config is one group whose layers share its budget, weighted by size;
    every task prunes the origin model (``best_result_mode='maximize'``; each task needs a score).

    Args:
        origin_model, origin_config_list, origin_masks, log_dir, keep_intermediate_result: as
            :class:`TaskGenerator`.
        start_temperature, stop_temperature, cool_down_rate, perturbation_magnitude: NNI's.
        seed: for the random draws (None: fresh randomness, as NNI).
    """

    def __init__(self, origin_model: nn.Module | None, origin_config_list: list[dict] | None,
                 origin_masks: NniMasks | None = None, start_temperature: float = 100, stop_temperature: float = 20,
                 cool_down_rate: float = 0.9, perturbation_magnitude: float = 0.35, log_dir: PathLike = ".",
                 keep_intermediate_result: bool = False, seed: int | None = None) -> None:
        self.options = dict(start_temperature=start_temperature, stop_temperature=stop_temperature,
                            cool_down_rate=cool_down_rate, perturbation_magnitude=perturbation_magnitude)
        self._rng = random.Random(seed)
        super().__init__(origin_model, origin_masks=origin_masks, origin_config_list=origin_config_list,
                         log_dir=log_dir, keep_intermediate_result=keep_intermediate_result,
                         best_result_mode="maximize")

    def reset(self, model: nn.Module, config_list: list[dict] | None = None, masks: NniMasks | None = None) -> None:
        """Restart the annealing from a random candidate."""
        config_list, masks = checked_config_list(config_list), dict(masks or {})
        if any("sparsity" in c or "sparsity_per_layer" in c for c in config_list):
            _logger.debug("SimulatedAnnealing: 'sparsity' configs give each layer a fixed sparsity; "
                          "only 'total_sparsity' is distributed among layers")
        # a group whose layers all went to later configs has no budget to distribute
        self.target_sparsity_list = [c for c in config_list_canonical(model, config_list) if c["op_names"]]
        # counted over the layers the canonical form names (op_partial_names, 'default' expanded)
        self.weights_numel, self.masked_rate = get_model_weights_numel(model, self.target_sparsity_list, masks)
        for config in self.target_sparsity_list:  # the budget of the weights still unpruned
            config["total_sparsity"] = self._remaining_budget(config)
        self.annealer = Annealer([{n: self.weights_numel[n] for n in c["op_names"]} for c in self.target_sparsity_list],
                                 [c["total_sparsity"] for c in self.target_sparsity_list], **self.options)
        self.state: AnnealState | None = None
        super().reset(model, config_list, masks)

    def _remaining_budget(self, config: dict) -> float:
        if not self.masked_rate:
            return config["total_sparsity"]
        names = config["op_names"]
        remaining = sum(self.weights_numel[n] for n in names)
        pruned = sum(self.weights_numel[n] * r / (1 - r) for n in names if (r := self.masked_rate.get(n, 0)))
        rate = pruned / (pruned + remaining)
        return max(0.0, (config["total_sparsity"] - rate) / (1 - rate))

    def _config_list(self) -> list[dict]:
        assert self.state is not None
        out = []
        for group, (config, sparsities) in enumerate(zip(self.target_sparsity_list, self.state.candidate)):
            for name, s in zip(self.annealer.names(group), sparsities):
                rate = self.masked_rate.get(name, 0.0)  # back to a sparsity of the origin layer
                out.append({**copy.deepcopy(config), "op_names": [name], "total_sparsity": rate + s * (1 - rate)})
        return out

    def init_pending_tasks(self) -> list[Task]:
        """The first (random) candidate, pruning the origin model."""
        self.temp_model_path = self._intermediate_result_dir / "origin_compact_model.pth"
        self.temp_masks_path = self._intermediate_result_dir / "origin_compact_model_masks.pth"
        self._save_model(self._origin_skeleton, self.temp_model_path)
        torch.save(torch.load(self._origin_masks_path, weights_only=True), self.temp_masks_path)
        self.state = self.annealer.init(self._rng)
        return [self._new_task(self.temp_model_path, self.temp_masks_path, self._config_list())]

    def generate_tasks(self, task_result: TaskResult) -> list[Task]:
        """Accept or reject the scored candidate, cool, propose the next one."""
        score = self._tasks[task_result.task_id].score
        if score is None:
            raise ValueError("SimulatedAnnealingTaskGenerator needs a score for every task: give an evaluator")
        assert self.state is not None
        self.state = self.annealer.tell(self.state, float(score), self._rng)
        if self.state.done:
            return []
        return [self._new_task(self.temp_model_path, self.temp_masks_path, self._config_list())]
