"""NNI's ``TaskGenerator`` and its function-based and simulated-annealing subclasses (2.10).

This module holds the concrete generators: :class:`FunctionBasedTaskGenerator` (one task per
iteration on a sparsity schedule) with its linear, AGP and lottery-ticket schedules, and
:class:`SimulatedAnnealingTaskGenerator`. It re-exports :class:`TaskGenerator`, whose module
(:mod:`~purecompress.compat.task_generator_base`) also documents the log directory: NNI's
layout, but every ``model.pth`` a ``state_dict`` and every ``masks.pth`` a dict of tensors,
read with ``weights_only=True``, and a model rebuilt from a skeleton kept in memory.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Callable

import torch
from torch import nn

from purecompress.compat.task import NniMasks, PathLike, Task, TaskResult
from purecompress.compat.task_generator_base import TaskGenerator
from purecompress.compat.utils import compute_sparsity, config_list_canonical, get_model_weights_numel
from purecompress.schedule import agp_schedule, linear_schedule, lottery_schedule, relative_sparsity
from purecompress.search.annealing import Annealer, AnnealState

__all__ = [
    "AGPTaskGenerator",
    "FunctionBasedTaskGenerator",
    "LinearTaskGenerator",
    "LotteryTicketTaskGenerator",
    "SimulatedAnnealingTaskGenerator",
    "TaskGenerator",
]

_logger = logging.getLogger(__name__)


class FunctionBasedTaskGenerator(TaskGenerator):
    """One task per iteration, its sparsity a function of the iteration (``best_result_mode='latest'``).

    Each task prunes the latest compact model to the scheduled sparsity, converted to a sparsity
    relative to that compact model (:func:`purecompress.schedule.relative_sparsity`).

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
        self.target_sparsity = config_list_canonical(model, config_list or [])
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
    """``s_i = i/N * s`` (:func:`purecompress.schedule.linear_schedule`)."""

    schedule = staticmethod(linear_schedule)


class AGPTaskGenerator(FunctionBasedTaskGenerator):
    """``s_i = (1 - (1 - i/N)^3) * s`` (:func:`purecompress.schedule.agp_schedule`)."""

    schedule = staticmethod(agp_schedule)


class LotteryTicketTaskGenerator(FunctionBasedTaskGenerator):
    """``s_i = 1 - (1 - s)^(i/N)``, iterations ``1..N`` (:func:`purecompress.schedule.lottery_schedule`)."""

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
        config_list, masks = list(config_list or []), dict(masks or {})
        if any("sparsity" in c or "sparsity_per_layer" in c for c in config_list):
            _logger.debug("SimulatedAnnealing: 'sparsity' configs give each layer a fixed sparsity; "
                          "only 'total_sparsity' is distributed among layers")
        self.weights_numel, self.masked_rate = get_model_weights_numel(model, config_list, masks)
        self.target_sparsity_list = config_list_canonical(model, config_list)
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
