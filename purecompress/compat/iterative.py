"""NNI's iterative pruners (2.10): Linear, AGP, LotteryTicket, SimulatedAnnealing, AutoCompress, AMC.

Same constructors as ``nni.compression.pytorch.pruning`` (both the ``evaluator`` form and the
legacy ``finetuner``/``dummy_input``/``evaluator`` form); each is a
:class:`~purecompress.compat.scheduler.PruningScheduler` over a task generator whose numbers come
from :mod:`purecompress.schedule` and :mod:`purecompress.search`. The inner pruner is chosen by
name: 'level', 'l1', 'l2', 'fpgm', 'slim', 'apoz', 'mean_activation', 'taylorfo', 'admm'.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from purecompress.allocate import allocate_per_layer
from purecompress.compat.scheduler import NniMasks, PruningScheduler, Task, TaskResult, parse_evaluator_args
from purecompress.compat.task_generator import (
    AGPTaskGenerator,
    LinearTaskGenerator,
    LotteryTicketTaskGenerator,
    SimulatedAnnealingTaskGenerator,
    TaskGenerator,
)
from purecompress.compat.utils import config_list_canonical
from purecompress.metrics import l1_norm
from purecompress.search.amc import amc_episodes, amc_layers
from purecompress.search.counting import with_masks
from purecompress.search.ddpg import DDPGConfig

__all__ = [
    "AGPPruner",
    "AMCPruner",
    "AMCTaskGenerator",
    "AutoCompressPruner",
    "AutoCompressTaskGenerator",
    "LinearPruner",
    "LotteryTicketPruner",
    "PRUNER_DICT",
    "SimulatedAnnealingPruner",
]

_logger = logging.getLogger(__name__)

_BASIC = ("purecompress.compat.pruning", "the compat pruning base (Level/L1/L2/FPGM pruners)")
_TRAINING = ("purecompress.compat.training_pruners", "the training-aware pruners (Slim/APoZ/Mean/TaylorFO/ADMM)")

#: inner pruner name -> (module, class, the feature that provides it)
PRUNER_DICT: dict[str, tuple[str, str, str]] = {
    "level": (_BASIC[0], "LevelPruner", _BASIC[1]),
    "l1": (_BASIC[0], "L1NormPruner", _BASIC[1]),
    "l2": (_BASIC[0], "L2NormPruner", _BASIC[1]),
    "fpgm": (_BASIC[0], "FPGMPruner", _BASIC[1]),
    "slim": (_TRAINING[0], "SlimPruner", _TRAINING[1]),
    "apoz": (_TRAINING[0], "ActivationAPoZRankPruner", _TRAINING[1]),
    "mean_activation": (_TRAINING[0], "ActivationMeanRankPruner", _TRAINING[1]),
    "taylorfo": (_TRAINING[0], "TaylorFOWeightPruner", _TRAINING[1]),
    "admm": (_TRAINING[0], "ADMMPruner", _TRAINING[1]),
}


def inner_pruner(name: str, pruning_params: dict[str, Any] | None = None, model: nn.Module | None = None) -> Any:
    """The unbound pruner ``name`` (``Pruner(None, None, **pruning_params)``), or a clear error.

    A training pruner's evaluator learns the optimizer recipe from ``model`` (NNI traces it there).
    """
    if name not in PRUNER_DICT:
        raise ValueError(f"unknown pruning_algorithm {name!r}; supported: {list(PRUNER_DICT)}")
    module_name, class_name, feature = PRUNER_DICT[name]
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise NotImplementedError(f"pruning_algorithm={name!r} needs {module_name}.{class_name}, provided by "
                                  f"{feature}, which this purecompress does not have yet") from err
    pruner = cls(None, None, **dict(pruning_params or {}))
    evaluator = getattr(pruner, "evaluator", None)
    if model is not None and evaluator is not None and not evaluator._initialization_complete:
        evaluator._init_optimizer_helpers(model)
    return pruner


_NEW = {"evaluator": None, "speedup": False, "pruning_params": {}}
_OLD = {"finetuner": None, "speedup": False, "dummy_input": None, "evaluator": None, "pruning_params": {}}


class _IterativePruner(PruningScheduler):
    """Shared constructor of the function-based pruners (abstract: leaves set the generator)."""

    generator: type[TaskGenerator] = LinearTaskGenerator
    reset_weight_default: bool | None = None

    def __init__(self, model: nn.Module, config_list: list[dict], pruning_algorithm: str, total_iteration: int,
                 log_dir: str = ".", keep_intermediate_result: bool = False, *args: Any, **kwargs: Any) -> None:
        new, old = dict(_NEW), dict(_OLD)
        if self.reset_weight_default is not None:  # NNI puts reset_weight just before pruning_params
            new = {"evaluator": None, "speedup": False, "reset_weight": self.reset_weight_default, "pruning_params": {}}
            old = {"finetuner": None, "speedup": False, "dummy_input": None, "evaluator": None,
                   "reset_weight": self.reset_weight_default, "pruning_params": {}}
        self.using_evaluator, options = parse_evaluator_args(type(self).__name__, new, old, args, kwargs)
        generator = self.generator(total_iteration=total_iteration, origin_model=model,
                                   origin_config_list=config_list, log_dir=log_dir,
                                   keep_intermediate_result=keep_intermediate_result)  # type: ignore[call-arg]
        self.total_tasks = total_iteration + (0 if self.generator is LotteryTicketTaskGenerator else 1)
        self._setup(inner_pruner(pruning_algorithm, options["pruning_params"], model), generator, options, model)

    def _wrap_model(self) -> None:
        _logger.debug("%s does not wrap the model; nothing to do", type(self).__name__)

    def _unwrap_model(self) -> None:
        _logger.debug("%s does not wrap the model; nothing to do", type(self).__name__)

    def export_model(self, *args: Any, **kwargs: Any) -> None:
        """Nothing: the best result is under ``log_dir`` (and from :meth:`get_best_result`)."""
        del args, kwargs
        _logger.debug("%s: the best result is under log_dir", type(self).__name__)


class LinearPruner(_IterativePruner):
    """Sparsity rises evenly: iterations ``0..N`` at ``i/N * s``.

    ``LinearPruner(model, config_list, pruning_algorithm, total_iteration, log_dir='.',
    keep_intermediate_result=False, evaluator=None, speedup=False, pruning_params={})`` or the
    legacy form with ``finetuner``, ``speedup``, ``dummy_input``, ``evaluator``, ``pruning_params``.
    """

    generator = LinearTaskGenerator


class AGPPruner(_IterativePruner):
    """Automated gradual pruning (Zhu & Gupta): iterations ``0..N`` at ``(1 - (1 - i/N)^3) * s``.

    Arguments as :class:`LinearPruner`.
    """

    generator = AGPTaskGenerator


class LotteryTicketPruner(_IterativePruner):
    """Lottery ticket: rounds ``1..N`` at ``1 - (1 - s)^(i/N)``; weights rewound after each round.

    Arguments as :class:`LinearPruner` plus ``reset_weight=True`` before ``pruning_params``.
    """

    generator = LotteryTicketTaskGenerator
    reset_weight_default = True


_SA_OPTIONS = {"start_temperature": 100, "stop_temperature": 20, "cool_down_rate": 0.9,
               "perturbation_magnitude": 0.35, "pruning_algorithm": "level", "pruning_params": {},
               "log_dir": ".", "keep_intermediate_result": False}


class SimulatedAnnealingPruner(PruningScheduler):
    """Simulated annealing over per-layer sparsities (each task prunes the origin model).

    ``SimulatedAnnealingPruner(model, config_list, evaluator, start_temperature=100,
    stop_temperature=20, cool_down_rate=0.9, perturbation_magnitude=0.35, pruning_algorithm='level',
    pruning_params={}, log_dir='.', keep_intermediate_result=False, speedup=False)``, or the legacy
    form ending ``..., finetuner=None, speedup=False, dummy_input=None``. ``seed=`` (keyword,
    purecompress) makes the search reproducible.
    """

    def __init__(self, model: nn.Module, config_list: list[dict], *args: Any, seed: int | None = None,
                 **kwargs: Any) -> None:
        new = {"evaluator": ..., **_SA_OPTIONS, "speedup": False}
        old = {"evaluator": ..., **_SA_OPTIONS, "finetuner": None, "speedup": False, "dummy_input": None}
        self.using_evaluator, o = parse_evaluator_args(type(self).__name__, new, old, args, kwargs)
        generator = SimulatedAnnealingTaskGenerator(
            origin_model=model, origin_config_list=config_list, start_temperature=o["start_temperature"],
            stop_temperature=o["stop_temperature"], cool_down_rate=o["cool_down_rate"],
            perturbation_magnitude=o["perturbation_magnitude"], log_dir=o["log_dir"],
            keep_intermediate_result=o["keep_intermediate_result"], seed=seed)
        self._setup(inner_pruner(o["pruning_algorithm"], o["pruning_params"], model), generator, o, model)


class AutoCompressTaskGenerator(LotteryTicketTaskGenerator):
    """Lottery-ticket schedule whose per-iteration sparsity is redistributed by simulated annealing."""

    def __init__(self, total_iteration: int, origin_model: nn.Module, origin_config_list: list[dict],
                 origin_masks: NniMasks | None = None, sa_params: dict | None = None, log_dir: str = ".",
                 keep_intermediate_result: bool = False) -> None:
        self._sa_params = dict(sa_params or {})
        self._sa_pruner: SimulatedAnnealingPruner | None = None
        super().__init__(total_iteration=total_iteration, origin_model=origin_model,
                         origin_config_list=origin_config_list, origin_masks=origin_masks, log_dir=log_dir,
                         keep_intermediate_result=keep_intermediate_result)

    def allocate_sparsity(self, new_config_list: list[dict], model: nn.Module, masks: NniMasks) -> list[dict]:
        """Run a simulated-annealing search on the current model; its best config list."""
        if self._sa_pruner is None:
            self._sa_pruner = SimulatedAnnealingPruner(model, new_config_list, log_dir=Path(self._log_dir_root, "SA"),
                                                       **self._sa_params)
        else:
            self._sa_pruner.reset(model, new_config_list, masks)
        self._sa_pruner.progress = False
        self._sa_pruner.compress()
        best = self._sa_pruner.get_best_result()
        if best is None:
            raise RuntimeError("the simulated annealing search produced no result")
        return best[4]


class AutoCompressPruner(PruningScheduler):
    """AutoCompress: lottery-ticket rounds, each allocating by simulated annealing and pruning by ADMM.

    ``AutoCompressPruner(model, config_list, total_iteration, admm_params, sa_params, log_dir='.',
    keep_intermediate_result=False, evaluator=None, speedup=False)`` or the legacy form ending
    ``finetuner=None, speedup=False, dummy_input=None, evaluator=None``.
    """

    def __init__(self, model: nn.Module, config_list: list[dict], total_iteration: int, admm_params: dict,
                 sa_params: dict, log_dir: str = ".", keep_intermediate_result: bool = False, *args: Any,
                 **kwargs: Any) -> None:
        self.using_evaluator, o = parse_evaluator_args(
            type(self).__name__, {"evaluator": None, "speedup": False},
            {"finetuner": None, "speedup": False, "dummy_input": None, "evaluator": None}, args, kwargs)
        admm_params = dict(admm_params)
        if "granularity" not in admm_params:  # NNI: fine-grained unless SA prunes channels
            algo, algo_params = sa_params.get("pruning_algorithm", "level"), sa_params.get("pruning_params") or {}
            fine = algo == "level" or (algo == "admm" and algo_params.get("granularity") != "coarse-grained")
            admm_params["granularity"] = "fine-grained" if fine else "coarse-grained"
        pruner = inner_pruner("admm", admm_params, model)
        generator = AutoCompressTaskGenerator(total_iteration=total_iteration, origin_model=model,
                                              origin_config_list=config_list, sa_params=sa_params, log_dir=log_dir,
                                              keep_intermediate_result=keep_intermediate_result)
        self.total_tasks = total_iteration
        self._setup(pruner, generator, o, model)


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
        canonical = config_list_canonical(self._origin_skeleton, self._config_list())
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
