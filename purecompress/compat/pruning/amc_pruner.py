"""NNI's AMC pruner (2.10): a DDPG agent searches per-layer sparsities under a FLOPs/params budget.

:class:`AMCTaskGenerator` turns each episode of :func:`purecompress.search.amc_episodes` into one
pruning task on the origin model and rewards the agent with the task's score; :class:`AMCPruner`
is the :class:`~purecompress.compat.pruning.PruningScheduler` over it, with NNI's constructor.
Both are re-exported by :mod:`purecompress.compat.pruning` (NNI's ``amc_pruner`` path).
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from purecompress.compat.pruning.base import NniMasks
from purecompress.compat.pruning.basic_scheduler import PruningScheduler, parse_evaluator_args
from purecompress.compat.pruning.iterative_pruner import inner_pruner
from purecompress.compat.pruning.task_generator import Task, TaskGenerator, TaskResult
from purecompress.compat.utils import config_list_canonical
from purecompress.pruning import allocate_per_layer, l1_norm
from purecompress.search.amc import amc_episodes, amc_layers
from purecompress.search.counting import with_masks
from purecompress.search.ddpg import DDPGConfig
from purecompress.selectors import ConfigError

__all__ = [
    "AMCPruner",
    "AMCTaskGenerator",
]


__all__ = ["AMCPruner", "AMCTaskGenerator"]


class AMCTaskGenerator(TaskGenerator):
    """One task per AMC episode: the allocation of :func:`purecompress.search.amc_episodes`.

    NNI runs one task per layer on a shrunk model; here an episode's allocation is pruned on the
    origin model in one task, and FLOPs/params are counted on the masks (kept channels), so the
    search needs no shrinking. Each task needs a score (the reward is ``score - 1``).
    """

    def __init__(self, total_episode: int, dummy_input: Any, origin_model: nn.Module, origin_config_list: list[dict],
                 origin_masks: NniMasks | None = None, log_dir: str = ".", keep_intermediate_result: bool = False,
                 ddpg_params: dict | None = None, target: str = "flops", seed: int = 0) -> None:
        if target not in ("flops", "params"):
            raise ValueError(f"target must be 'flops' or 'params', got {target!r}")
        self.total_episode, self.dummy_input, self.target, self.seed = total_episode, dummy_input, target, seed
        params = dict(ddpg_params or {})
        params.setdefault("warmup", int(total_episode / 4))
        self.ddpg = DDPGConfig(**params)
        super().__init__(origin_model, origin_masks=origin_masks, origin_config_list=origin_config_list,
                         log_dir=log_dir, keep_intermediate_result=keep_intermediate_result,
                         best_result_mode="maximize")

    def _masks(self, allocation: dict[str, float]) -> dict:
        params = {f"{n}.weight": p for n, p in self._weights.items() if n in allocation}
        metrics = l1_norm(params, list(params))
        return allocate_per_layer(metrics, {f"{n}.weight": s for n, s in allocation.items()})

    def _measure(self, allocation: dict[str, float]) -> dict[str, float]:
        counts = with_masks(self.origin_counts, self._masks(allocation))
        return {la.name: float(getattr(counts.layers[la.name], self.target)) for la in self.layers}

    def init_pending_tasks(self) -> list[Task]:
        """Set up the layers and the agent; the first episode's task."""
        canonical = [c for c in config_list_canonical(self._origin_skeleton, self._config_list()) if c["op_names"]]
        if not canonical:
            raise ConfigError(None, None, "AMC needs a config that selects layers to prune (with 'total_sparsity')")
        self._entry = {name: c for c in canonical for name in c["op_names"]}
        total = canonical[0]["total_sparsity"]
        caps = canonical[0].get("max_sparsity_per_layer", 1.0)
        self.layers, self.origin_counts = amc_layers(self._origin_skeleton, self.dummy_input, list(self._entry),
                                                     target=self.target, max_sparsity=caps)  # type: ignore[arg-type]
        modules = dict(self._origin_skeleton.named_modules())
        self._weights = {la.name: modules[la.name].weight.detach() for la in self.layers}
        self.model_path = self._intermediate_result_dir / "origin_compact_model.pth"
        self.masks_path = self._intermediate_result_dir / "origin_compact_model_masks.pth"
        self._save_model(self._origin_skeleton, self.model_path)
        torch.save(torch.load(self._origin_masks_path, weights_only=True), self.masks_path)
        self.search = amc_episodes(self.layers, self._measure, total_sparsity=total, episodes=self.total_episode,
                                   ddpg=self.ddpg, seed=self.seed)
        return [self._task(next(self.search))]

    def _config_list(self) -> list[dict]:
        with self._origin_config_list_path.open() as f:
            return json.load(f)

    def _task(self, allocation: dict[str, float]) -> Task:
        config_list = [{**self._entry[n], "op_names": [n], "total_sparsity": s} for n, s in allocation.items()]
        for config in config_list:
            config.pop("max_sparsity_per_layer", None)
        task = self._new_task(self.model_path, self.masks_path, config_list)
        counts = with_masks(self.origin_counts, self._masks(allocation))
        task.state.update(current_flops=counts.flops, current_params=counts.params)
        return task

    def generate_tasks(self, task_result: TaskResult) -> list[Task]:
        """Reward the agent with the episode's score; the next episode's task."""
        score = self._tasks[task_result.task_id].score
        if score is None:
            raise ValueError("AMCTaskGenerator needs a score for every task: give an evaluator")
        try:
            return [self._task(self.search.send(float(score)))]
        except StopIteration:
            return []


class AMCPruner(PruningScheduler):
    """AMC: a DDPG agent chooses per-layer sparsities under a FLOPs or params budget.

    ``AMCPruner(total_episode, model, config_list, evaluator, pruning_algorithm='l1', log_dir='.',
    keep_intermediate_result=False, ddpg_params={}, pruning_params={}, target='flops')`` or the
    legacy form ``(total_episode, model, config_list, dummy_input, evaluator, pruning_algorithm='l1',
    log_dir='.', keep_intermediate_result=False, finetuner=None, ddpg_params={}, pruning_params={},
    target='flops')``. The first config's ``total_sparsity`` is the fraction of FLOPs (or params)
    of the selected layers to remove. ``seed=`` (keyword, purecompress) seeds the agent.
    """

    def __init__(self, total_episode: int, model: nn.Module, config_list: list[dict], *args: Any, seed: int = 0,
                 **kwargs: Any) -> None:
        common = {"pruning_algorithm": "l1", "log_dir": ".", "keep_intermediate_result": False}
        new = {"evaluator": ..., **common, "ddpg_params": {}, "pruning_params": {}, "target": "flops"}
        old = {"dummy_input": ..., "evaluator": ..., **common, "finetuner": None, "ddpg_params": {},
               "pruning_params": {}, "target": "flops"}
        self.using_evaluator, o = parse_evaluator_args(type(self).__name__, new, old, args, kwargs)
        if o["pruning_algorithm"] not in ("l1", "l2", "fpgm", "apoz", "mean_activation", "taylorfo"):
            raise ValueError("AMCPruner supports pruning_algorithm in ['l1', 'l2', 'fpgm', 'apoz', "
                             f"'mean_activation', 'taylorfo'], got {o['pruning_algorithm']!r}")
        dummy = o["evaluator"].get_dummy_input() if self.using_evaluator else o["dummy_input"]
        generator = AMCTaskGenerator(total_episode, dummy, model, config_list, log_dir=o["log_dir"],
                                     keep_intermediate_result=o["keep_intermediate_result"],
                                     ddpg_params=o["ddpg_params"], target=o["target"], seed=seed)
        self.total_tasks = total_episode
        self._setup(inner_pruner(o["pruning_algorithm"], o["pruning_params"], model), generator, o, model)
